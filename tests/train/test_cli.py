"""``python -m amt_jax.train``: fast --help, every shipped gin file parses, one-line errors."""

import os
import subprocess
import sys

import gin
import pytest

from amt_jax import heap
from amt_jax.train import main as main_lib

GIN_DIR = main_lib.DEFAULT_SEARCH_PATHS[0]
FAMILY_FILES = [
    ["mt3.gin"],
    ["mt3.gin", "tiny/mt3.gin"],
    ["nmp.gin"],
    ["nmp.gin", "tiny/nmp.gin"],
    ["onsets_frames.gin"],
    ["onsets_frames.gin", "tiny/onsets_frames.gin"],
]


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.fixture(autouse=True)
def heap_calls(monkeypatch):
    """Record retain_freed_heap() calls instead of changing the test process's malloc."""
    calls = []
    monkeypatch.setattr(heap, "retain_freed_heap", lambda: calls.append(True) or True)
    return calls


def test_training_keeps_its_freed_heap_unless_told_not_to(heap_calls):
    argv = ["--gin_file=mt3.gin", "--print_config"]
    assert main_lib.main(argv) == 0 and heap_calls == [True]
    gin.clear_config()
    assert main_lib.main(argv + ["--no-retain_freed_heap"]) == 0 and heap_calls == [True]


def test_help_is_fast_and_lists_the_flags():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-m", "amt_jax.train", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0
    for flag in ("--gin_file", "--gin.KEY", "--workdir", "--gin_search_path"):
        assert flag in result.stdout


@pytest.mark.parametrize("files", FAMILY_FILES, ids=["+".join(f) for f in FAMILY_FILES])
def test_shipped_configs_parse(files, capsys):
    assert main_lib.main([f"--gin_file={f}" for f in files] + ["--print_config"]) == 0
    printed = capsys.readouterr().out
    assert "train.num_steps" in printed and "train.optimizer" in printed


def test_every_gin_file_has_a_header():
    for root, _, names in os.walk(GIN_DIR):
        for name in names:
            with open(os.path.join(root, name)) as f:
                assert f.readline().startswith("#"), name


def one_line_error(capsys, argv, code):
    assert main_lib.main(argv) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_unknown_binding_is_a_one_line_error(capsys, tmp_path):
    err = one_line_error(
        capsys,
        ["--gin_file=mt3.gin", "--gin.train.not_a_param=1", f"--workdir={tmp_path}"],
        2,
    )
    assert "not_a_param" in err
    err = one_line_error(capsys, ["--gin_file=mt3.gin", "--gin.nothing_here.x=1"], 2)
    assert "nothing_here" in err


def test_missing_files_and_values(capsys):
    assert "No --gin_file" in one_line_error(capsys, ["--print_config"], 2)
    assert "not found" in one_line_error(capsys, ["--gin_file=nope.gin"], 2)
    assert "needs a value" in one_line_error(capsys, ["--gin_file=mt3.gin", "--gin.NUM_STEPS"], 2)


@pytest.mark.parametrize(
    "override, message",
    [
        ("--gin.MESH_MODEL=3", "does not divide the 8 devices"),
        ("--gin.BATCH_SIZE=6", "not divisible by the mesh data axis"),
    ],
)
def test_bad_mesh_and_batch_are_one_line_errors(capsys, tmp_path, override, message):
    argv = ["--gin_file=mt3.gin", "--gin_file=tiny/mt3.gin", override, f"--workdir={tmp_path}"]
    assert message in one_line_error(capsys, argv, 1)
    assert os.path.exists(tmp_path / "config.gin")


def test_library_info_chatter_is_hidden_but_the_trainers_progress_is_not():
    import logging

    main_lib.configure_logging()
    assert logging.getLogger().isEnabledFor(logging.INFO)
    assert not logging.getLogger("absl").isEnabledFor(logging.INFO)  # tfds / orbax
    assert logging.getLogger("absl").isEnabledFor(logging.WARNING)


def test_profile_steps_flag_becomes_a_binding_or_a_one_line_error():
    args, bindings = main_lib.parse_flags(["--workdir=/tmp/x", "--profile_steps=10:12"])
    assert bindings == ["train.profile_steps = (10, 12)"]
    with pytest.raises(main_lib.ConfigError, match="expected FIRST:LAST"):
        main_lib.parse_flags(["--profile_steps=12:10"])

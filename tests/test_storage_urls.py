"""Workdirs, checkpoints and output directories given as URLs.

Remote storage is exercised for real through TensorFlow's in-process ``ram://`` filesystem,
which takes the same tf.io.gfile code path as ``gs://``. gs:// itself is only touched where
nothing reaches the network: its error paths, and what orbax is handed.
"""

import os
import sys
import types

import gin
import jax
import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf
from etils import epath
from flax import nnx

from amt_jax import storage
from amt_jax.infer import cli
from amt_jax.models import checkpoints, nmp
from amt_jax.train import loop, summaries
from amt_jax.train import main as train_main
from tests.infer.known_notes import harmonic_tones
from tests.infer.test_transcribe import _save_nmp_workdir


def _ram(tmp_path, name: str) -> str:
    """A ram:// URL no other test uses (the filesystem lives as long as the process)."""
    return f"ram://{tmp_path.name}/{name}"


def test_file_urls_are_local_paths_and_unusable_schemes_are_one_line_errors(tmp_path):
    assert storage.resolve(f"file://{tmp_path}/run") == f"{tmp_path}/run"
    assert storage.resolve(str(tmp_path)) == str(tmp_path)
    assert storage.resolve("gs://bucket/run/") == "gs://bucket/run"  # usable for files
    for url in ("s3://bucket/run", "memory://run", "az://container/run", "nosuch://x"):
        with pytest.raises(storage.StorageError, match="tf.io.gfile can open") as error:
            storage.resolve(url, "workdir")
        message = str(error.value)
        assert "\n" not in message and url in message and "use a local path" in message
    with pytest.raises(storage.StorageError, match="must name a local path"):
        storage.resolve("file://otherhost/run")
    with pytest.raises(storage.StorageError, match="names no bucket"):
        storage.resolve("gs://")
    # the checkpoint helpers word them as CheckpointErrors
    with pytest.raises(checkpoints.CheckpointError, match="s3:// is not a filesystem"):
        checkpoints.read_record("s3://bucket/run")
    # code that only works on local files (amt_jax.evaluate) still refuses every URL
    with pytest.raises(checkpoints.CheckpointError, match="gs:// storage is not supported"):
        checkpoints.local_directory("gs://bucket/run")


def test_an_unusable_workdir_scheme_is_a_clear_error_before_anything_is_written(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "google.cloud.storage", None)  # as if not installed
    for workdir, message in (
        ("gs://bucket/run", "pip install 'amt_jax[gcs]'"),
        ("s3://bucket/run", "s3:// is not a filesystem TensorFlow's tf.io.gfile can open"),
        ("memory://run", "memory:// is not a filesystem"),
        (_ram(tmp_path, "run"), "orbax checkpoints go through etils.epath"),
    ):
        argv = ["--gin_file=nmp.gin", f"--workdir={workdir}", "--no-retain_freed_heap"]
        try:
            assert train_main.main(argv) == 2
        finally:
            gin.clear_config()
        err = capsys.readouterr().err
        assert err.startswith(f"error: workdir '{workdir}'") and message in err, err
        assert err.count("\n") == 1
    assert not tf.io.gfile.exists(_ram(tmp_path, "run"))
    # the library entry point checks the same before it touches the workdir
    with pytest.raises(checkpoints.CheckpointError, match="cannot open ram://"):
        loop.train(
            workdir=_ram(tmp_path, "run"),
            model_factory=None,
            optimizer=None,
            train_data=None,
            num_steps=1,
        )
    with pytest.raises(checkpoints.CheckpointError, match="cannot open ram://"):
        checkpoints.Checkpointer(_ram(tmp_path, "run"))
    assert not tf.io.gfile.exists(_ram(tmp_path, "run"))

    assert cli.main(["x.wav", "--checkpoint", "s3://bucket/run"]) == 1
    assert "s3:// is not a filesystem" in capsys.readouterr().err
    assert cli.main(["x.wav", "-o", "s3://bucket/out"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: output directory 's3://bucket/out': s3:// is not") and (
        err.count("\n") == 1
    )
    assert os.listdir(tmp_path) == []  # nothing written under ./gs: or ./s3:


def test_gs_workdirs_reach_orbax_as_epath_urls_and_need_credentials(monkeypatch):
    """Without touching the network: the storage client is faked, orbax's manager recorded."""
    client = types.ModuleType("google.cloud.storage")
    auth, auth_errors = types.ModuleType("google.auth"), types.ModuleType("google.auth.exceptions")
    auth_errors.DefaultCredentialsError = type("DefaultCredentialsError", (Exception,), {})
    auth.default = lambda: ("credentials", "project")
    for name, module in [
        ("google.cloud.storage", client),
        ("google.auth", auth),
        ("google.auth.exceptions", auth_errors),
    ]:
        monkeypatch.setitem(sys.modules, name, module)
    given = []

    class RecordingManager:
        def __init__(self, directory, **kwargs):
            given.append(directory)

    monkeypatch.setattr(checkpoints.ocp, "CheckpointManager", RecordingManager)
    saver = checkpoints.Checkpointer("gs://bucket/run/")
    assert saver.directory == "gs://bucket/run/checkpoints"
    assert isinstance(given[0], epath.Path) and os.fspath(given[0]) == saver.directory

    def no_credentials():
        raise auth_errors.DefaultCredentialsError("none")

    monkeypatch.setattr(auth, "default", no_credentials)
    with pytest.raises(checkpoints.CheckpointError, match="no Google Cloud credentials") as e:
        checkpoints.Checkpointer("gs://bucket/run")
    assert "gcloud auth application-default login" in str(e.value)


def test_records_configs_and_tensorboard_on_a_remote_filesystem(tmp_path):
    root = _ram(tmp_path, "workdir")
    storage.makedirs(storage.join(root, "sub"))
    storage.write_text(storage.join(root, "config.gin"), "NUM_STEPS = 3\n")
    assert tf.io.gfile.GFile(f"{root}/config.gin").read() == "NUM_STEPS = 3\n"
    assert sorted(storage.listdir(root)) == ["config.gin", "sub"]
    assert storage.isdir(root) and storage.isfile(f"{root}/config.gin")
    assert not storage.exists(f"{root}/nothing") and not storage.isdir(f"{root}/nothing")
    with pytest.raises(storage.StorageError, match="nothing"):
        storage.read_text(f"{root}/nothing")

    checkpoints.write_record(root + "/", nmp.NMP_TINY)
    assert tf.io.gfile.exists(f"{root}/{checkpoints.RECORD_FILE}")
    assert checkpoints.read_record(root) == ("nmp", nmp.NMP_TINY)
    assert checkpoints.model_directory(f"{root}/") == root
    with pytest.raises(checkpoints.CheckpointError, match="another config"):
        checkpoints.write_record(root, nmp.NMP_CONFIG)
    with pytest.raises(checkpoints.CheckpointError, match="is not a directory"):
        checkpoints.model_directory(f"{root}/nothing")

    # the trainer's writer, read back with TensorFlow's own event reader
    writer = summaries.SummaryWriter(f"{root}/tensorboard")
    writer.scalars(5, {"train/loss": 0.25})
    writer.images(5, {"eval/piano_roll": np.zeros((4, 6, 3))})
    writer.close()
    (events,) = tf.io.gfile.glob(f"{root}/tensorboard/events.out.tfevents.*")
    values = {
        value.tag: value
        for event in tf.compat.v1.train.summary_iterator(events)
        for value in event.summary.value
    }
    assert values["train/loss"].simple_value == 0.25
    assert values["eval/piano_roll"].image.width == 6


def test_file_url_record(tmp_path):
    url = f"file://{tmp_path}/export"
    checkpoints.write_record(url, nmp.NMP_TINY)
    assert os.path.isfile(tmp_path / "export" / checkpoints.RECORD_FILE)
    assert checkpoints.read_record(url) == ("nmp", nmp.NMP_TINY)


def test_export_to_and_transcribe_from_remote_urls(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    trained = nmp.NMP(nmp.NMP_TINY, rngs=nnx.Rngs(3))
    _save_nmp_workdir(tmp_path / "run", trained, nmp.NMP_TINY)
    export = _ram(tmp_path, "export")
    checkpoints.export_params(f"file://{tmp_path}/run", export)
    assert sorted(tf.io.gfile.listdir(export)) == ["model.json", "params.npz"]
    restored, step = checkpoints.restore_model(export)
    assert step == 7 and restored.config == nmp.NMP_TINY
    for (path, got), (_, want) in zip(
        jax.tree.leaves_with_path(nnx.to_pure_dict(nnx.state(restored))),
        jax.tree.leaves_with_path(nnx.to_pure_dict(nnx.state(trained))),
    ):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), str(path))
    assert checkpoints.checkpoint_steps(export) == []

    sf.write(tmp_path / "tones.wav", harmonic_tones(sample_rate=22050), 22050, subtype="PCM_16")
    out = _ram(tmp_path, "out/")
    argv = ["tones.wav", "--checkpoint", export, "-o", out, "--csv"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    written = sorted(tf.io.gfile.listdir(out))
    assert written == ["tones.csv", "tones.mid"]
    header = tf.io.gfile.GFile(out + "tones.csv").read().splitlines()[0]
    assert header == "onset_s,offset_s,pitch,velocity,program,is_drum"
    assert tf.io.gfile.GFile(out + "tones.mid", "rb").read(4) == b"MThd"
    assert cli.main(argv) == 0  # a second run finds the MIDI there and skips it
    assert "exists, skipped" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["run", "tones.wav"]  # nothing under ./ram:

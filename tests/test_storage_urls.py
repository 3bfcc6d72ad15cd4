"""Workdirs, checkpoints and output directories given as URLs: file:// works, other
schemes are a one-line error instead of a silent write to ./gs:/bucket/... ."""

import os

import gin
import pytest

from amt_jax.infer import cli
from amt_jax.models import checkpoints, nmp
from amt_jax.train import main as train_main


def test_file_urls_are_local_paths_and_other_schemes_are_errors(tmp_path):
    assert checkpoints.local_directory(f"file://{tmp_path}/run") == f"{tmp_path}/run"
    assert checkpoints.local_directory(str(tmp_path)) == str(tmp_path)
    for url in ("gs://bucket/run", "s3://bucket/run", "memory://run"):
        with pytest.raises(checkpoints.CheckpointError, match="storage is not supported") as e:
            checkpoints.local_directory(url)
        assert "\n" not in str(e.value) and url in str(e.value)
    with pytest.raises(checkpoints.CheckpointError, match="must name a local path"):
        checkpoints.local_directory("file://otherhost/run")


def test_model_record_through_a_file_url(tmp_path):
    url = f"file://{tmp_path}/export"
    checkpoints.write_record(url, nmp.NMP_TINY)
    assert os.path.isfile(tmp_path / "export" / checkpoints.RECORD_FILE)
    assert checkpoints.read_record(url) == ("nmp", nmp.NMP_TINY)


def test_entry_points_refuse_remote_urls_without_writing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["--gin_file=nmp.gin", "--workdir=gs://bucket/run", "--no-retain_freed_heap"]
    try:
        assert train_main.main(argv) == 2
    finally:
        gin.clear_config()
    assert "gs:// storage is not supported" in capsys.readouterr().err
    assert cli.main(["x.wav", "--checkpoint", "gs://bucket/run"]) == 1
    assert "gs:// storage is not supported" in capsys.readouterr().err
    assert cli.main(["x.wav", "-o", "s3://bucket/out"]) == 1
    assert "s3:// storage is not supported" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []  # nothing written under ./gs: or ./s3:

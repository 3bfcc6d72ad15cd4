"""``python -m amt_jax.evaluate``: the standalone eval job scores a run's checkpoints with
the same numbers as the evaluator inside training."""

import dataclasses
import json
import os

import pytest
from flax import nnx

from amt_jax import evaluate
from amt_jax.data import preprocessors
from amt_jax.models import checkpoints, nmp
from amt_jax.train import evaluation, loop, optimizers, trainer
from tests.test_e2e import _piece, _Windows


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    config = dataclasses.replace(nmp.NMP_TINY, batch_norm_momentum=0.9)
    audio_s, sequence = _piece(nmp.NMP.sample_rate)
    model = nmp.NMP.from_config(config, rngs=nnx.Rngs(0))
    tracks = [evaluation.EvalTrack("piece", audio_s, sequence)]
    result = loop.train(
        workdir=str(workdir),
        model_factory=trainer.model_factory(nmp.NMP, config),
        optimizer=optimizers.adam(1e-2),
        train_data=lambda **_: _Windows(audio_s, sequence, model, preprocessors.NMP, 3, 0),
        num_steps=2,
        batch_size=3,
        eval_tracks=lambda: tracks,
        eval_batch_size=4,
        mesh_data=1,
        num_devices=1,
        checkpoint_every=1,
        async_checkpoints=False,
        frame_convention="basic_pitch",
        measure_mfu=False,
        progress_bar=False,
        tensorboard=False,
    )
    return str(workdir), tracks, result


def test_a_step_scores_as_the_in_training_evaluator(run):
    workdir, tracks, result = run
    assert checkpoints.checkpoint_steps(workdir) == [1, 2]
    metrics = evaluate.evaluate_step(
        workdir, 2, tracks, frame_convention="basic_pitch", scoring_workers=0
    )
    assert metrics["step"] == 2 and metrics["tracks"] == 1
    for name in ("Onset F1", "Frame F1", "Onset + offset F1"):
        assert metrics[name] == pytest.approx(result.eval_metrics[name]), name


def test_cli_reads_the_runs_config_and_writes_every_step(run, monkeypatch, capsys):
    workdir, tracks, result = run
    with open(os.path.join(workdir, "config.gin"), "w") as f:
        f.write("train.frame_convention = 'basic_pitch'\n")
        f.write("task_eval_tracks.task_name = 'the_piece'\n")
    seen = {}

    def tracks_from(options):
        seen.update(options)
        return lambda: tracks

    monkeypatch.setattr(evaluate, "_tracks_from_options", tracks_from)
    assert evaluate.main(["--workdir", workdir, "--all_steps", "--scoring_workers", "1"]) == 0
    assert seen["task_name"] == "the_piece" and seen["frame_convention"] == "basic_pitch"
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    with open(os.path.join(workdir, "eval", "step_2.json")) as f:
        written = json.load(f)
    assert written["Onset F1"] == pytest.approx(result.eval_metrics["Onset F1"])


def test_cli_errors_are_one_line(run, tmp_path, capsys):
    workdir, _, _ = run
    assert evaluate.main(["--workdir", str(tmp_path)]) == 1
    assert "has no config.gin" in capsys.readouterr().err
    assert evaluate.main(["--workdir", "s3://bucket/run"]) == 1  # TF's gfile has no s3
    err = capsys.readouterr().err
    assert "workdir 's3://bucket/run': s3:// is not a filesystem" in err and err.count("\n") == 1
    with open(tmp_path / "config.gin", "w") as f:
        f.write("task_eval_tracks.task_name = 'no_such_task'\n")
    assert evaluate.main(["--workdir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unknown task 'no_such_task'") and err.count("\n") == 1

"""The loop: exact resume (also after SIGKILL), NaN stop, full-track evaluation, logs."""

import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from amt_jax.metrics import transcription
from amt_jax.models import checkpoints
from amt_jax.partitioning import mesh as mesh_lib
from amt_jax.train import evaluation, loop, optimizers
from amt_jax.train.trainer import Trainer
from tests.train.tiny_model import (
    SyntheticBatches,
    TinyFrameModel,
    roll_to_sequence,
    targets_for,
    tiny_factory,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def batches_factory(batch_size=8, cls=SyntheticBatches, **kwargs):
    def make(*, shard_index, num_shards):
        return cls(batch_size, shard_index=shard_index, num_shards=num_shards, **kwargs)

    return make


def run(workdir, num_steps, **overrides):
    kwargs = dict(
        workdir=str(workdir),
        model_factory=tiny_factory(),
        optimizer=optimizers.adam(1e-2),
        train_data=batches_factory(),
        num_steps=num_steps,
        batch_size=8,
        mesh_data=-1,
        mesh_model=2,
        checkpoint_every=2,
        keep_checkpoints=2,
        log_every=2,
        measure_mfu=False,
        progress_bar=False,
        tensorboard=False,
    )
    kwargs.update(overrides)
    return loop.train(**kwargs)


def restored_params(workdir, step=None):
    trainer = Trainer(tiny_factory(), optimizers.adam(1e-2), mesh_lib.make_mesh(4, 2))
    ckpt = checkpoints.Checkpointer(str(workdir), async_save=False)
    try:
        return ckpt.restore(trainer.abstract_state(), step)
    finally:
        ckpt.close()


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("straight")
    return workdir, run(workdir, 6)


def test_resume_in_a_new_trainer_reproduces_the_uninterrupted_run(straight_run, tmp_path):
    straight_dir, straight = straight_run
    first = run(tmp_path, 3)
    assert first.losses == straight.losses[:3]
    resumed = run(tmp_path, 6)  # a new trainer object restores the final step 3
    assert resumed.step == 6
    np.testing.assert_array_equal(resumed.losses, straight.losses[3:])
    a, b = restored_params(tmp_path), restored_params(straight_dir)
    assert a.step == b.step == 6 and a.data_state == b.data_state == {"position": 6}
    for x, y in zip(
        np.concatenate([np.ravel(v) for v in _leaves(a.state.params)]),
        np.concatenate([np.ravel(v) for v in _leaves(b.state.params)]),
    ):
        assert x == y
    assert sorted(checkpoints.Checkpointer(str(tmp_path)).all_steps()) == [4, 6]  # keep 2


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    import jax
    jax.config.update("jax_disable_most_optimizations", True)
    from tests.train import test_loop
    from tests.train.tiny_model import SyntheticBatches

    class KillingBatches(SyntheticBatches):
        def __next__(self):
            if self.position == 5:  # step 4 is done (and checkpointed asynchronously)
                os.kill(os.getpid(), signal.SIGKILL)
            return super().__next__()

    test_loop.run({workdir!r}, 6, train_data=test_loop.batches_factory(cls=KillingBatches))
    """
)


def test_resume_after_sigkill_reproduces_the_uninterrupted_run(straight_run, tmp_path):
    _, straight = straight_run
    script = KILL_SCRIPT.format(repo=REPO, workdir=str(tmp_path))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    process = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True)
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()[-2000:]
    resumed = run(tmp_path, 6)
    restarted_from = 6 - len(resumed.losses)
    assert restarted_from in (2, 4)  # the async save of step 4 may not have finished
    np.testing.assert_array_equal(resumed.losses, straight.losses[restarted_from:])


class NaNBatches(SyntheticBatches):
    def __next__(self):
        batch = super().__next__()
        if self.position == 5:  # the 5th batch
            batch["audio_bs"][0, 0] = np.nan
        return batch


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(loop.NonFiniteLossError, match=r"at step 5.*Last good checkpoint: step 4"):
        run(tmp_path, 8, train_data=batches_factory(cls=NaNBatches))
    ckpt = checkpoints.Checkpointer(str(tmp_path))
    assert ckpt.latest_step() == 4
    ckpt.close()
    restored = restored_params(tmp_path)
    assert all(np.isfinite(x).all() for x in _leaves(restored.state.params))


def make_tracks(count=2, segments=5):
    rng = np.random.default_rng(0)
    tracks = []
    for index in range(count):
        length = segments * TinyFrameModel.segment_samples - 10  # last segment padded
        audio = rng.normal(size=length).astype(np.float32)
        padded = np.pad(audio, (0, 10)).reshape(segments, -1)
        roll = np.concatenate(list(targets_for(padded)), axis=0) > 0.5
        reference = roll_to_sequence(roll, TinyFrameModel.segment_samples / 8 / 512)
        tracks.append(evaluation.EvalTrack(f"track{index}", audio, reference))
    return tracks


def test_eval_metrics_images_and_tensorboard(tmp_path):
    tracks = make_tracks()
    result = run(
        tmp_path,
        4,
        eval_tracks=lambda: iter(tracks),
        eval_data=batches_factory(seed=99),
        eval_loss_batches=2,
        eval_batch_size=4,
        tensorboard=True,
        measure_mfu=True,
    )
    metrics = result.eval_metrics
    for name in ("Onset F1", "Onset + offset F1", "Frame F1", "loss", "frame_accuracy"):
        assert name in metrics and np.isfinite(metrics[name]), name
    assert 0.0 <= metrics["Frame F1"] <= 1.0
    for name in ("train/loss", "train/steps_per_second", "train/examples_per_second"):
        assert name in result.train_metrics
    assert 0 < result.train_metrics["train/mfu"] < 10
    events = os.listdir(tmp_path / "tensorboard")
    assert any(e.startswith("events.out.tfevents") for e in events)


def test_evaluator_stitches_segments_independently_of_the_batch_size(tmp_path):
    trainer = Trainer(
        tiny_factory(), optimizers.adam(1e-2), mesh_lib.make_mesh(2, 1, devices=jax.devices()[:2])
    )
    state = trainer.init_state()
    track = make_tracks(1, segments=5)[0]
    estimates = []
    for batch_size in (2, 4):
        evaluator = evaluation.Evaluator(trainer, batch_size=batch_size)
        estimate, _ = evaluator.transcribe(state, track.audio_s)
        estimates.append(estimate)
    # one segment at a time, straight through the model
    model = trainer.model_from_state(state)
    segments = np.pad(track.audio_s, (0, 10)).reshape(5, -1)
    probs = np.concatenate(
        [np.asarray(model.predict({"audio_bs": s[None]})["probs_btp"]) for s in segments]
    )
    direct, _ = model.outputs_to_notes(
        {"probs_btp": probs}, num_samples=len(track.audio_s), start_times=np.arange(5)
    )
    assert estimates[0] == estimates[1] == direct
    metrics, pairs = evaluation.Evaluator(trainer, batch_size=2).evaluate(state, [track])
    expected = transcription.track_metrics(track.reference, direct)
    assert metrics == pytest.approx(expected)
    image = evaluation.piano_roll_image(track.reference, direct)
    assert image.shape[0] == 128 and image.shape[2] == 3


def test_consecutive_segments_cover_the_track():
    from amt_jax.models.base import consecutive_segments

    segments = consecutive_segments(250, 100, 50)
    windows = segments.windows(np.ones(250, np.float32), 0, 3)
    assert windows.shape == (3, 100) and windows[2, 50:].sum() == 0 and windows[2, :50].all()
    np.testing.assert_allclose(segments.start_times, [0.0, 2.0, 4.0])


def test_profile_steps_write_a_jax_profiler_trace(tmp_path):
    run(tmp_path, 3, profile_steps=(2, 3), checkpoint_every=3)
    traces = [
        os.path.join(root, name)
        for root, _, names in os.walk(tmp_path / "profile")
        for name in names
        if name.endswith(".xplane.pb")
    ]
    assert traces and os.path.getsize(traces[0]) > 0
    with pytest.raises(ValueError, match="profile_steps must be"):
        run(tmp_path / "bad", 3, profile_steps=(3, 2))


def test_host_share_divides_tracks_by_global_index_below_max_tracks():
    tracks = make_tracks(5, segments=1)

    def sharded(*, shard_index=0, num_shards=1):  # reads only its own tracks
        return iter(tracks[shard_index::num_shards])

    for source in (sharded, lambda: tracks):  # a () -> all callable is filtered per host
        shares = [
            [t.track_id for t in evaluation.host_share(source, shard_index=i, num_shards=2)]
            for i in range(2)
        ]
        assert shares == [["track0", "track2", "track4"], ["track1", "track3"]]
        capped = [
            [
                t.track_id
                for t in evaluation.host_share(source, max_tracks=3, shard_index=i, num_shards=2)
            ]
            for i in range(2)
        ]
        assert capped == [["track0", "track2"], ["track1"]]  # the first 3 of the split
    assert [t.track_id for t in evaluation.host_share(lambda: tracks, max_tracks=2)] == [
        "track0",
        "track1",
    ]

"""MT3's in-training eval on one host of N (run by test_multihost_eval.py, not collected).

Usage: python multihost_eval_worker.py WORKDIR PORT PROCESS_ID NUM_PROCESSES DEVICES

Resumes the tiny MT3 run in WORKDIR at its last step (so no training step runs and every
host evaluates exactly the saved parameters), evaluates the 3 tracks of different lengths
with the tracks divided between the processes, then scores the same checkpoint with the
standalone evaluator, and prints one JSON line. Imported, it gives the test the run's
pieces (config, tracks, training batches).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import numpy as np

SEGMENT_FRAMES, TARGET_LENGTH = 64, 32
SEGMENT_SAMPLES = SEGMENT_FRAMES * 128  # 0.512 s at 16 kHz
#: track lengths in seconds: 1, 5 and 2 windows. On 2 hosts with 2 rows each, host 0
#: (tracks 0 and 2) makes 2 predict calls and host 1 (track 1) 3: host 0 pads one
TRACK_SECONDS = (0.4, 2.3, 0.9)
STEPS, EVAL_BATCH = 40, 4


def config():
    from amt_jax.models import t5

    return t5.MT3Config.tiny(
        dropout_rate=0.0, inputs_length=SEGMENT_FRAMES, targets_length=TARGET_LENGTH
    )


def piece(seed: int, seconds: float):
    """Sine tones, one every 0.2 s at random pitches: (audio at 16 kHz, NoteSequence)."""
    from note_seq.protobuf import music_pb2

    rng = np.random.default_rng(seed)
    audio = np.zeros(int(seconds * 16000), np.float32)
    sequence = music_pb2.NoteSequence(total_time=seconds)
    onset = 0.05
    while onset < seconds - 0.2:
        pitch = int(rng.integers(55, 80))
        sequence.notes.add(
            pitch=pitch, velocity=90, start_time=onset, end_time=onset + 0.15, program=0
        )
        t = np.arange(int(0.15 * 16000)) / 16000
        first = int(onset * 16000)
        audio[first : first + len(t)] += 0.3 * np.sin(
            2 * np.pi * 440 * 2 ** ((pitch - 69) / 12) * t
        )
        onset += 0.2
    return audio, sequence


def eval_tracks(*, shard_index: int = 0, num_shards: int = 1):
    """The split's tracks ``shard_index::num_shards``, built one at a time (as
    ``inputs.task_eval_tracks``)."""
    from amt_jax.train.evaluation import EvalTrack

    for index in range(shard_index, len(TRACK_SECONDS), num_shards):
        audio, sequence = piece(0, TRACK_SECONDS[index])  # the trained piece, cut or extended
        yield EvalTrack(f"track{index}", audio, sequence)


class Batches:
    """The same 8 windows of one 2 s piece every step (resumable)."""

    def __init__(self, **_):
        from amt_jax.data import preprocessors

        spec = dataclasses.replace(
            preprocessors.MT3, window_samples=SEGMENT_SAMPLES, target_length=TARGET_LENGTH
        )
        audio, sequence = piece(0, 2.0)
        starts = [0, SEGMENT_SAMPLES // 2, SEGMENT_SAMPLES, 3 * SEGMENT_SAMPLES // 2] * 2
        rows = [preprocessors.make_example(audio, sequence, s, spec) for s in starts]
        self.batch = {key: np.stack([row[key] for row in rows]) for key in rows[0]}
        self.step = 0

    def __next__(self):
        self.step += 1
        return self.batch

    def state(self):
        return {"step": self.step}

    def restore(self, state):
        self.step = int(state["step"])


def run(workdir: str, **overrides):
    from amt_jax.models import t5
    from amt_jax.train import loop, optimizers, trainer

    kwargs = dict(
        workdir=workdir,
        model_factory=trainer.model_factory(t5.MT3Model, config()),
        optimizer=optimizers.adam(1e-2),
        train_data=Batches,
        num_steps=STEPS,
        batch_size=8,
        mesh_data=-1,
        mesh_model=1,
        checkpoint_every=STEPS,
        async_checkpoints=False,
        log_every=STEPS,
        eval_batch_size=EVAL_BATCH,
        program_granularities=("flat",),
        measure_mfu=False,
        progress_bar=False,
        tensorboard=False,
    )
    kwargs.update(overrides)
    return loop.train(**kwargs)


def main():
    workdir, port, process_id, num_processes, devices = sys.argv[1:6]
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["JAX_NUM_CPU_DEVICES"] = devices
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    import jax

    jax.config.update("jax_disable_most_optimizations", True)
    if int(num_processes) > 1:
        jax.distributed.initialize(
            coordinator_address=f"localhost:{port}",
            num_processes=int(num_processes),
            process_id=int(process_id),
            initialization_timeout=120,
        )
    from amt_jax import evaluate
    from amt_jax.train import evaluation

    calls, track_ids = [], []
    evaluate_fn = evaluation.Evaluator.evaluate

    def recording_evaluate(self, state, tracks, **kwargs):
        def seen(tracks):
            for track in tracks:
                track_ids.append(track.track_id)
                yield track

        result = evaluate_fn(self, state, seen(tracks), **kwargs)
        calls.append(self.last_predict_calls)
        return result

    evaluation.Evaluator.evaluate = recording_evaluate
    result = run(workdir, eval_tracks=eval_tracks)
    assert result.losses == [], "the resumed run trained"
    # the standalone evaluator on the same checkpoint; tracks from a () -> all callable
    everything = lambda: eval_tracks()  # noqa: E731
    standalone_ids = [t.track_id for t in evaluation.host_share(everything)]
    standalone = evaluate.evaluate_step(
        workdir,
        STEPS,
        evaluation.host_share(everything),
        program_granularities=("flat",),
        scoring_workers=1,
    )
    print(
        "RESULT "
        + json.dumps(
            {
                "process_index": jax.process_index(),
                "process_count": jax.process_count(),
                "eval": result.eval_metrics,
                "tracks": track_ids,
                "predict_calls": calls,
                "standalone": standalone,
                "standalone_tracks": standalone_ids,
            }
        ),
        flush=True,
    )
    if int(num_processes) > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    main()

"""Full-track evaluation: the transcriber's path, on the trainer's mesh, scored with mir_eval.

Each eval track goes through :func:`amt_jax.models.base.transcribe_segments`, the same
segment -> predict -> ``outputs_to_notes`` path as ``amt-jax --checkpoint``, with the
trainer's sharded predict in fixed-size batches; the notes are scored against the full
reference with :mod:`amt_jax.metrics.transcription` and averaged over tracks.

Evaluation scales with the number of hosts:

- **tracks stream and are split between hosts.** :func:`host_share` gives each host its
  share of the split (global track indices ``process_index::process_count``), one track
  in memory at a time;
- **every host transcribes only its own tracks**, through the trainer's predict, which is
  jitted over the mesh spanning all processes. The hosts stay in lockstep
  (:class:`LockstepPredict`): before every call they agree on whether anyone still has
  windows to transcribe, and a host that has run out feeds padding batches until all are
  done, so every process makes the same calls with the same shapes;
- **mir_eval scoring runs in spawned worker processes**
  (:class:`amt_jax.metrics.scoring.TrackScorer`) while the next track is transcribed;
- **the per-track metrics are gathered from all hosts** (:func:`allgather_objects`) and
  averaged in global track order, so the aggregate is exactly the one a single process
  computes over all tracks, on every host.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from note_seq.protobuf import music_pb2

from amt_jax.metrics import scoring, transcription
from amt_jax.models import base
from amt_jax.train.train_state import TrainState
from amt_jax.train.trainer import Trainer


@dataclasses.dataclass
class EvalTrack:
    """One full evaluation track: mono audio at the model's sample rate + reference notes."""

    track_id: str
    audio_s: np.ndarray
    reference: music_pb2.NoteSequence


def host_share(
    eval_tracks: Callable[..., Iterable[EvalTrack]],
    *,
    max_tracks: int | None = None,
    shard_index: int | None = None,
    num_shards: int | None = None,
) -> Iterator[EvalTrack]:
    """This host's share of the eval tracks: global indices ``shard_index::num_shards``
    (default: this process's index and the process count), below ``max_tracks``.

    ``eval_tracks`` is ``(shard_index=, num_shards=) -> iterator`` (as
    :func:`amt_jax.train.inputs.task_eval_tracks`: it reads only this host's tracks) or
    ``() -> iterable`` of all tracks, of which every host then keeps every
    ``num_shards``-th (each host still reads all of them). Only a callable whose
    signature names ``shard_index`` and ``num_shards`` is given them.
    """
    if shard_index is None:
        shard_index = jax.process_index()
    if num_shards is None:
        num_shards = jax.process_count()
    if _takes_shards(eval_tracks):
        tracks = iter(eval_tracks(shard_index=shard_index, num_shards=num_shards))
    else:
        if num_shards > 1:
            logging.info(
                "eval_tracks takes no (shard_index, num_shards): host %d reads every track "
                "and keeps every %d-th",
                shard_index,
                num_shards,
            )
        everything = iter(eval_tracks())
        tracks = (t for i, t in enumerate(everything) if i % num_shards == shard_index)
    for local, track in enumerate(tracks):
        if max_tracks is not None and shard_index + local * num_shards >= max_tracks:
            return
        yield track


def _takes_shards(fn: Callable) -> bool:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    # named, not just **kwargs: a callable that ignored them would have every host
    # evaluate every track (and count each one once per host)
    return {"shard_index", "num_shards"} <= {p.name for p in parameters}


def allgather_objects(value: Any) -> list[Any]:
    """Every process's JSON-serialisable ``value``, in process order (on every process).

    Each value travels as UTF-8 JSON bytes, zero-padded to the longest: two small
    ``process_allgather`` collectives (lengths, then bytes). Floats survive exactly (JSON
    writes ``repr``; NaN and inf included).
    """
    if jax.process_count() == 1:
        return [value]
    data = np.frombuffer(json.dumps(value).encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.array([len(data)], np.int32))
    lengths = np.asarray(lengths).reshape(-1)
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[: len(data)] = data
    gathered = np.asarray(multihost_utils.process_allgather(padded))
    return [json.loads(row[:n].tobytes()) for row, n in zip(gathered, lengths)]


class LockstepPredict:
    """The trainer's sharded predict for hosts that transcribe *different* tracks.

    ``trainer.predict`` is one program jitted over the mesh of all processes, so every
    process must call it equally often with equal shapes or its collectives deadlock; yet
    hosts transcribing their own tracks need different numbers of calls (tracks differ in
    length and count). Before every call the hosts allgather one int, the window length
    of the batch each would predict (0: none left); while anyone has a batch, everyone
    calls predict, a host without work with zero padding, and each keeps its own rows of
    the output. :meth:`drain` runs those padding calls until every host is done. A host
    thus consumes its windows back to back across its tracks, and the calls per eval are
    the largest host's window count / rows, not a per-track maximum.

    Why not a process-local mesh with replicated parameters instead: that needs a second
    copy of the parameters per host (impossible when they are sharded across hosts, e.g.
    model parallelism over a pod) and a second compiled predict. The agreement costs one
    4-byte allgather per call, small beside a predict (an MT3 call decodes 1024 tokens).

    With a single process there is no agreement and no padding: this is plain predict.
    """

    def __init__(self, trainer: Trainer, state: TrainState, rows: int):
        self.trainer, self.state, self.rows = trainer, state, rows
        self.processes = jax.process_count()
        self.calls = 0  # predict calls, padding included
        self._rows_cache: dict[tuple[int, ...], np.ndarray] = {}

    def _agree(self, samples: int) -> int:
        """The window length every host with work uses this round (0: nobody has work)."""
        if self.processes == 1:
            return samples
        lengths = np.asarray(multihost_utils.process_allgather(np.array([samples], np.int32)))
        working = sorted({int(n) for n in lengths.reshape(-1) if n > 0})
        if len(working) > 1:  # every host sees the same lengths, so all raise together
            raise ValueError(f"hosts predict windows of different lengths: {working} samples")
        return working[0] if working else 0

    def _local_rows(self, array: jax.Array) -> np.ndarray:
        """Rows of the global batch that this host's data filled."""
        if array.shape not in self._rows_cache:
            indices = array.sharding.addressable_devices_indices_map(array.shape).values()
            rows = set()
            for index in indices:
                rows.update(range(*index[0].indices(array.shape[0])))
            self._rows_cache[array.shape] = np.array(sorted(rows), np.int64)
        return self._rows_cache[array.shape]

    def _run(self, batch_bs: np.ndarray) -> dict[str, np.ndarray]:
        arrays = self.trainer.global_batch({"audio_bs": batch_bs})
        outputs = self.trainer.predict(self.state, arrays)  # gathered to every host
        self.calls += 1
        if self.processes == 1:
            return {name: np.asarray(value) for name, value in outputs.items()}
        rows = self._local_rows(arrays["audio_bs"])
        return {name: np.asarray(value)[rows] for name, value in outputs.items()}

    def __call__(self, batch_bs: np.ndarray) -> dict[str, np.ndarray]:
        """This host's batch [rows, samples] -> its outputs (a :data:`base.PredictFn`)."""
        if batch_bs.shape[0] != self.rows:
            raise ValueError(f"expected {self.rows} rows per host, got {batch_bs.shape[0]}")
        self._agree(batch_bs.shape[1])
        return self._run(batch_bs)

    def drain(self) -> None:
        """Padding calls until no host has windows left (every host must call this)."""
        while samples := self._agree(0):
            self._run(np.zeros((self.rows, samples), np.float32))


class Evaluator:
    """Transcribes eval tracks with a :class:`Trainer`'s state and scores them.

    ``batch_size``: windows per predict call over all hosts (each host fills
    ``batch_size // process_count`` rows with windows of its own tracks).
    ``frame_convention``: how frame F1 is counted (see
    :data:`amt_jax.metrics.transcription.FRAME_CONVENTIONS`): each family is reported
    under the convention of its paper. ``scoring_workers``: mir_eval processes (0 scores
    in this thread); call :meth:`close` to stop them.
    """

    def __init__(
        self,
        trainer: Trainer,
        *,
        batch_size: int,
        decode_options: Mapping[str, Any] | None = None,
        with_velocity: bool = False,
        program_granularities: Sequence[str] = (),
        frame_convention: str = "mt3",
        scoring_workers: int = 1,
    ):
        processes = jax.process_count()
        if batch_size % processes:
            raise ValueError(
                f"eval batch size {batch_size} does not divide over {processes} processes"
            )
        self.trainer = trainer
        self.model = trainer.abstract_model
        self.batch_size = batch_size
        self.host_batch_size = batch_size // processes
        self.decode_options = self.model.decode_options(decode_options)  # checked up front
        self.with_velocity = with_velocity
        self.program_granularities = tuple(program_granularities)
        self.frame_convention = frame_convention
        self.scorer = scoring.TrackScorer(
            scoring_workers,
            with_velocity=with_velocity,
            program_granularities=self.program_granularities,
            frame_convention=frame_convention,
        )
        self.last_predict_calls = 0  # of the latest evaluate(), padding included

    def close(self) -> None:
        """Stop the scoring workers (they restart on the next evaluation)."""
        self.scorer.close()

    def _transcribe(
        self, predict: LockstepPredict, audio_s: np.ndarray
    ) -> tuple[music_pb2.NoteSequence, dict[str, float]]:
        notes, stats, _ = base.transcribe_segments(
            self.model,
            audio_s,
            predict,
            self.host_batch_size,
            pad_to_batch=True,
            options=self.decode_options,
        )
        return notes, {_label(k): float(v) for k, v in stats.items()}

    def transcribe(
        self, state: TrainState, audio_s: np.ndarray
    ) -> tuple[music_pb2.NoteSequence, dict[str, float]]:
        """One full track -> (NoteSequence, decoder statistics). With several processes
        every one must call this (each with its own track)."""
        predict = LockstepPredict(self.trainer, state, self.host_batch_size)
        result = self._transcribe(predict, audio_s)
        predict.drain()
        return result

    def evaluate(
        self, state: TrainState, tracks: Iterable[EvalTrack], *, keep_pairs: int = 1
    ) -> tuple[dict[str, float], list[tuple[EvalTrack, music_pb2.NoteSequence]]]:
        """Mean-over-tracks metrics (over every host's tracks) and this host's first
        ``keep_pairs`` (track, estimate) pairs.

        ``tracks``: this host's share, in order (:func:`host_share`: host ``h`` of ``n``
        holds global tracks ``h, h + n, ...``; with one process, all tracks). Every
        process must call this at the same point, with the same ``state``.
        """
        processes, index = jax.process_count(), jax.process_index()
        predict = LockstepPredict(self.trainer, state, self.host_batch_size)
        pending, pairs, error = [], [], None
        try:
            for local, track in enumerate(tracks):
                estimate, stats = self._transcribe(predict, track.audio_s)
                future = self.scorer.submit(track.reference, estimate)  # scored meanwhile
                pending.append((index + local * processes, future, stats))
                if len(pairs) < keep_pairs:
                    pairs.append((track, estimate))
        except Exception as exc:  # the other hosts must not wait for this one's calls
            if processes == 1:
                raise
            error = exc
        predict.drain()
        self.last_predict_calls = predict.calls
        per_track = []
        for track_index, future, stats in pending:
            if error is not None:
                future.cancel()
                continue
            try:
                metrics = future.result()
            except Exception as exc:
                if processes == 1:
                    raise
                error = exc
                continue
            metrics.update(stats)
            per_track.append((track_index, metrics))
        everything = gather_track_metrics(per_track, error)
        return transcription.aggregate_track_metrics(everything), pairs


def gather_track_metrics(
    per_track: Sequence[tuple[int, Mapping[str, float]]], error: BaseException | None = None
) -> list[dict[str, float]]:
    """Every host's ``(global track index, metrics)`` -> all tracks' metrics in global
    order, on every host (every process must call this). ``error``: this host failed; it
    still takes part so the others do not wait, and every host raises."""
    shares = allgather_objects(
        {"tracks": [(int(i), dict(m)) for i, m in per_track], "error": _describe(error)}
    )
    if error is not None:
        raise error
    for host, share in enumerate(shares):
        if share["error"]:
            raise RuntimeError(f"evaluation failed on process {host}: {share['error']}")
    everything = sorted(
        (pair for share in shares for pair in share["tracks"]), key=lambda pair: pair[0]
    )
    return [dict(metrics) for _, metrics in everything]


def _describe(error: BaseException | None) -> str | None:
    return None if error is None else f"{type(error).__name__}: {error}"


def _label(name: str) -> str:
    return name.replace("_", " ").capitalize()


def piano_roll_image(
    reference: music_pb2.NoteSequence,
    estimate: music_pb2.NoteSequence,
    frames_per_second: float = transcription.FRAMES_PER_SECOND,
) -> np.ndarray:
    """RGB [128, frames, 3] image (high pitches on top): reference in green, estimate in
    magenta, so correct cells are white and misses / false alarms stand out."""
    ref, est = (
        transcription.piano_roll(
            transcription.note_arrays(sequence), frames_per_second=frames_per_second
        )
        for sequence in (reference, estimate)
    )
    frames = max(len(ref), len(est), 1)
    ref = np.pad(ref, ((0, frames - len(ref)), (0, 0)))
    est = np.pad(est, ((0, frames - len(est)), (0, 0)))
    image = np.stack([est, ref, est], axis=-1).astype(np.float32)  # [frames, 128, 3]
    return image.transpose(1, 0, 2)[::-1]

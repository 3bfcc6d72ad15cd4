"""mir_eval scoring off the caller's thread: per-track metrics in spawned worker processes.

Both evaluators (the one inside training, :mod:`amt_jax.train.evaluation`, and the
standalone job, :mod:`amt_jax.evaluate`) submit each track's (reference, estimate) here as
soon as it is transcribed and go on transcribing the next track while a worker scores it.
The workers are *spawned*, never forked: the caller has started JAX (and its threads), and
a forked child of a multi-threaded process may deadlock.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from collections.abc import Sequence

from note_seq.protobuf import music_pb2

from amt_jax.metrics import transcription


def score_track(
    reference: music_pb2.NoteSequence,
    estimate: music_pb2.NoteSequence,
    with_velocity: bool,
    program_granularities: tuple[str, ...],
    frame_convention: str,
) -> dict[str, float]:
    """One track's :func:`~amt_jax.metrics.transcription.track_metrics` (the worker's job)."""
    return transcription.track_metrics(
        reference,
        estimate,
        with_velocity=with_velocity,
        program_granularities=program_granularities,
        frame_convention=frame_convention,
    )


class TrackScorer:
    """Scores tracks in ``workers`` spawned processes (0: synchronously in this process).

    :meth:`submit` returns a :class:`concurrent.futures.Future` of the track's metrics; the
    pool starts on the first submit (a spawned worker imports mir_eval once, ~1-2 s) and
    stays up until :meth:`close`, so an evaluator that scores every few thousand steps
    pays the start once. The metric settings are fixed per scorer.
    """

    def __init__(
        self,
        workers: int = 1,
        *,
        with_velocity: bool = False,
        program_granularities: Sequence[str] = (),
        frame_convention: str = "mt3",
    ):
        transcription.get_frame_convention(frame_convention)  # unknown names fail up front
        self.workers = workers
        self.settings = (bool(with_velocity), tuple(program_granularities), frame_convention)
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def submit(
        self, reference: music_pb2.NoteSequence, estimate: music_pb2.NoteSequence
    ) -> concurrent.futures.Future:
        if self.workers <= 0:  # in this process, e.g. for debugging
            future: concurrent.futures.Future = concurrent.futures.Future()
            try:
                future.set_result(score_track(reference, estimate, *self.settings))
            except Exception as error:  # noqa: BLE001 - delivered through the future
                future.set_exception(error)
            return future
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = concurrent.futures.ProcessPoolExecutor(self.workers, mp_context=context)
        return self._pool.submit(score_track, reference, estimate, *self.settings)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> TrackScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

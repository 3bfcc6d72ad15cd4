"""Full-track evaluation: the transcriber's path, on the trainer's mesh, scored with mir_eval.

Each eval track goes through :func:`amt_jax.models.base.transcribe_segments`, the same
segment -> predict -> ``outputs_to_notes`` path as ``amt-jax --checkpoint``, with the
trainer's sharded predict in fixed-size batches; the notes are scored against the full
reference with :mod:`amt_jax.metrics.transcription` and averaged over tracks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from note_seq.protobuf import music_pb2

from amt_jax.metrics import transcription
from amt_jax.models import base
from amt_jax.train.train_state import TrainState
from amt_jax.train.trainer import Trainer


@dataclasses.dataclass
class EvalTrack:
    """One full evaluation track: mono audio at the model's sample rate + reference notes."""

    track_id: str
    audio_s: np.ndarray
    reference: music_pb2.NoteSequence


class Evaluator:
    """Transcribes eval tracks with a :class:`Trainer`'s state and scores them.

    ``frame_convention``: how frame F1 is counted (see
    :data:`amt_jax.metrics.transcription.FRAME_CONVENTIONS`): each family is reported
    under the convention of its paper.
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
    ):
        self.trainer = trainer
        self.model = trainer.abstract_model
        self.batch_size = batch_size
        self.decode_options = self.model.decode_options(decode_options)  # checked up front
        self.with_velocity = with_velocity
        self.program_granularities = tuple(program_granularities)
        self.frame_convention = frame_convention

    def _predict_fn(self, state: TrainState) -> base.PredictFn:
        processes, index = jax.process_count(), jax.process_index()
        per_host = self.batch_size // processes

        def predict(batch_bs: np.ndarray) -> dict[str, np.ndarray]:
            local = batch_bs[index * per_host : (index + 1) * per_host]
            outputs = self.trainer.predict(state, self.trainer.global_batch({"audio_bs": local}))
            return {name: np.asarray(value) for name, value in outputs.items()}

        return predict

    def transcribe(
        self, state: TrainState, audio_s: np.ndarray
    ) -> tuple[music_pb2.NoteSequence, dict[str, float]]:
        """One full track -> (NoteSequence, decoder statistics)."""
        notes, stats, _ = base.transcribe_segments(
            self.model,
            audio_s,
            self._predict_fn(state),
            self.batch_size,
            pad_to_batch=True,
            options=self.decode_options,
        )
        return notes, {_label(k): float(v) for k, v in stats.items()}

    def evaluate(
        self, state: TrainState, tracks: Iterable[EvalTrack]
    ) -> tuple[dict[str, float], list[tuple[EvalTrack, music_pb2.NoteSequence]]]:
        """Mean-over-tracks metrics and the (track, estimate) pairs."""
        per_track, pairs = [], []
        for track in tracks:
            estimate, stats = self.transcribe(state, track.audio_s)
            metrics = transcription.track_metrics(
                track.reference,
                estimate,
                with_velocity=self.with_velocity,
                program_granularities=self.program_granularities,
                frame_convention=self.frame_convention,
            )
            metrics.update(stats)
            per_track.append(metrics)
            pairs.append((track, estimate))
        return transcription.aggregate_track_metrics(per_track), pairs


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

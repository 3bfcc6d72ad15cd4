"""The one Model protocol shared by MT3, Onsets and Frames and NMP.

The trainer, evaluator and transcriber only use what is declared here, so a new model
family plugs in by implementing it. The path from audio to notes is the same everywhere:

    segments = model.segment(audio_s)                   # where the model's windows lie
    outputs  = predict(each batch of segments)          # jitted, on the device
    notes, stats = model.outputs_to_notes(              # stitch + decode on the host
        outputs, num_samples=len(audio_s), start_times=segments.start_times, **options)

:func:`transcribe_segments` runs exactly that loop, so evaluation during training and the
``amt-jax`` CLI measure the same thing.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import jax
import numpy as np
from flax import nnx
from note_seq.protobuf import music_pb2

Batch = dict[str, jax.Array]
#: [rows, samples] float32 audio -> host numpy outputs of ``model.predict``, one row each
PredictFn = Callable[[np.ndarray], Mapping[str, np.ndarray]]


def static_sample_rate(batch: Batch) -> int | None:
    """The batch's ``sample_rate`` when known on the host (not a traced value), else None:
    what a model's input check can compare against its own rate while tracing."""
    rate = batch.get("sample_rate")
    if rate is None or isinstance(rate, jax.core.Tracer):
        return None
    return int(np.asarray(rate).reshape(-1)[0])


@dataclasses.dataclass(frozen=True)
class Segments:
    """Where a model's input windows lie in one track.

    ``starts``: sample offset of each window in the track (negative or past the end where
    a window reaches beyond the audio: those samples are zeros); ``length``: samples per
    window; ``start_times``: what :meth:`TranscriptionModel.outputs_to_notes` is given
    (seconds, one per window).
    """

    starts: np.ndarray
    length: int
    start_times: np.ndarray

    def __len__(self) -> int:
        return len(self.starts)

    def windows(self, audio_s: np.ndarray, first: int, rows: int) -> np.ndarray:
        """Windows ``first .. first + rows`` as float32 [rows, length] (zero-filled)."""
        out = np.zeros((rows, self.length), np.float32)
        for row, start in enumerate(self.starts[first : first + rows]):
            start = int(start)
            lo, hi = max(start, 0), min(start + self.length, audio_s.shape[0])
            if hi > lo:
                out[row, lo - start : hi - start] = audio_s[lo:hi]
        return out


def consecutive_segments(num_samples: int, length: int, sample_rate: int) -> Segments:
    """Back-to-back windows covering ``num_samples`` (the last one zero-padded)."""
    count = max(1, -(-num_samples // length))
    starts = np.arange(count, dtype=np.int64) * length
    return Segments(starts, length, starts / sample_rate)


def power_of_two_batches(num_windows: int, batch_size: int) -> list[int]:
    """Row counts of the model calls: full batches, then the remainder as descending
    powers of two (37 windows at 8 -> 8, 8, 8, 8, 4, 1). No call computes padding rows,
    and at most ``log2(batch_size) + 1`` shapes compile."""
    sizes = [batch_size] * (num_windows // batch_size)
    remainder = num_windows % batch_size
    power = 1 << max(remainder.bit_length() - 1, 0)
    while remainder:
        if remainder >= power:
            sizes.append(power)
            remainder -= power
        power >>= 1
    return sizes


def fixed_batches(num_windows: int, batch_size: int) -> list[int]:
    """Row counts when every call has ``batch_size`` rows (the last is zero-padded)."""
    return [min(batch_size, num_windows - first) for first in range(0, num_windows, batch_size)]


def predict_segments(
    segments: Segments,
    audio_s: np.ndarray,
    predict: PredictFn,
    batch_size: int,
    *,
    pad_to_batch: bool = False,
    plan: Callable[[int, int], list[int]] | None = None,
) -> dict[str, np.ndarray]:
    """Every window through ``predict``; outputs concatenated in window order.

    ``pad_to_batch``: every call gets exactly ``batch_size`` rows (one compiled shape, as
    the trainer's sharded predict needs); otherwise ``plan`` gives the calls' row counts
    (default :func:`power_of_two_batches`).
    """
    plan = fixed_batches if pad_to_batch else (plan or power_of_two_batches)
    parts: dict[str, list[np.ndarray]] = {}
    first = 0
    for rows in plan(len(segments), batch_size):
        batch = segments.windows(audio_s, first, rows)
        if pad_to_batch and rows < batch_size:
            batch = np.pad(batch, ((0, batch_size - rows), (0, 0)))
        for name, value in predict(batch).items():
            parts.setdefault(name, []).append(np.asarray(value)[:rows])
        first += rows
    return {name: np.concatenate(values) for name, values in parts.items()}


def _iter_options(options: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    return ((k, v) for k, v in options.items() if v is not None)


class TranscriptionModel(nnx.Module, abc.ABC):
    """Base class: raw audio in (front end inside), loss / predictions / notes out.

    Batches hold raw audio ``audio_bs`` (float32, [batch, samples] at ``sample_rate``)
    plus family-specific targets; the spectrogram front end runs inside ``__call__`` so it
    is jitted with the model.
    """

    #: the registry name of the family (``amt_jax.models.families``)
    family: ClassVar[str]
    #: note-creation options ``outputs_to_notes`` accepts, with their defaults
    decode_option_defaults: ClassVar[dict[str, Any]] = {}

    #: shortest track (samples) the model transcribes: shorter gives no output frame
    min_samples: ClassVar[int] = 1
    #: sample rate of the raw audio this model consumes
    sample_rate: int
    #: number of audio samples in one training segment
    segment_samples: int
    #: the model's config dataclass (recorded beside checkpoints)
    config: Any

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: Any, *, rngs: nnx.Rngs) -> TranscriptionModel:
        """Build (and initialise) the model from its config dataclass."""

    @abc.abstractmethod
    def loss(self, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Scalar training loss and a dict of scalar metrics for logging."""

    @abc.abstractmethod
    def predict(self, batch: Batch) -> dict[str, jax.Array]:
        """Model outputs for a batch of segments (posteriors or token ids)."""

    @abc.abstractmethod
    def segment(self, audio_s: np.ndarray) -> Segments:
        """Where this model's inference windows lie in a mono track at ``sample_rate``."""

    @abc.abstractmethod
    def stitch(self, outputs: Mapping[str, np.ndarray], *, num_samples: int) -> dict[str, Any]:
        """Per-window outputs of one track -> per-track arrays (posteriors [frames, bins],
        or MT3's tokens [segments, length]); what ``--save-posteriors`` writes."""

    @abc.abstractmethod
    def outputs_to_notes(
        self,
        outputs: Mapping[str, np.ndarray],
        *,
        num_samples: int,
        start_times: np.ndarray,
        **options: Any,
    ) -> tuple[music_pb2.NoteSequence, dict[str, float]]:
        """Per-window outputs of one track (in :meth:`segment` order) -> (notes, stats).

        ``options``: the family's note-creation options (:attr:`decode_option_defaults`).
        """

    def decode_options(self, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Defaults overridden by the given (non-None) options; unknown names are an error."""
        options = dict(_iter_options(options or {}))
        unknown = sorted(set(options) - set(self.decode_option_defaults))
        if unknown:
            takes = sorted(self.decode_option_defaults) or "none"
            raise ValueError(
                f"options {unknown} do not apply to the {self.family} model; it takes {takes}"
            )
        return {**self.decode_option_defaults, **options}


def transcribe_segments(
    model: TranscriptionModel,
    audio_s: np.ndarray,
    predict: PredictFn,
    batch_size: int,
    *,
    pad_to_batch: bool = False,
    plan: Callable[[int, int], list[int]] | None = None,
    options: Mapping[str, Any] | None = None,
) -> tuple[music_pb2.NoteSequence, dict[str, float], dict[str, np.ndarray]]:
    """One track -> (notes, decoder stats, per-window outputs): the shared inference path."""
    audio_s = np.asarray(audio_s, np.float32)
    if audio_s.shape[0] < model.min_samples:
        raise ValueError(
            f"audio of {audio_s.shape[0]} samples ({1e3 * audio_s.shape[0] / model.sample_rate:.1f}"
            f" ms) is too short for the {model.family} model, which needs at least "
            f"{model.min_samples} samples ({1e3 * model.min_samples / model.sample_rate:.1f} ms)"
        )
    segments = model.segment(audio_s)
    outputs = predict_segments(
        segments, audio_s, predict, batch_size, pad_to_batch=pad_to_batch, plan=plan
    )
    notes, stats = model.outputs_to_notes(
        outputs,
        num_samples=audio_s.shape[0],
        start_times=segments.start_times,
        **model.decode_options(options),
    )
    return notes, stats, outputs


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """``(graphdef, params, model_state)`` with params = every ``nnx.Param``."""
    return nnx.split(model, nnx.Param, ...)


def merge_model(
    graphdef: nnx.GraphDef,
    params_template: nnx.State,
    model_state_template: nnx.State,
    params: dict[str, Any],
    model_state: dict[str, Any],
) -> nnx.Module:
    """Rebuild a module from pure dicts, using abstract States for the Variable types."""
    params_state = jax.tree.map(lambda x: x, params_template)
    nnx.replace_by_pure_dict(params_state, params)
    rest_state = jax.tree.map(lambda x: x, model_state_template)
    nnx.replace_by_pure_dict(rest_state, model_state)
    return nnx.merge(graphdef, params_state, rest_state)

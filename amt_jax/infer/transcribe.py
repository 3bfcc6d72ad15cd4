"""Audio in, notes out: the library API behind ``python -m amt_jax.transcribe``.

One :class:`Transcriber` holds a model and one jitted predict function of a fixed batch
shape, so a whole directory of files compiles once. Long audio never goes through the
model in one piece: it is cut into the model's windows on the fly and batched, so the
memory used on top of the (mono, model-rate) audio is bounded by the batch, whatever the
length:

* ``nmp``: Basic Pitch's windows exactly (3840 zeros prepended, 43844-sample windows
  every 36164 samples, 15 frames trimmed at each window edge, concatenated and cut to
  basic-pitch 0.4.0's frame count), then Basic Pitch's note creation with its options.
* ``mt3``: consecutive 2.048 s segments, greedy KV-cache decoding, tokens of all segments
  stitched by the vocabulary decoder (one decoding state across segments, ties).
* ``onsets_frames``: chunks of ``chunk_frames`` frames with ``context_frames`` of real
  audio on each side; only each chunk's core frames are kept, so the BiLSTMs see context
  across chunk edges.

Files are read block by block (soundfile), mixed to mono per block and validated on the
way, then resampled once with soxr (the resampler librosa, and so basic-pitch, uses).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from note_seq.protobuf import music_pb2

from amt_jax.audio import io as audio_io
from amt_jax.heap import release_freed_heap

MODEL_FAMILIES = ("nmp", "onsets_frames", "mt3")
#: Basic Pitch note-creation options accepted by the ``nmp`` family (basic-pitch defaults)
NMP_OPTION_DEFAULTS = {
    "onset_threshold": 0.5,
    "frame_threshold": 0.3,
    "minimum_note_length_ms": 127.7,
    "min_freq": None,
    "max_freq": None,
    "melodia_trick": True,
    "multiple_pitch_bends": False,
}
ONSETS_FRAMES_OPTION_DEFAULTS = {"onset_threshold": 0.5, "frame_threshold": 0.5}
MT3_OPTION_DEFAULTS: dict[str, Any] = {}
#: windows per model call, chosen for speed and peak memory on long files
#: (docs/benchmarks.md). NMP: 4 windows keep the conv working sets in cache (60 s file on
#: 2 cores: 0.82 s at 4, 1.0 s at 8, 0.90 s at 16, 0.92 s at 1). O&F: one chunk per
#: call; a second row adds ~200 MB of conv temporaries at ~10 % more speed. MT3: each
#: row adds 39 MB of decoding state (25 MB of it the KV cache at 1024 tokens); a batch
#: of 8 peaks at 1040 MB, 4 at 898 MB. Notes do not depend on the batch.
DEFAULT_BATCH_SIZES = {"nmp": 4, "onsets_frames": 1, "mt3": 4}
_BLOCK_FRAMES = 1 << 18
#: at most one ``malloc_trim`` per this many seconds (each costs tens of ms)
_TRIM_INTERVAL_S = 2.0


class TranscriptionError(RuntimeError):
    """A model could not be set up or run; the message says what to do."""


@dataclasses.dataclass
class Transcription:
    """Everything one file's transcription produced.

    ``posteriors``: stitched frame posteriors per head (NMP ``note``/``onset``/``contour``,
    O&F ``onset``/``offset``/``frame``/``velocity``), or the MT3 ``tokens`` [segments, L].
    """

    sequence: music_pb2.NoteSequence
    posteriors: dict[str, np.ndarray]
    num_samples: int
    sample_rate: int
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return self.num_samples / self.sample_rate


# --- audio -----------------------------------------------------------------------------------


def read_mono(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """A file as validated float32 mono at ``sample_rate``, read in blocks.

    Channels are averaged block by block (the file is never held as multi-channel float),
    NaN/inf samples are reported with their time, and the mono signal is resampled once.
    Formats soundfile cannot open fall back to :func:`amt_jax.audio.io.load_audio`.
    """
    import soundfile as sf

    path = os.fspath(path)
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return audio_io.load_audio(path, sample_rate=sample_rate)[0]  # raises a clear error
    try:
        handle = sf.SoundFile(path)
    except Exception:  # noqa: BLE001 - let io try its other decoders and word the error
        return audio_io.load_audio(path, sample_rate=sample_rate)[0]
    with handle:
        native_rate = int(handle.samplerate)
        # Filled in place (no list + concatenate, which would hold the signal twice).
        mono = np.empty(max(int(handle.frames), 0), np.float32)
        done = 0
        for block in handle.blocks(blocksize=_BLOCK_FRAMES, dtype="float32", always_2d=True):
            if not np.all(np.isfinite(block)):
                bad_frame = done + int(np.flatnonzero(~np.all(np.isfinite(block), axis=1))[0])
                raise audio_io.AudioError(
                    f"'{path}' contains NaN/inf samples (first at {bad_frame / native_rate:.3f} s);"
                    " repair or re-export the file"
                )
            if done + block.shape[0] > mono.shape[0]:  # header under-reported the length
                mono = np.concatenate([mono[:done], np.empty(block.shape[0], np.float32)])
            mono[done : done + block.shape[0]] = block.mean(axis=1, dtype=np.float32)
            done += block.shape[0]
    if done == 0:
        raise audio_io.AudioError(f"'{path}' contains no audio samples (zero duration)")
    return audio_io.resample(mono[:done], native_rate, sample_rate)


def _audio_input(audio_or_path: Any, sample_rate: int | None, target_rate: int) -> np.ndarray:
    if isinstance(audio_or_path, (str, os.PathLike)):
        return read_mono(audio_or_path, target_rate)
    if sample_rate is None:
        raise ValueError("transcribing an array needs its sample_rate")
    return audio_io.prepare_audio(np.asarray(audio_or_path), int(sample_rate), target_rate)


# --- models ----------------------------------------------------------------------------------


def _check_family(model: str) -> str:
    if model not in MODEL_FAMILIES:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODEL_FAMILIES)}")
    return model


def default_config(family: str) -> Any:
    """The published configuration of a model family."""
    if _check_family(family) == "nmp":
        from amt_jax.models.nmp import NMP_CONFIG

        return NMP_CONFIG
    if family == "mt3":
        from amt_jax.models.t5 import MT3Config

        return MT3Config.for_vocabulary("mt3")
    from amt_jax.models.onsets_frames import ONSETS_FRAMES_CONFIG

    return ONSETS_FRAMES_CONFIG


def model_class(family: str) -> type:
    if _check_family(family) == "nmp":
        from amt_jax.models.nmp import NMP

        return NMP
    if family == "mt3":
        from amt_jax.models.t5 import MT3Model

        return MT3Model
    from amt_jax.models.onsets_frames import OnsetsFrames

    return OnsetsFrames


def _checkpoint_directory(checkpoint: str | os.PathLike) -> str:
    """A training workdir or its ``checkpoints/`` directory → the orbax directory."""
    path = os.path.abspath(os.fspath(checkpoint))
    if not os.path.isdir(path):
        raise TranscriptionError(f"checkpoint '{path}' is not a directory")
    nested = os.path.join(path, "checkpoints")
    return nested if os.path.isdir(nested) else path


def restore_model(
    family: str, checkpoint: str | os.PathLike, config: Any = None, step: int | None = None
) -> nnx.Module:
    """A model of ``family`` with the parameters of a training checkpoint.

    ``checkpoint``: the trainer's workdir (or its ``checkpoints/``); the latest step unless
    ``step`` is given. ``config`` must be the one the model was trained with (default: the
    family's published config). Only the ``params`` and ``model_state`` of the saved train
    state are read, onto the host, so the optimizer and the training mesh do not matter.
    """
    import orbax.checkpoint as ocp

    from amt_jax.models.base import merge_model, split_model

    directory = _checkpoint_directory(checkpoint)
    config = default_config(family) if config is None else config
    with nnx.use_eager_sharding(False):
        abstract = nnx.eval_shape(lambda: model_class(family).from_config(config, rngs=nnx.Rngs(0)))
    abstract.eval()
    graphdef, params_template, rest_template = split_model(abstract)
    manager = ocp.CheckpointManager(directory, item_names=("state", "data"))
    try:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise TranscriptionError(f"no checkpoint steps under '{directory}'")

        def host_target(template):
            return jax.tree.map(lambda v: np.zeros(v.shape, v.dtype), nnx.to_pure_dict(template))

        target = {
            "params": host_target(params_template),
            "model_state": host_target(rest_template),
        }
        restore_args = jax.tree.map(lambda x: ocp.RestoreArgs(restore_type=np.ndarray), target)
        try:
            restored = manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.PyTreeRestore(
                        item=target, restore_args=restore_args, partial_restore=True
                    )
                ),
            ).state
        except (ValueError, KeyError, TypeError) as error:
            raise TranscriptionError(
                f"checkpoint '{directory}' step {step} does not fit a {family} model built "
                f"with the given config ({type(config).__name__}); pass the config it was "
                f"trained with. Orbax said: {str(error).splitlines()[0][:300]}"
            ) from error
    finally:
        manager.close()
    mismatched = [
        f"{jax.tree_util.keystr(path)}: saved {np.shape(saved)}, model {np.shape(wanted)}"
        for part in ("params", "model_state")
        for (path, saved), (_, wanted) in zip(
            jax.tree.leaves_with_path(restored[part]), jax.tree.leaves_with_path(target[part])
        )
        if np.shape(saved) != np.shape(wanted)
    ]
    if mismatched:
        raise TranscriptionError(
            f"checkpoint '{directory}' step {step} does not fit a {family} model built with "
            f"the given config ({type(config).__name__}); pass the config it was trained "
            f"with. Differences: {'; '.join(mismatched[:3])}"
        )
    model = merge_model(
        graphdef, params_template, rest_template, restored["params"], restored["model_state"]
    )
    model.eval()
    return model


def pretrained_nmp(weights: str | os.PathLike | None = None) -> nnx.Module:
    """NMP with Basic Pitch's published weights (imported into the cache on first use)."""
    from amt_jax.models import nmp, nmp_weights

    model = nmp.NMP(nmp.NMP_CONFIG, rngs=nnx.Rngs(0))
    path = weights if weights is not None else nmp_weights.default_weights_path()
    if not os.path.exists(path):
        print(
            f"Importing Basic Pitch's published weights into {path} (one time)...",
            file=sys.stderr,
        )
    try:
        nmp_weights.load_basic_pitch_weights(model, path)
    except nmp_weights.BasicPitchWeightsError as error:
        raise TranscriptionError(
            f"{error}\n(or run: python tools/import_basic_pitch.py, which writes {path})"
        ) from error
    model.eval()
    return model


def random_model(family: str, config: Any = None, seed: int = 0) -> nnx.Module:
    """An untrained model (benchmarks of speed and memory only)."""
    config = default_config(family) if config is None else config
    model = model_class(family).from_config(config, rngs=nnx.Rngs(seed))
    model.eval()
    return model


# --- memory --------------------------------------------------------------------------------


# --- windowing -------------------------------------------------------------------------------


def nmp_window_starts(num_samples: int) -> np.ndarray:
    """Start of each Basic Pitch window in the *unpadded* signal (the first is -3840)."""
    from amt_jax.models import nmp

    count = nmp.num_windows(num_samples)
    return np.arange(count) * nmp.WINDOW_HOP_SAMPLES - nmp.OVERLAP_SAMPLES // 2


def slice_padded(audio_s: np.ndarray, start: int, length: int) -> np.ndarray:
    """``audio_s[start:start + length]`` with zeros wherever the range leaves the signal."""
    out = np.zeros(length, np.float32)
    lo, hi = max(start, 0), min(start + length, audio_s.shape[0])
    if hi > lo:
        out[lo - start : hi - start] = audio_s[lo:hi]
    return out


def batch_sizes(num_windows: int, batch_size: int) -> list[int]:
    """Row counts of the model calls for ``num_windows`` windows: full batches of
    ``batch_size``, then the remainder as descending powers of two (37 windows at 8 ->
    8, 8, 8, 8, 4, 1). No call computes all-zero padding rows, and there are at most
    ``log2(batch_size) + 1`` distinct shapes to compile."""
    sizes = [batch_size] * (num_windows // batch_size)
    remainder = num_windows % batch_size
    power = 1 << max(remainder.bit_length() - 1, 0)
    while remainder:
        if remainder >= power:
            sizes.append(power)
            remainder -= power
        power >>= 1
    return sizes


def batched(
    starts: np.ndarray, audio_s: np.ndarray, length: int, batch_size: int
) -> Iterator[tuple[np.ndarray, int]]:
    """Batches [rows, length] of windows (see :func:`batch_sizes`), and how many rows."""
    first = 0
    for rows in batch_sizes(len(starts), batch_size):
        batch = np.zeros((rows, length), np.float32)
        for row, start in enumerate(starts[first : first + rows]):
            batch[row] = slice_padded(audio_s, int(start), length)
        first += rows
        yield batch, rows


# --- the transcriber -------------------------------------------------------------------------


class Transcriber:
    """A model family plus its jitted, fixed-batch predict function.

    ``model``: ``"nmp"`` (default: Basic Pitch's published weights, no training needed),
    ``"mt3"`` or ``"onsets_frames"`` (need ``checkpoint``, or ``random_weights=True`` for
    benchmarks). ``config``: the model config (default: the family's published one).
    ``batch_size``: windows per model call; a file's last windows go in calls of
    power-of-two sizes (:func:`batch_sizes`), so no call computes padding rows and the
    function compiles for at most log2(batch_size) + 1 shapes.
    """

    def __init__(
        self,
        model: str = "nmp",
        checkpoint: str | os.PathLike | None = None,
        *,
        config: Any = None,
        batch_size: int | None = None,
        weights: str | os.PathLike | None = None,
        random_weights: bool = False,
        vocabulary: Any = None,
        chunk_frames: int = 512,
        context_frames: int = 32,
        max_decode_length: int | None = None,
    ):
        self.family = _check_family(model)
        if checkpoint is not None:
            self.model = restore_model(self.family, checkpoint, config)
        elif random_weights:
            self.model = random_model(self.family, config)
        elif self.family == "nmp":
            if config is not None:
                raise TranscriptionError(
                    "Basic Pitch's weights fit only the published NMP config; pass a "
                    "checkpoint for other configs"
                )
            self.model = pretrained_nmp(weights)
        else:
            raise TranscriptionError(
                f"the {self.family} model has no published weights in amt_jax; train one "
                f"(python -m amt_jax.train ...) and pass --checkpoint WORKDIR"
            )
        self.batch_size = batch_size or DEFAULT_BATCH_SIZES[self.family]
        self.vocabulary = vocabulary
        self.chunk_frames = chunk_frames
        self.context_frames = context_frames
        self.max_decode_length = max_decode_length
        graphdef, state = nnx.split(self.model)
        self._state = state
        if self.family == "mt3":

            def predict(state, audio_bs):
                merged = nnx.merge(graphdef, state)
                return merged.predict({"audio_bs": audio_bs}, max_length=max_decode_length)

        else:

            def predict(state, audio_bs):
                return nnx.merge(graphdef, state).predict({"audio_bs": audio_bs})

        self._predict = jax.jit(predict)
        self._last_trim = -math.inf
        release_freed_heap()  # what building the model (and random init) left behind

    @property
    def sample_rate(self) -> int:
        return int(self.model.sample_rate)

    def _run(self, batch_bs: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self._predict(self._state, jnp.asarray(batch_bs))
        outputs = {name: np.asarray(value) for name, value in outputs.items()}
        if time.perf_counter() - self._last_trim > _TRIM_INTERVAL_S:
            release_freed_heap()  # first call: the compiler's memory; then call temporaries
            self._last_trim = time.perf_counter()
        return outputs

    # -- per family ------------------------------------------------------------------------

    def nmp_posteriors(self, audio_s: np.ndarray) -> dict[str, np.ndarray]:
        """Stitched NMP posteriors exactly as basic-pitch 0.4.0's ``run_inference``."""
        from amt_jax.models import nmp

        half = nmp.OVERLAP_FRAMES // 2
        kept_per_window = nmp.FRAMES_PER_WINDOW - 2 * half
        starts = nmp_window_starts(audio_s.shape[0])
        keep = nmp.num_output_frames(audio_s.shape[0], "0.4.0")
        stitched: dict[str, np.ndarray] = {}
        row = 0
        for batch, count in batched(starts, audio_s, nmp.WINDOW_SAMPLES, self.batch_size):
            for name, value in self._run(batch).items():
                if name not in stitched:
                    stitched[name] = np.zeros(
                        (len(starts) * kept_per_window, value.shape[-1]), np.float32
                    )
                inner = value[:count, half : nmp.FRAMES_PER_WINDOW - half]
                stitched[name][row : row + count * kept_per_window] = inner.reshape(
                    -1, value.shape[-1]
                )
            row += count * kept_per_window
        return {name: value[:keep] for name, value in stitched.items()}

    def onsets_frames_posteriors(self, audio_s: np.ndarray) -> dict[str, np.ndarray]:
        """O&F posteriors [frames, 88] from overlapping chunks (core frames kept)."""
        mel = self.model.config.mel
        hop = mel.hop_length
        total = mel.num_frames(audio_s.shape[0])
        core, context = self.chunk_frames, self.context_frames
        chunk_samples = (core + 2 * context) * hop
        starts = (np.arange(math.ceil(total / core)) * core - context) * hop
        out: dict[str, np.ndarray] = {}
        frame = 0
        for batch, count in batched(starts, audio_s, chunk_samples, self.batch_size):
            for name, value in self._run(batch).items():
                if name not in out:
                    out[name] = np.zeros((len(starts) * core, value.shape[-1]), np.float32)
                inner = value[:count, context : context + core]
                out[name][frame : frame + count * core] = inner.reshape(-1, value.shape[-1])
            frame += count * core
        return {name: value[:total] for name, value in out.items()}

    def mt3_tokens(self, audio_s: np.ndarray) -> np.ndarray:
        """Greedy token ids [segments, length] of consecutive 2.048 s segments."""
        segment = int(self.model.segment_samples)
        starts = np.arange(max(1, math.ceil(audio_s.shape[0] / segment))) * segment
        rows = []
        for batch, count in batched(starts, audio_s, segment, self.batch_size):
            rows.append(self._run(batch)["tokens_bl"][:count])
        return np.concatenate(rows)

    # -- public ----------------------------------------------------------------------------

    def transcribe(
        self, audio_or_path: Any, sample_rate: int | None = None, **options: Any
    ) -> Transcription:
        """Audio file path or array (with ``sample_rate``) → :class:`Transcription`.

        ``options``: note-creation options of the family (NMP: basic-pitch's
        ``onset_threshold``, ``frame_threshold``, ``minimum_note_length_ms``,
        ``min_freq``, ``max_freq``, ``melodia_trick``, ``multiple_pitch_bends``;
        O&F: ``onset_threshold``, ``frame_threshold``).
        """
        defaults = {
            "nmp": NMP_OPTION_DEFAULTS,
            "onsets_frames": ONSETS_FRAMES_OPTION_DEFAULTS,
            "mt3": MT3_OPTION_DEFAULTS,
        }[self.family]
        unknown = sorted(set(options) - set(defaults))
        if unknown:
            raise ValueError(
                f"options {unknown} do not apply to the {self.family} model; it takes "
                f"{sorted(defaults) or 'none'}"
            )
        options = {**defaults, **{k: v for k, v in options.items() if v is not None}}
        audio_s = _audio_input(audio_or_path, sample_rate, self.sample_rate)
        stats: dict[str, Any] = {}
        if self.family == "nmp":
            from amt_jax.infer import postprocess

            posteriors = self.nmp_posteriors(audio_s)
            sequence, events = postprocess.basic_pitch_outputs_to_sequence(posteriors, **options)
            stats["note_events"] = len(events)
        elif self.family == "onsets_frames":
            from amt_jax.infer import postprocess

            posteriors = self.onsets_frames_posteriors(audio_s)
            sequence = postprocess.onsets_frames_to_sequence(
                posteriors["frame"],
                posteriors["onset"],
                posteriors.get("velocity"),
                frames_per_second=self.model.config.frames_per_second,
                **options,
            )
        else:
            tokens = self.mt3_tokens(audio_s)
            posteriors = {"tokens": tokens}
            sequence, decode_stats = self.model.outputs_to_notes(
                {"tokens_bl": tokens}, vocabulary=self.vocabulary, return_stats=True
            )
            stats.update(decode_stats.as_dict())
        return Transcription(sequence, posteriors, audio_s.shape[0], self.sample_rate, stats)


_TRANSCRIBERS: dict[tuple, Transcriber] = {}


def get_transcriber(model: str = "nmp", checkpoint: Any = None, **kwargs: Any) -> Transcriber:
    """A cached :class:`Transcriber` (one compile per model, checkpoint and settings)."""
    key = (model, None if checkpoint is None else os.path.abspath(os.fspath(checkpoint)))
    key += tuple(sorted((k, repr(v)) for k, v in kwargs.items()))
    if key not in _TRANSCRIBERS:
        _TRANSCRIBERS[key] = Transcriber(model, checkpoint, **kwargs)
    return _TRANSCRIBERS[key]


def transcribe(
    audio_or_path: Any,
    model: str = "nmp",
    checkpoint: str | os.PathLike | None = None,
    *,
    sample_rate: int | None = None,
    config: Any = None,
    batch_size: int | None = None,
    **options: Any,
) -> music_pb2.NoteSequence:
    """Transcribe a file (or an array with its ``sample_rate``) into a NoteSequence.

    ``model="nmp"`` works out of the box with Basic Pitch's published weights;
    ``"mt3"`` and ``"onsets_frames"`` need a training ``checkpoint`` (workdir).
    ``options`` are the family's note-creation options (see :meth:`Transcriber.transcribe`).
    """
    settings = {"config": config, "batch_size": batch_size}
    transcriber = get_transcriber(
        model, checkpoint, **{k: v for k, v in settings.items() if v is not None}
    )
    return transcriber.transcribe(audio_or_path, sample_rate=sample_rate, **options).sequence


#: a callable that maps a file path to its Transcription (what the CLI drives)
TranscribeFn = Callable[[str], Transcription]

__all__ = [
    "MODEL_FAMILIES",
    "Transcriber",
    "Transcription",
    "TranscriptionError",
    "default_config",
    "get_transcriber",
    "nmp_window_starts",
    "pretrained_nmp",
    "random_model",
    "read_mono",
    "restore_model",
    "transcribe",
]

"""Audio in, notes out: the library API behind ``python -m amt_jax.transcribe``.

One :class:`Transcriber` holds a model and one jitted predict function, so a whole
directory of files compiles once. Every family goes the same way
(:func:`amt_jax.models.base.transcribe_segments`, also what evaluation during training
runs): the model's ``segment`` says where its windows lie, the windows are cut on the fly
and batched, and ``outputs_to_notes`` stitches and decodes them. Long audio never goes
through the model in one piece, so memory on top of the (mono, model-rate) audio grows
only with the per-window outputs:

* ``nmp``: Basic Pitch's windows exactly (3840 zeros prepended, 43844-sample windows
  every 36164 samples, 15 frames trimmed at each window edge, cut to basic-pitch 0.4.0's
  frame count), then Basic Pitch's note creation with its options.
* ``mt3``: consecutive 2.048 s segments, greedy KV-cache decoding, tokens of all segments
  decoded with the checkpoint's vocabulary (one decoding state across segments, ties).
* ``onsets_frames``: chunks of ``chunk_frames`` frames with ``context_frames`` of real
  audio on each side (from the model config); only each chunk's core frames are kept.

Files are read block by block (soundfile), mixed to mono per block and validated on the
way, then resampled once with soxr (the resampler librosa, and so basic-pitch, uses).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from note_seq.protobuf import music_pb2

from amt_jax.audio import io as audio_io
from amt_jax.heap import release_freed_heap
from amt_jax.infer import refill as refill_lib
from amt_jax.models import base, checkpoints, families

#: windows per model call, chosen for speed and peak memory on long files
#: (docs/benchmarks.md). NMP: 4 windows keep the conv working sets in cache (60 s file on
#: 2 cores: 0.82 s at 4, 1.0 s at 8, 0.90 s at 16, 0.92 s at 1). O&F: one chunk per
#: call; a second row adds ~200 MB of conv temporaries at ~10 % more speed. MT3: each
#: row adds 39 MB of decoding state (25 MB of it the KV cache at 1024 tokens); a batch
#: of 8 peaks at 1040 MB, 4 at 898 MB. Notes do not depend on the batch.
DEFAULT_BATCH_SIZES = {"nmp": 4, "onsets_frames": 1, "mt3": 4}
#: MT3 windows handed to the refilling decoder at once (:mod:`amt_jax.infer.refill`);
#: bounds the audio and encoder outputs held for a long file (256 windows: 32 MB + 128 MB)
REFILL_WINDOWS = 256
#: families whose batch rows are split over the local devices by default. MT3's decoder
#: reads its key/value caches through batched matrix-vector products, which XLA:CPU runs
#: on one thread per device: with the rows split over one CPU device per core
#: (:func:`use_cpu_cores`), 32 x 512 decoding runs 1.4x faster, tokens unchanged.
SPLIT_ROWS_BY_DEFAULT = ("mt3",)
#: ``weights_dtype`` values (bfloat16: MT3 only, the dense layers' bf16-weights form)
WEIGHTS_DTYPES = ("float32", "bfloat16")
MODEL_FAMILIES = families.NAMES
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
    audio_io.check_wav_complete(path)
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


def _is_path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


def _audio_input(audio_or_path: Any, sample_rate: int | None, target_rate: int) -> np.ndarray:
    if _is_path(audio_or_path):
        return read_mono(audio_or_path, target_rate)
    if sample_rate is None:
        raise ValueError("transcribing an array needs its sample_rate")
    return audio_io.prepare_audio(np.asarray(audio_or_path), int(sample_rate), target_rate)


# --- models ----------------------------------------------------------------------------------


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
    """An untrained model (benchmarks of speed and memory, and untrained baselines)."""
    entry = families.get(family)
    config = entry.published_config if config is None else config
    model = entry.model_class.from_config(config, rngs=nnx.Rngs(seed))
    model.eval()
    return model


# --- devices and weights ---------------------------------------------------------------------


def use_cpu_cores(count: int | None = None) -> int | None:
    """Give JAX one CPU device per core (default: the cores this process may run on), so
    :class:`Transcriber` can split a batch's rows over them.

    Only possible before JAX starts its backends, and only when the user has not chosen
    a device count (``XLA_FLAGS=--xla_force_host_platform_device_count`` or
    ``JAX_NUM_CPU_DEVICES``); returns the count set, or None when it left JAX alone.
    The entry points (``amt-jax``, ``python -m amt_jax.transcribe``) call it first.
    """
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return None
    if os.environ.get("JAX_NUM_CPU_DEVICES"):
        return None
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        return None
    count = count or len(os.sched_getaffinity(0))
    jax.config.update("jax_num_cpu_devices", count)
    return count


def _row_devices(family: str, devices: Any, batch_size: int) -> list[Any]:
    """Devices a batch's rows are split over: ``devices`` (a count, a list, or None for
    the family's default), cut to the largest number that divides ``batch_size``."""
    available = jax.local_devices()
    if devices is None:
        devices = len(available) if family in SPLIT_ROWS_BY_DEFAULT else 1
    if isinstance(devices, int):
        if not 1 <= devices <= len(available):
            raise TranscriptionError(
                f"devices={devices}: this process has {len(available)} "
                f"{jax.default_backend()} device(s)"
            )
        devices = available[:devices]
    devices = list(devices)
    count = max(k for k in range(1, len(devices) + 1) if batch_size % k == 0)
    return devices[:count]


def with_weights_dtype(model: nnx.Module, dtype: str) -> nnx.Module:
    """``model`` with its parameters stored as ``dtype`` (MT3: ``config.param_dtype``)."""
    if dtype not in WEIGHTS_DTYPES:
        raise TranscriptionError(f"weights_dtype must be one of {WEIGHTS_DTYPES}, got {dtype!r}")
    config = model.config
    if getattr(config, "param_dtype", "float32") == dtype:
        return model
    if model.family != "mt3":
        raise TranscriptionError(
            f"weights_dtype={dtype!r} is implemented for mt3 only, not {model.family}"
        )
    config = dataclasses.replace(config, param_dtype=dtype)
    graphdef, wanted = nnx.split(
        nnx.eval_shape(lambda: type(model).from_config(config, rngs=nnx.Rngs(0)))
    )

    def cast(value, like):
        floating = jnp.issubdtype(getattr(value, "dtype", None), jnp.floating)
        return value.astype(like.dtype) if floating else value

    cast_model = nnx.merge(graphdef, jax.tree.map(cast, nnx.state(model), wanted))
    cast_model.eval()
    return cast_model


# --- the transcriber -------------------------------------------------------------------------


class Transcriber:
    """A model plus its jitted, fixed-batch predict function.

    ``checkpoint``: a training workdir (or an exported ``reference_runs/<family>``): the
    family, config (MT3 vocabulary, O&F chunking) and parameters (of ``step``, default the
    latest) all come from it, so
    ``model`` / ``config`` / ``vocabulary`` may be left out; given, they must agree with
    the record. Without a checkpoint, ``model="nmp"`` loads Basic Pitch's published
    weights, and ``random_weights=True`` builds an untrained model (benchmarks).
    ``batch_size``: windows per model call; a file's last windows go in calls of
    power-of-two sizes, so no call computes padding rows and the function compiles for at
    most log2(batch_size) + 1 shapes.
    ``devices``: how many local devices (or which) a call's rows are split over; default
    all for MT3 (:data:`SPLIT_ROWS_BY_DEFAULT`), one otherwise. A call with fewer rows than
    devices repeats its last row; outputs do not depend on the split.
    ``refill_rows`` (MT3): decode through :class:`amt_jax.infer.refill.RefillDecoder`,
    whose ``batch_size`` rows take the next window as soon as theirs emits EOS (same
    tokens as fixed batches, without waiting for each batch's longest row). Off by
    default: on a 2-core CPU it is no faster at batch 16 and peaks higher
    (docs/benchmarks.md).
    ``weights_dtype``: ``"bfloat16"`` stores MT3's weights in bf16 and multiplies in bf16
    with float32 accumulation (2-3x faster GEMMs on CPUs with bf16 units; tokens may
    differ from float32 where two logits are within bf16 rounding).
    """

    def __init__(
        self,
        model: str | None = None,
        checkpoint: str | os.PathLike | None = None,
        *,
        config: Any = None,
        batch_size: int | None = None,
        weights: str | os.PathLike | None = None,
        random_weights: bool = False,
        vocabulary: Any = None,
        max_decode_length: int | None = None,
        step: int | None = None,
        devices: int | list[Any] | None = None,
        weights_dtype: str = "float32",
        refill_rows: bool = False,
    ):
        if model is not None:
            families.get(model)  # a clear error for unknown names
        self.step = None
        if checkpoint is not None:
            self.model, self.step = _restore_checked(checkpoint, model, config, vocabulary, step)
        else:
            family = families.get(model or "nmp")
            if vocabulary is not None:
                if family.name != "mt3":
                    raise TranscriptionError("only the mt3 model takes a vocabulary")
                config = dataclasses.replace(
                    config or family.published_config, vocabulary=_vocabulary(vocabulary)
                )
            if random_weights:
                self.model = random_model(family.name, config)
            elif family.has_pretrained:
                if config is not None and config != family.published_config:
                    raise TranscriptionError(
                        "Basic Pitch's weights fit only the published NMP config; pass a "
                        "checkpoint for other configs"
                    )
                self.model = pretrained_nmp(weights)
            else:
                raise TranscriptionError(
                    f"the {family.name} model has no published weights in amt_jax; train one "
                    f"(python -m amt_jax.train ...) and pass --checkpoint WORKDIR, or use "
                    f"reference_runs/{family.name}"
                )
        self.family = self.model.family
        self.model = with_weights_dtype(self.model, weights_dtype)
        self.batch_size = batch_size or DEFAULT_BATCH_SIZES[self.family]
        predict_options = {} if max_decode_length is None else {"max_length": max_decode_length}
        graphdef = nnx.graphdef(self.model)
        self.devices = _row_devices(self.family, devices, self.batch_size)
        self._rows_sharding = None
        if len(self.devices) > 1:
            mesh = jax.sharding.Mesh(np.array(self.devices), ("rows",))
            self._rows_sharding = jax.sharding.NamedSharding(
                mesh, jax.sharding.PartitionSpec("rows")
            )
        self._refill_rows = self.family == "mt3" and refill_rows
        self._max_decode_length = max_decode_length
        self.reload_weights()

        def predict(state, audio_bs):
            return nnx.merge(graphdef, state).predict({"audio_bs": audio_bs}, **predict_options)

        self._predict = jax.jit(predict)
        self._last_trim = -math.inf
        release_freed_heap()  # what building the model (and random init) left behind

    def reload_weights(self) -> None:
        """Place ``self.model``'s current weights on the devices (after editing them)."""
        self._refill = None
        self._state = nnx.state(self.model)
        if self._refill_rows:
            self._state = None  # the refilling decoder holds the only device copy
            self._refill = refill_lib.RefillDecoder(
                self.model,
                slots=self.batch_size,
                devices=self.devices,
                max_length=self._max_decode_length or self.model.config.targets_length,
            )
        elif self._rows_sharding is not None:
            replicated = self._rows_sharding.update(spec=jax.sharding.PartitionSpec())
            self._state = jax.device_put(self._state, replicated)

    @property
    def sample_rate(self) -> int:
        return int(self.model.sample_rate)

    @property
    def config(self) -> Any:
        return self.model.config

    def predict_batch(self, batch_bs: np.ndarray) -> dict[str, np.ndarray]:
        """Model outputs (host numpy) of one batch of windows [rows, window samples]."""
        if self._refill is not None:
            return {"tokens": self._refill(batch_bs)}
        rows = batch_bs.shape[0]
        if self._rows_sharding is None:
            audio_bs = jnp.asarray(batch_bs)
        else:
            padded = -rows % len(self.devices)  # repeat the last row: it ends when that one does
            audio_bs = np.concatenate([batch_bs, np.repeat(batch_bs[-1:], padded, axis=0)])
            audio_bs = jax.device_put(audio_bs, self._rows_sharding)
        outputs = self._predict(self._state, audio_bs)
        outputs = {name: np.asarray(value)[:rows] for name, value in outputs.items()}
        if time.perf_counter() - self._last_trim > _TRIM_INTERVAL_S:
            release_freed_heap()  # first call: the compiler's memory; then call temporaries
            self._last_trim = time.perf_counter()
        return outputs

    def transcribe(
        self, audio_or_path: Any, sample_rate: int | None = None, **options: Any
    ) -> Transcription:
        """Audio file path or array (with ``sample_rate``) → :class:`Transcription`.

        ``options``: note-creation options of the family (``model.decode_option_defaults``;
        NMP: basic-pitch's ``onset_threshold``, ``frame_threshold``,
        ``minimum_note_length_ms``, ``min_freq``, ``max_freq``, ``melodia_trick``,
        ``multiple_pitch_bends``; O&F: ``onset_threshold``, ``frame_threshold``).
        """
        options = self.model.decode_options(options)  # unknown options fail before reading
        audio_s = _audio_input(audio_or_path, sample_rate, self.sample_rate)
        if audio_s.shape[0] < self.model.min_samples:
            where = f"'{os.fspath(audio_or_path)}'" if _is_path(audio_or_path) else "audio array"
            length_ms = 1e3 * audio_s.shape[0] / self.sample_rate
            needed_ms = 1e3 * self.model.min_samples / self.sample_rate
            raise audio_io.AudioError(
                f"{where} is too short to transcribe: {length_ms:.1f} ms, the {self.family} "
                f"model needs at least {needed_ms:.1f} ms"
            )
        calls = {"batch_size": self.batch_size}
        if self._refill is not None:  # rows refill across the calls' windows
            calls = {"batch_size": REFILL_WINDOWS, "plan": base.fixed_batches}
        notes, stats, outputs = base.transcribe_segments(
            self.model, audio_s, self.predict_batch, options=options, **calls
        )
        posteriors = self.model.stitch(outputs, num_samples=audio_s.shape[0])
        return Transcription(notes, posteriors, audio_s.shape[0], self.sample_rate, stats)


def _vocabulary(vocabulary: Any) -> Any:
    from amt_jax.vocab import layouts

    return layouts.VocabularyConfig.named(vocabulary) if isinstance(vocabulary, str) else vocabulary


def _restore_checked(
    checkpoint: Any, model: str | None, config: Any, vocabulary: Any, step: int | None = None
):
    """Restore a workdir's model; options that contradict its record are one-line errors."""
    directory = checkpoints.model_directory(checkpoint)
    try:
        family, recorded = checkpoints.read_record(directory)
        if model is not None and model != family:
            raise TranscriptionError(
                f"'{directory}' holds a {family} model, not {model}; drop --model or pass "
                f"--model {family}"
            )
        if config is not None and config != recorded:
            raise TranscriptionError(
                f"the given {type(config).__name__} differs from the one '{directory}' was "
                f"trained with{checkpoints._config_difference(recorded, config)}; leave it out"
            )
        if vocabulary is not None:
            wanted = _vocabulary(vocabulary)
            have = getattr(recorded, "vocabulary", None)
            if have is None:
                raise TranscriptionError(f"the {family} model in '{directory}' has no vocabulary")
            if wanted != have:
                raise TranscriptionError(
                    f"vocabulary {wanted.layout!r} contradicts the {have.layout!r} vocabulary "
                    f"'{directory}' was trained with; leave --vocabulary out"
                )
        return checkpoints.restore_model(directory, step=step)
    except checkpoints.CheckpointError as error:
        raise TranscriptionError(str(error)) from None


_TRANSCRIBERS: dict[tuple, Transcriber] = {}


def get_transcriber(model: str | None = None, checkpoint: Any = None, **kwargs: Any) -> Transcriber:
    """A cached :class:`Transcriber` (one compile per model, checkpoint and settings)."""
    where = None if checkpoint is None else os.fspath(checkpoint)
    key = (model, None if where is None else where if "://" in where else os.path.abspath(where))
    key += tuple(sorted((k, repr(v)) for k, v in kwargs.items()))
    if key not in _TRANSCRIBERS:
        _TRANSCRIBERS[key] = Transcriber(model, checkpoint, **kwargs)
    return _TRANSCRIBERS[key]


def transcribe(
    audio_or_path: Any,
    model: str | None = None,
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
    "get_transcriber",
    "pretrained_nmp",
    "random_model",
    "read_mono",
    "transcribe",
    "use_cpu_cores",
    "with_weights_dtype",
]

"""NMP: Basic Pitch's network (Bittner et al., ICASSP 2022), exactly as published.

Raw 22.05 kHz audio windows of 43844 samples go through Basic Pitch's CQT (309 bins,
3 per semitone) → per-window NormalizedLog → a 1-channel BatchNorm → harmonic stacking
(8 harmonics, 264 bins), then three small conv heads:

* contour (Yp): Conv 8 (3×39) → BN → ReLU → Conv 1 (5×5) → sigmoid          [b, 172, 264]
* note (Yn):    Yp → Conv 32 (7×7, stride 1×3) → ReLU → Conv 1 (7×3) → sigmoid [b, 172, 88]
* onset (Yo):   stack → Conv 32 (5×5, stride 1×3) → BN → ReLU,
                concat [Yn as channel 0, 32 features] → Conv 1 (3×3) → sigmoid [b, 172, 88]

16,782 trainable parameters + 82 BatchNorm statistics. The dead contour conv of the
original ``models.py`` is not built (it never fed the outputs, and the published weights
do not contain it). All convs use TensorFlow's SAME rule (pad_lo = total // 2), written as
explicit pads so the stride-3 alignment (note bin k centred on contour bin 3k + 1) is
pinned, and every kernel is constrained to unit L2 norm per output filter (Keras
``UnitNorm(axis=[0, 1, 2])``), re-projected by :func:`project_unit_norm` after each
optimizer step. BatchNorm uses Keras' epsilon 1e-3 and momentum 0.99.

XLA:CPU runs convolutions with 1-32 channels at a few GFLOP/s and XLA:TPU compiles the
GEMM forms that fix that for minutes, so each conv is computed in the form
``NMPConfig.conv_impl`` picks for it ("gemm", "xla", or "auto": by the platform the step is
compiled for); the forms and the choice live in :mod:`amt_jax.models.nmp_convs`.

``NMPConfig.dtype = "bfloat16"`` runs every conv and the CQT's matmuls with bfloat16
operands (float32 accumulation and parameters); sigmoids and losses stay float32.

Around the network: Basic Pitch's sizes come from :mod:`amt_jax.audio.basic_pitch_constants`,
its windowing and stitching of long audio from :mod:`amt_jax.models.nmp_windows`, and its
note creation from :mod:`amt_jax.notes.basic_pitch`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from amt_jax.audio import basic_pitch_constants as bp

# the input contract, public here too (tools and tests read nmp.SAMPLE_RATE, ...)
from amt_jax.audio.basic_pitch_constants import N_CQT_BINS, SAMPLE_RATE, WINDOW_SAMPLES  # noqa: F401
from amt_jax.audio.cqt import basic_pitch_cqt, normalized_log
from amt_jax.audio.harmonic import harmonic_shifts, harmonic_stack
from amt_jax.models import nmp_convs, platform
from amt_jax.models.base import Batch, Segments, TranscriptionModel, static_sample_rate
from amt_jax.models.layers import axis_metadata

# re-exported (tools/bench_transcribe.py times the conv forms one by one)
from amt_jax.models.nmp_convs import (  # noqa: F401
    CONV_IMPLS,
    conv_same,
    harmonic_conv,
    resolve_conv_impl,
    single_output_conv,
    strided_im2col_conv,
    tf_same_padding,
    toeplitz_conv,
)

# Basic Pitch's windowing, public here too (tests call nmp.window_audio, nmp.unwrap_outputs)
from amt_jax.models.nmp_windows import (  # noqa: F401
    num_output_frames,
    num_windows,
    unwrap_outputs,
    window_audio,
)
from amt_jax.notes import basic_pitch as postprocess
from amt_jax.partitioning.axes import constrain

_CONV_AXES = ("kernel_time", "kernel_freq", "conv_in", "conv_out")


@dataclasses.dataclass(frozen=True)
class NMPConfig:
    """NMP hyper-parameters. Defaults are the published Basic Pitch (ICASSP 2022) model.

    ``positive_onset_weight``: the paper's class-balanced onset loss (0.95 positive /
    0.05 negative); ``None`` gives plain BCE (basic-pitch's training default).
    ``label_smoothing``: the paper does not mention it; basic-pitch's ``train.py`` uses 0.2.
    """

    n_pitches: int = bp.N_PITCHES
    bins_per_semitone: int = bp.BINS_PER_SEMITONE
    harmonics: tuple[float, ...] = bp.HARMONICS
    contour_filters: int = 8
    contour_kernel: tuple[int, int] = (3, 39)  # 39 bins = one octave plus a semitone
    contour_out_kernel: tuple[int, int] = (5, 5)
    note_filters: int = 32
    note_kernel: tuple[int, int] = (7, 7)
    note_out_kernel: tuple[int, int] = (7, 3)
    onset_filters: int = 32
    onset_kernel: tuple[int, int] = (5, 5)
    onset_out_kernel: tuple[int, int] = (3, 3)
    batch_norm_epsilon: float = 1e-3
    batch_norm_momentum: float = 0.99
    unit_norm_epsilon: float = 1e-7  # Keras backend epsilon used by UnitNorm
    positive_onset_weight: float | None = 0.95
    label_smoothing: float = 0.0
    #: operand dtype of the convs and the CQT's matmuls: "float32", "bfloat16", or "auto"
    #: (float32 when built for CPU, bfloat16 on accelerators); params, BatchNorm
    #: statistics, sigmoids and losses are always float32
    dtype: str = "auto"
    #: output bins per GEMM block of the contour conv and of the contour output conv
    contour_block: int = 24
    contour_out_block: int = 8
    #: how the heads' convs are computed: "gemm" (the GEMM forms above: ~1.8x faster on
    #: XLA:CPU), "xla" (XLA's own convs, the strided 1-channel note conv as im2col: the
    #: GEMM forms compile for minutes on TPU), or "auto" (by the platform the step is
    #: compiled for: the current mesh's devices, else ``jax.default_backend()``)
    conv_impl: str = "auto"

    def __post_init__(self):
        if self.dtype not in platform.DTYPES:
            raise ValueError(
                f"NMPConfig.dtype must be one of {platform.DTYPES}, got {self.dtype!r}"
            )
        if self.conv_impl not in CONV_IMPLS:
            raise ValueError(
                f"NMPConfig.conv_impl must be one of {CONV_IMPLS}, got {self.conv_impl!r}"
            )
        for name in ("contour_block", "contour_out_block"):
            if getattr(self, name) < 1:
                raise ValueError(f"NMPConfig.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def n_contour_bins(self) -> int:
        return self.n_pitches * self.bins_per_semitone


#: the published network
NMP_CONFIG = NMPConfig()
#: same layout with fewer filters, for CPU tests and demos (NMP itself is already small)
NMP_TINY = NMPConfig(contour_filters=4, note_filters=8, onset_filters=8)


class _Conv(nnx.Module):
    """One conv layer of the heads: TF-SAME padding for a fixed input frequency size, NHWC,
    computed in the form :func:`amt_jax.models.nmp_convs.conv` picks for ``layer``."""

    def __init__(
        self,
        layer: str,
        in_features: int,
        out_features: int,
        kernel: tuple[int, int],
        *,
        freq_size: int,
        freq_stride: int = 1,
        block: int = 8,
        config: NMPConfig,
        rngs: nnx.Rngs,
    ):
        pad_time = tf_same_padding(1, kernel[0])  # stride 1 in time: size-independent
        pad_freq = tf_same_padding(freq_size, kernel[1], freq_stride)
        self.conv = nnx.Conv(
            in_features,
            out_features,
            kernel,
            strides=(1, freq_stride),
            padding=(pad_time, pad_freq),
            kernel_init=jax.nn.initializers.variance_scaling(2.0, "fan_avg", "uniform"),
            precision=jax.lax.Precision.HIGHEST,
            kernel_metadata=axis_metadata(*_CONV_AXES),
            bias_metadata=axis_metadata("conv_out"),
            rngs=rngs,
        )
        self.layer = layer
        self.freq_stride = freq_stride
        self.block = block
        self.conv_impl = config.conv_impl
        self.dtype = platform.resolve_dtype(config.dtype)

    @property
    def weights(self) -> tuple[jax.Array, jax.Array]:
        """(kernel [kt, kf, in, out], bias [out]) as arrays."""
        return self.conv.kernel[...], self.conv.bias[...]

    def __call__(self, x: jax.Array | nmp_convs.HarmonicStack) -> jax.Array:
        """[b, t, f, in] (or a harmonic stack) -> float32 [b, t, f / freq_stride, out]."""
        return nmp_convs.conv(
            self.layer,
            x,
            *self.weights,
            conv_impl=self.conv_impl,
            freq_stride=self.freq_stride,
            block=self.block,
            dtype=self.dtype,
        )


def _batch_norm(features: int, config: NMPConfig, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(
        features,
        epsilon=config.batch_norm_epsilon,
        momentum=config.batch_norm_momentum,
        scale_metadata=axis_metadata("channels"),
        bias_metadata=axis_metadata("channels"),
        rngs=rngs,
    )


class NMP(TranscriptionModel):
    """Basic Pitch's NMP; front end (CQT + harmonic stack) inside the call.

    Batch: ``audio_bs`` [batch, 43844] float32 at 22050 Hz, and for training
    ``contour_btf`` [b, 172, 264], ``note_btp`` [b, 172, 88], ``onset_btp`` [b, 172, 88].
    BatchNorm follows the module mode (``model.train()`` / ``model.eval()``) in
    :meth:`loss`; :meth:`predict` always uses the running statistics.
    """

    family = "nmp"
    #: basic-pitch 0.4.0's note-creation defaults
    decode_option_defaults = {
        "onset_threshold": 0.5,
        "frame_threshold": 0.3,
        "minimum_note_length_ms": 127.7,
        "min_freq": None,
        "max_freq": None,
        "melodia_trick": True,
        "multiple_pitch_bends": False,
    }
    #: one output frame at basic-pitch's 86 fps
    min_samples = math.ceil(SAMPLE_RATE / bp.ANNOTATIONS_FPS)
    sample_rate = SAMPLE_RATE
    segment_samples = WINDOW_SAMPLES

    def __init__(self, config: NMPConfig = NMP_CONFIG, *, rngs: nnx.Rngs):
        #: the dtype ``config.dtype`` means on the platform the model is built for
        self.compute_dtype = platform.resolve_dtype(config.dtype)
        self.config = config
        bins = config.n_contour_bins
        self.input_norm = _batch_norm(1, config, rngs)
        n_harmonics = len(config.harmonics)
        self.contour_conv = _Conv(
            "contour",
            n_harmonics,
            config.contour_filters,
            config.contour_kernel,
            freq_size=bins,
            block=config.contour_block,
            config=config,
            rngs=rngs,
        )
        self.contour_norm = _batch_norm(config.contour_filters, config, rngs)
        self.contour_out = _Conv(
            "contour_out",
            config.contour_filters,
            1,
            config.contour_out_kernel,
            freq_size=bins,
            block=config.contour_out_block,
            config=config,
            rngs=rngs,
        )
        stride = config.bins_per_semitone
        self.note_conv = _Conv(
            "note",
            1,
            config.note_filters,
            config.note_kernel,
            freq_size=bins,
            freq_stride=stride,
            config=config,
            rngs=rngs,
        )
        self.note_out = _Conv(
            "note_out",
            config.note_filters,
            1,
            config.note_out_kernel,
            freq_size=config.n_pitches,
            config=config,
            rngs=rngs,
        )
        self.onset_conv = _Conv(
            "onset",
            n_harmonics,
            config.onset_filters,
            config.onset_kernel,
            freq_size=bins,
            freq_stride=stride,
            config=config,
            rngs=rngs,
        )
        self.onset_norm = _batch_norm(config.onset_filters, config, rngs)
        self.onset_out = _Conv(
            "onset_out",
            config.onset_filters + 1,
            1,
            config.onset_out_kernel,
            freq_size=config.n_pitches,
            config=config,
            rngs=rngs,
        )

    @classmethod
    def from_config(cls, config: NMPConfig | None = None, *, rngs: nnx.Rngs) -> NMP:
        return cls(config or NMP_CONFIG, rngs=rngs)

    # --- forward ---------------------------------------------------------------------------

    def frontend(
        self, audio_bs: jax.Array, *, use_running_average: bool | None = None
    ) -> jax.Array:
        """Raw audio → CQT → NormalizedLog → input BatchNorm: [batch, frames, 309]."""
        log_btf = normalized_log(basic_pitch_cqt(audio_bs, dtype=self.compute_dtype))
        normed_btf = self.input_norm(log_btf[..., None], use_running_average=use_running_average)
        return constrain(normed_btf[..., 0], ("batch", "time", "freq"))

    def _stack(self, normed_btf: jax.Array) -> jax.Array:
        stack_btfh = harmonic_stack(
            normed_btf,
            harmonics=self.config.harmonics,
            bins_per_semitone=self.config.bins_per_semitone,
            n_output_bins=self.config.n_contour_bins,
        )
        return constrain(stack_btfh, ("batch", "time", "freq", "channels"))

    def features(
        self, audio_bs: jax.Array, *, use_running_average: bool | None = None
    ) -> jax.Array:
        """Raw audio → harmonic stack [batch, frames, 264, n_harmonics] (after the input BN)."""
        return self._stack(self.frontend(audio_bs, use_running_average=use_running_average))

    def heads(
        self, normed_btf: jax.Array, *, use_running_average: bool | None = None
    ) -> dict[str, jax.Array]:
        """Normalised CQT [b, t, 309] → float32 logits ``contour`` [b, t, 264], ``note`` /
        ``onset`` [b, t, 88] (the paper's Fig. 2; each conv in its platform's form)."""
        config = self.config
        stack = nmp_convs.HarmonicStack(
            self._stack(normed_btf),
            normed_btf,
            harmonic_shifts(config.harmonics, config.bins_per_semitone),
        )
        # Yp: Conv 8 (3×39) → BN → ReLU → Conv 1 (5×5)
        x = self.contour_conv(stack)
        x = jax.nn.relu(self.contour_norm(x, use_running_average=use_running_average))
        contour_logits = self.contour_out(x)  # [b, t, 264, 1]
        # Yn: sigmoid(Yp) → Conv 32 (7×7, stride 1×3) → ReLU → Conv 1 (7×3)
        x = jax.nn.relu(self.note_conv(jax.nn.sigmoid(contour_logits)))
        note_logits = self.note_out(x)  # [b, t, 88, 1]
        # Yo: stack → Conv 32 (5×5, stride 1×3) → BN → ReLU, [sigmoid(Yn), ·] → Conv 1 (3×3)
        x = self.onset_conv(stack)
        x = jax.nn.relu(self.onset_norm(x, use_running_average=use_running_average))
        onset_logits = self.onset_out(jnp.concatenate([jax.nn.sigmoid(note_logits), x], axis=-1))
        return {
            "contour": contour_logits[..., 0],
            "note": note_logits[..., 0],
            "onset": onset_logits[..., 0],
        }

    def __call__(
        self, audio_bs: jax.Array, *, use_running_average: bool | None = None
    ) -> dict[str, jax.Array]:
        """Raw audio windows → float32 logits of the three heads."""
        normed = self.frontend(audio_bs, use_running_average=use_running_average)
        return self.heads(normed, use_running_average=use_running_average)

    # --- protocol --------------------------------------------------------------------------

    def _audio(self, batch: Batch) -> jax.Array:
        if "audio_bs" not in batch:
            raise ValueError(f"NMP batches need 'audio_bs'; got keys {sorted(batch)}")
        rate = static_sample_rate(batch)
        if rate is not None and rate != SAMPLE_RATE:
            raise ValueError(
                f"NMP expects audio at {SAMPLE_RATE} Hz, got {rate} Hz; resample first "
                f"(amt_jax.audio.io.load_audio(path, sample_rate={SAMPLE_RATE}))"
            )
        audio = batch["audio_bs"]
        if audio.ndim != 2 or audio.shape[1] != WINDOW_SAMPLES:
            raise ValueError(
                f"NMP expects 'audio_bs' of shape [batch, {WINDOW_SAMPLES}] (2 s windows at "
                f"{SAMPLE_RATE} Hz, see amt_jax.models.nmp.window_audio), got {audio.shape}"
            )
        return audio

    def loss(self, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Sum of per-head BCE; the onset head is class balanced (paper §3)."""
        logits = self(self._audio(batch))
        targets = {"contour": "contour_btf", "note": "note_btp", "onset": "onset_btp"}
        metrics = {}
        for head, key in targets.items():
            if key not in batch:
                raise ValueError(f"NMP loss needs target {key!r}; got keys {sorted(batch)}")
            if batch[key].shape != logits[head].shape:
                raise ValueError(
                    f"target {key!r} has shape {batch[key].shape}, the {head} head gives "
                    f"{logits[head].shape}"
                )
        smoothing = self.config.label_smoothing
        metrics["contour_loss"] = bce_loss(logits["contour"], batch["contour_btf"], smoothing)
        metrics["note_loss"] = bce_loss(logits["note"], batch["note_btp"], smoothing)
        if self.config.positive_onset_weight is None:
            metrics["onset_loss"] = bce_loss(logits["onset"], batch["onset_btp"], smoothing)
        else:
            metrics["onset_loss"] = class_balanced_bce_loss(
                logits["onset"], batch["onset_btp"], self.config.positive_onset_weight, smoothing
            )
        total = metrics["contour_loss"] + metrics["note_loss"] + metrics["onset_loss"]
        metrics["loss"] = total
        return total, metrics

    def predict(self, batch: Batch) -> dict[str, jax.Array]:
        """Posteriors ``note`` / ``onset`` [b, 172, 88] and ``contour`` [b, 172, 264]."""
        logits = self(self._audio(batch), use_running_average=True)
        return {name: jax.nn.sigmoid(value) for name, value in logits.items()}

    def segment(self, audio_s: np.ndarray) -> Segments:
        """Basic Pitch's windows: 43844 samples every 36164, the first starting 3840 samples
        before the audio (basic-pitch prepends half an overlap of zeros)."""
        starts = np.arange(num_windows(len(audio_s)), dtype=np.int64) * bp.WINDOW_HOP_SAMPLES
        starts -= bp.OVERLAP_SAMPLES // 2
        return Segments(starts, WINDOW_SAMPLES, starts / SAMPLE_RATE)

    def stitch(self, outputs: Mapping[str, np.ndarray], *, num_samples: int) -> dict[str, Any]:
        """Per-window posteriors -> [frames, bins] per head, exactly as basic-pitch 0.4.0."""
        return unwrap_outputs(outputs, num_samples)

    def outputs_to_notes(
        self,
        outputs: Mapping[str, np.ndarray],
        *,
        num_samples: int,
        start_times: np.ndarray,
        **options: Any,
    ) -> tuple[Any, dict[str, float]]:
        """Per-window posteriors of one track -> (NoteSequence, stats) by Basic Pitch's
        note creation (``options``: :attr:`decode_option_defaults`)."""
        del start_times  # the windows are Basic Pitch's fixed grid
        stitched = self.stitch(outputs, num_samples=num_samples)
        sequence, events = postprocess.basic_pitch_outputs_to_sequence(stitched, **options)
        return sequence, {"note_events": float(len(events))}

    def project_constraints(self) -> None:
        """Re-apply the UnitNorm kernel constraint in place (call after each update)."""
        params = nnx.state(self, nnx.Param)
        nnx.update(self, project_unit_norm(params, self.config.unit_norm_epsilon))


# --- losses ---------------------------------------------------------------------------------


def _smooth(labels: jax.Array, smoothing: float) -> jax.Array:
    return labels * (1.0 - smoothing) + 0.5 * smoothing if smoothing else labels


def bce_loss(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Mean binary cross-entropy from logits (labels squeezed towards 0.5 by smoothing)."""
    labels = _smooth(labels.astype(jnp.float32), label_smoothing)
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), labels))


def class_balanced_bce_loss(
    logits: jax.Array, labels: jax.Array, positive_weight: float, label_smoothing: float = 0.0
) -> jax.Array:
    """``(1 - w) · mean BCE over labels == 0 + w · mean BCE over labels != 0``.

    The split uses the raw labels (as basic-pitch); an empty group contributes 0.
    """
    labels = labels.astype(jnp.float32)
    per_cell = optax.sigmoid_binary_cross_entropy(
        logits.astype(jnp.float32), _smooth(labels, label_smoothing)
    )
    negative = labels == 0
    n_negative = jnp.sum(negative)
    n_positive = labels.size - n_negative
    negative_mean = jnp.sum(jnp.where(negative, per_cell, 0.0)) / jnp.maximum(n_negative, 1)
    positive_mean = jnp.sum(jnp.where(negative, 0.0, per_cell)) / jnp.maximum(n_positive, 1)
    return (1.0 - positive_weight) * negative_mean + positive_weight * positive_mean


# --- UnitNorm constraint --------------------------------------------------------------------


def project_unit_norm(params: Any, epsilon: float = 1e-7) -> Any:
    """Pure: every conv kernel (rank-4 ``kernel`` leaf) divided by its per-filter L2 norm.

    Keras' ``UnitNorm(axis=[0, 1, 2])``: ``w / (epsilon + ||w||)`` over (time, freq, in).
    Works on an ``nnx.State`` of parameters or any pytree whose conv kernels are named
    ``kernel``.
    """

    def project(path, leaf):
        # The last dict key names the variable (nnx Variables add a trailing ``.value``).
        keys = [entry.key for entry in path if isinstance(entry, jax.tree_util.DictKey)]
        if not keys or keys[-1] != "kernel" or jnp.ndim(leaf) != 4:
            return leaf
        norm = jnp.sqrt(jnp.sum(jnp.square(leaf), axis=(0, 1, 2), keepdims=True))
        return leaf / (epsilon + norm)

    return jax.tree_util.tree_map_with_path(project, params)


__all__ = [
    "NMP",
    "NMPConfig",
    "NMP_CONFIG",
    "NMP_TINY",
    "CONV_IMPLS",
    "bce_loss",
    "class_balanced_bce_loss",
    "conv_same",
    "harmonic_conv",
    "num_output_frames",
    "num_windows",
    "project_unit_norm",
    "resolve_conv_impl",
    "single_output_conv",
    "strided_im2col_conv",
    "tf_same_padding",
    "toeplitz_conv",
    "unwrap_outputs",
    "window_audio",
]

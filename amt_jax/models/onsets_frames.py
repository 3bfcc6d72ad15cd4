"""Onsets and Frames, MAESTRO-paper version (Hawthorne et al., ICLR 2019).

16 kHz audio → 229-bin HTK log-mel (hop 512, 31.25 fps) → five heads, each with its own
"Kelz" acoustic stack (conv 48 → conv 48 → pool f/2 → conv 96 → pool f/2 → dense 768):

* onset:    stack → BiLSTM 256/direction → dense 88 (sigmoid)
* offset:   stack → BiLSTM 256/direction → dense 88 (sigmoid)
* velocity: stack → dense 88 (linear)
* frame:    stack → dense 88 (sigmoid "activation"), then
            BiLSTM 256/direction over [stop_grad(onset), activation, stop_grad(offset)]
            → dense 88 (sigmoid)

Convs have no bias (BatchNorm with beta only follows, slim's default), BN eps 1e-3 and
decay 0.999 (slim defaults). Dropout after conv1/conv2 drops 75 % as in the paper commit
(slim's *keep* probability 0.25; magenta later changed it to keep 0.75), 50 % after the
dense layer. LSTMs use a single bias per gate and no forget-gate offset (cuDNN-compatible
semantics). 22,600,568 trainable parameters at the published sizes (reference §1.8).

Mixed precision (``OnsetsFramesConfig.dtype = 'bfloat16'``) follows the t5x policy MT3
uses: parameters, BatchNorm statistics and optimizer state stay float32; convolutions, the
dense layers of the conv stacks and the LSTM matmuls run in bfloat16; the log-mel front
end, the LSTM cell state, the output layers (logits), sigmoids and losses stay float32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from amt_jax.audio.mel import ONSETS_FRAMES_MEL, MelConfig, log_mel
from amt_jax.models import platform
from amt_jax.models.base import Batch, Segments, TranscriptionModel, static_sample_rate
from amt_jax.models.layers import axis_metadata
from amt_jax.notes import onsets_frames as postprocess
from amt_jax.partitioning.axes import constrain

_VARIANCE_SCALING = jax.nn.initializers.variance_scaling(2.0, "fan_avg", "uniform")


@dataclasses.dataclass(frozen=True)
class OnsetsFramesConfig:
    """O&F hyper-parameters; defaults are the MAESTRO-paper model (magenta @541240ea)."""

    mel: MelConfig = ONSETS_FRAMES_MEL
    n_pitches: int = 88
    conv_filters: tuple[int, int, int] = (48, 48, 96)
    conv_pool: tuple[bool, bool, bool] = (False, True, True)
    conv_dropout: tuple[float, float, float] = (0.0, 0.75, 0.75)  # drop rates
    fc_size: int = 768
    fc_dropout: float = 0.5
    lstm_units: int = 256  # onset and offset BiLSTMs, per direction
    combined_lstm_units: int = 256  # frame BiLSTM, per direction
    batch_norm_epsilon: float = 1e-3
    batch_norm_momentum: float = 0.999
    stop_onset_gradient: bool = True
    stop_offset_gradient: bool = True
    velocity_loss_weight: float = 1.0
    #: initial output bias of the onset, offset, frame and activation heads as a prior
    #: probability (bias = logit(p), the rare-class prior of Lin et al. 2017). None keeps
    #: magenta's zero bias. Without it a short run learns the heads' class prior (onsets are
    #: ~0.1 % of cells) by saturating the BiLSTMs, which then stop learning: the e2e piece
    #: stays at onset posteriors < 0.04 after 300 steps with None and reaches 0.85 with 0.01.
    output_bias_prior: float | None = None
    #: activation / matmul dtype: "float32", "bfloat16", or "auto" (float32 when built for
    #: CPU, bfloat16 on accelerators); parameters stay float32
    dtype: str = "auto"
    #: training / evaluation segment length (MAESTRO chunks are 5-20 s); a whole number of
    #: hops (20 s = 625 hops) so consecutive segments tile the frame grid
    segment_seconds: float = 20.0
    #: inference windows: ``chunk_frames`` output frames kept per window, with
    #: ``context_frames`` of real audio on each side, so the BiLSTMs see across chunk edges
    chunk_frames: int = 512
    context_frames: int = 32
    #: onset-gated decoding thresholds (magenta's defaults)
    onset_threshold: float = 0.5
    frame_threshold: float = 0.5

    def __post_init__(self):
        if self.dtype not in platform.DTYPES:
            raise ValueError(f"dtype must be one of {platform.DTYPES}, got {self.dtype!r}")
        if self.output_bias_prior is not None and not 0 < self.output_bias_prior < 1:
            raise ValueError(
                f"output_bias_prior must be a probability in (0, 1), got {self.output_bias_prior}"
            )

    @property
    def frames_per_second(self) -> float:
        return self.mel.sample_rate / self.mel.hop_length

    def num_frames(self, num_samples: int) -> int:
        """Spectrogram frames the model outputs for ``num_samples`` of audio."""
        return self.mel.num_frames(num_samples)


#: the published MAESTRO model
ONSETS_FRAMES_CONFIG = OnsetsFramesConfig()
#: same structure, tiny widths, 1.024 s (32-hop) segments: CPU tests and demos
ONSETS_FRAMES_TINY = OnsetsFramesConfig(
    conv_filters=(4, 4, 8),
    fc_size=16,
    lstm_units=8,
    combined_lstm_units=8,
    segment_seconds=1.024,
)


class ConvStack(nnx.Module):
    """The per-head acoustic model: 3 conv/BN/ReLU blocks, pooling, dense + ReLU."""

    def __init__(self, config: OnsetsFramesConfig, *, rngs: nnx.Rngs):
        self.dtype = jnp.dtype(platform.resolve_dtype(config.dtype))
        self.convs = nnx.List()
        self.norms = nnx.List()
        self.dropouts = nnx.List()
        in_features = 1
        freq = config.mel.n_mels
        for filters, pool, rate in zip(config.conv_filters, config.conv_pool, config.conv_dropout):
            self.convs.append(
                nnx.Conv(
                    in_features,
                    filters,
                    (3, 3),
                    padding="SAME",
                    use_bias=False,
                    kernel_init=_VARIANCE_SCALING,
                    kernel_metadata=axis_metadata(
                        "kernel_time", "kernel_freq", "conv_in", "conv_out"
                    ),
                    dtype=self.dtype,
                    rngs=rngs,
                )
            )
            self.norms.append(
                nnx.BatchNorm(
                    filters,
                    use_scale=False,
                    epsilon=config.batch_norm_epsilon,
                    momentum=config.batch_norm_momentum,
                    bias_metadata=axis_metadata("channels"),
                    dtype=self.dtype,  # statistics are reduced in float32 whatever this is
                    rngs=rngs,
                )
            )
            self.dropouts.append(nnx.Dropout(rate, rngs=rngs))
            in_features = filters
            if pool:
                freq //= 2
        self.pool = tuple(config.conv_pool)
        self.dense = nnx.Linear(
            freq * in_features,
            config.fc_size,
            kernel_init=_VARIANCE_SCALING,
            kernel_metadata=axis_metadata("embed", "mlp"),
            bias_metadata=axis_metadata("mlp"),
            dtype=self.dtype,
            rngs=rngs,
        )
        self.dense_dropout = nnx.Dropout(config.fc_dropout, rngs=rngs)

    def __call__(self, mel_btf: jax.Array, *, deterministic: bool | None = None) -> jax.Array:
        x = mel_btf[..., None].astype(self.dtype)
        for conv, norm, dropout, pool in zip(self.convs, self.norms, self.dropouts, self.pool):
            x = jax.nn.relu(norm(conv(x), use_running_average=deterministic))
            if pool:
                x = max_pool_frequency_pairs(x)
            if dropout.rate > 0:
                x = dropout(x, deterministic=deterministic)
        x = x.reshape(x.shape[:2] + (-1,))
        x = jax.nn.relu(self.dense(x))
        x = self.dense_dropout(x, deterministic=deterministic)
        return constrain(x, ("batch", "time", "mlp"))


def max_pool_frequency_pairs(x_btfc: jax.Array) -> jax.Array:
    """Max over adjacent frequency pairs, an odd last bin dropped (magenta's [1, 2] VALID
    max-pool), as a reshape and a max: its gradient is one select, where a reduce-window
    pool's backward is a select-and-scatter that XLA expands into full-size index arrays
    (~10 % of the O&F train step on CPU)."""
    batch, time, freq, channels = x_btfc.shape
    pairs = freq // 2
    x_btfc = x_btfc[:, :, : 2 * pairs]
    return jnp.max(x_btfc.reshape(batch, time, pairs, 2, channels), axis=3)


class LSTM(nnx.Module):
    """One LSTM direction with fused gates (i, f, g, o), one bias, no forget offset.

    The input projection of all time steps is one matmul outside the scan; only the
    recurrent [hidden, 4·hidden] product runs step by step. Both matmuls run in ``dtype``;
    the gate nonlinearities and the cell state stay float32 (a bfloat16 cell state would
    lose precision over hundreds of steps). The output follows ``dtype``.
    """

    def __init__(
        self,
        in_features: int,
        hidden: int,
        *,
        input_axis: str,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
    ):
        self.hidden = hidden
        self.dtype = jnp.dtype(dtype)
        init = jax.nn.initializers.glorot_uniform()
        self.input_kernel = nnx.Param(
            init(rngs.params(), (in_features, 4 * hidden)),
            **axis_metadata(input_axis, "lstm_gates"),
        )
        recurrent = jax.nn.initializers.orthogonal()
        self.recurrent_kernel = nnx.Param(
            recurrent(rngs.params(), (hidden, 4 * hidden)), **axis_metadata("hidden", "lstm_gates")
        )
        self.bias = nnx.Param(jnp.zeros((4 * hidden,)), **axis_metadata("lstm_gates"))

    def __call__(self, x_btd: jax.Array, *, reverse: bool = False) -> jax.Array:
        dtype = self.dtype
        input_kernel = self.input_kernel[...].astype(dtype)
        gates_btg = jnp.einsum("btd,dg->btg", x_btd.astype(dtype), input_kernel)
        gates_btg = gates_btg.astype(jnp.float32) + self.bias[...]
        recurrent = self.recurrent_kernel[...].astype(dtype)
        batch = x_btd.shape[0]
        carry = (jnp.zeros((batch, self.hidden), jnp.float32),) * 2

        def step(carry, gates_bg):
            h, c = carry
            gates_bg = gates_bg + (h.astype(dtype) @ recurrent).astype(jnp.float32)
            i, f, g, o = jnp.split(gates_bg, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        _, h_tbh = jax.lax.scan(step, carry, jnp.swapaxes(gates_btg, 0, 1), reverse=reverse)
        return jnp.swapaxes(h_tbh, 0, 1).astype(dtype)


class BiLSTM(nnx.Module):
    """Forward and backward LSTMs over time, outputs concatenated: [b, t, 2·hidden]."""

    def __init__(
        self,
        in_features: int,
        hidden: int,
        *,
        input_axis: str,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
    ):
        self.forward = LSTM(in_features, hidden, input_axis=input_axis, rngs=rngs, dtype=dtype)
        self.backward = LSTM(in_features, hidden, input_axis=input_axis, rngs=rngs, dtype=dtype)

    def __call__(self, x_btd: jax.Array) -> jax.Array:
        return jnp.concatenate([self.forward(x_btd), self.backward(x_btd, reverse=True)], -1)


def _output_layer(
    in_features: int,
    n_pitches: int,
    in_axis: str,
    rngs: nnx.Rngs,
    prior: float | None = None,
) -> nnx.Linear:
    """A float32 output projection (its inputs are cast up): logits stay float32 as in t5x.

    ``prior`` sets the initial bias to logit(prior); None keeps it at zero."""
    bias = 0.0 if prior is None else float(np.log(prior / (1.0 - prior)))
    return nnx.Linear(
        in_features,
        n_pitches,
        kernel_init=_VARIANCE_SCALING,
        bias_init=jax.nn.initializers.constant(bias),
        kernel_metadata=axis_metadata(in_axis, "pitch"),
        bias_metadata=axis_metadata("pitch"),
        dtype=jnp.float32,
        rngs=rngs,
    )


class OnsetsFrames(TranscriptionModel):
    """Onsets and Frames; log-mel front end inside the call.

    Batch: ``audio_bs`` [batch, samples] float32 at 16 kHz; for training the rolls
    ``onset_btp``, ``offset_btp``, ``frame_btp`` and ``velocity_btp`` ([b, frames, 88],
    velocity = note velocity / the performance's max velocity, on onset frames). Rolls may
    have one frame fewer than the centred spectrogram (magenta truncates the spectrogram
    to the label length; so do we).
    """

    family = "onsets_frames"
    decode_option_defaults = {"onset_threshold": None, "frame_threshold": None}
    sample_rate = 16000

    def __init__(self, config: OnsetsFramesConfig = ONSETS_FRAMES_CONFIG, *, rngs: nnx.Rngs):
        self.config = config
        self.segment_samples = int(round(config.segment_seconds * config.mel.sample_rate))
        fc, pitches = config.fc_size, config.n_pitches
        dtype = jnp.dtype(platform.resolve_dtype(config.dtype))
        prior = config.output_bias_prior
        self.onset_stack = ConvStack(config, rngs=rngs)
        self.onset_lstm = BiLSTM(fc, config.lstm_units, input_axis="mlp", rngs=rngs, dtype=dtype)
        self.onset_out = _output_layer(2 * config.lstm_units, pitches, "hidden", rngs, prior)
        self.offset_stack = ConvStack(config, rngs=rngs)
        self.offset_lstm = BiLSTM(fc, config.lstm_units, input_axis="mlp", rngs=rngs, dtype=dtype)
        self.offset_out = _output_layer(2 * config.lstm_units, pitches, "hidden", rngs, prior)
        self.velocity_stack = ConvStack(config, rngs=rngs)
        self.velocity_out = _output_layer(fc, pitches, "mlp", rngs)
        self.activation_stack = ConvStack(config, rngs=rngs)
        self.activation_out = _output_layer(fc, pitches, "mlp", rngs, prior)
        self.combined_lstm = BiLSTM(
            3 * pitches, config.combined_lstm_units, input_axis="pitch", rngs=rngs, dtype=dtype
        )
        self.frame_out = _output_layer(
            2 * config.combined_lstm_units, pitches, "hidden", rngs, prior
        )

    @classmethod
    def from_config(
        cls, config: OnsetsFramesConfig | None = None, *, rngs: nnx.Rngs
    ) -> OnsetsFrames:
        return cls(config or ONSETS_FRAMES_CONFIG, rngs=rngs)

    def __call__(
        self, audio_bs: jax.Array, *, deterministic: bool | None = None
    ) -> dict[str, jax.Array]:
        """Raw 16 kHz audio → logits ``onset``/``offset``/``frame``/``activation`` and
        linear ``velocity``, each [batch, frames, 88] float32 (whatever ``config.dtype``)."""
        mel_btf = constrain(log_mel(audio_bs, self.config.mel), ("batch", "time", "mel"))
        onset_logits = self.onset_out(
            self.onset_lstm(self.onset_stack(mel_btf, deterministic=deterministic))
        )
        offset_logits = self.offset_out(
            self.offset_lstm(self.offset_stack(mel_btf, deterministic=deterministic))
        )
        velocity = self.velocity_out(self.velocity_stack(mel_btf, deterministic=deterministic))
        activation_logits = self.activation_out(
            self.activation_stack(mel_btf, deterministic=deterministic)
        )
        onset_probs = jax.nn.sigmoid(onset_logits)
        offset_probs = jax.nn.sigmoid(offset_logits)
        if self.config.stop_onset_gradient:
            onset_probs = jax.lax.stop_gradient(onset_probs)
        if self.config.stop_offset_gradient:
            offset_probs = jax.lax.stop_gradient(offset_probs)
        combined = jnp.concatenate(
            [onset_probs, jax.nn.sigmoid(activation_logits), offset_probs], axis=-1
        )
        frame_logits = self.frame_out(self.combined_lstm(combined))
        return {
            "onset": onset_logits,
            "offset": offset_logits,
            "frame": frame_logits,
            "activation": activation_logits,
            "velocity": velocity,
        }

    # --- protocol --------------------------------------------------------------------------

    def _audio(self, batch: Batch) -> jax.Array:
        if "audio_bs" not in batch:
            raise ValueError(f"Onsets and Frames batches need 'audio_bs'; got {sorted(batch)}")
        rate = static_sample_rate(batch)
        if rate is not None and rate != self.sample_rate:
            raise ValueError(
                f"Onsets and Frames expects audio at {self.sample_rate} Hz, got {rate} Hz; "
                "resample first (amt_jax.audio.io.load_audio(path, sample_rate=16000))"
            )
        audio = batch["audio_bs"]
        if audio.ndim != 2 or audio.shape[1] < self.config.mel.hop_length:
            raise ValueError(
                "Onsets and Frames expects 'audio_bs' of shape [batch, samples] with at least "
                f"{self.config.mel.hop_length} samples, got {audio.shape}"
            )
        return audio

    def loss(self, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Mean BCE for onset, offset and frame + onset-masked velocity MSE (reference §1.4)."""
        audio = self._audio(batch)
        model_frames = self.config.num_frames(audio.shape[1])
        targets = {}
        for key in ("onset_btp", "offset_btp", "frame_btp", "velocity_btp"):
            if key not in batch:
                raise ValueError(f"Onsets and Frames loss needs {key!r}; got {sorted(batch)}")
            target = batch[key]
            if (
                target.ndim != 3
                or target.shape[0] != audio.shape[0]
                or target.shape[2] != self.config.n_pitches
                or not 0 <= model_frames - target.shape[1] <= 1
            ):
                raise ValueError(
                    f"target {key!r} has shape {target.shape}; for audio {audio.shape} it must "
                    f"be [{audio.shape[0]}, {model_frames} (or one fewer), "
                    f"{self.config.n_pitches}]"
                )
            targets[key] = target.astype(jnp.float32)
        frames = targets["frame_btp"].shape[1]
        outputs = {name: value[:, :frames] for name, value in self(audio).items()}
        metrics = {
            "onset_loss": _mean_bce(outputs["onset"], targets["onset_btp"]),
            "offset_loss": _mean_bce(outputs["offset"], targets["offset_btp"]),
            "frame_loss": _mean_bce(outputs["frame"], targets["frame_btp"]),
            "velocity_loss": velocity_loss(
                outputs["velocity"], targets["velocity_btp"], targets["onset_btp"]
            ),
        }
        total = (
            metrics["onset_loss"]
            + metrics["offset_loss"]
            + metrics["frame_loss"]
            + self.config.velocity_loss_weight * metrics["velocity_loss"]
        )
        metrics["loss"] = total
        return total, metrics

    def predict(self, batch: Batch) -> dict[str, jax.Array]:
        """``onset``/``offset``/``frame`` probabilities and ``velocity`` values [b, t, 88]."""
        outputs = self(self._audio(batch), deterministic=True)
        return {
            "onset": jax.nn.sigmoid(outputs["onset"]),
            "offset": jax.nn.sigmoid(outputs["offset"]),
            "frame": jax.nn.sigmoid(outputs["frame"]),
            "velocity": outputs["velocity"],
        }

    def segment(self, audio_s: np.ndarray) -> Segments:
        """Windows of ``chunk_frames + 2 * context_frames`` hops, ``chunk_frames`` apart,
        each starting ``context_frames`` hops before the frames it keeps."""
        hop = self.config.mel.hop_length
        core, context = self.config.chunk_frames, self.config.context_frames
        count = max(1, -(-self.config.num_frames(len(audio_s)) // core))
        starts = (np.arange(count, dtype=np.int64) * core - context) * hop
        return Segments(starts, (core + 2 * context) * hop, starts / self.sample_rate)

    def stitch(self, outputs: Mapping[str, np.ndarray], *, num_samples: int) -> dict[str, Any]:
        """Each window's core frames, concatenated and cut to the track's frame count."""
        core, context = self.config.chunk_frames, self.config.context_frames
        total = self.config.num_frames(num_samples)
        stitched = {}
        for name, value in outputs.items():
            value = np.asarray(value)
            if value.ndim != 3:
                raise ValueError(f"{name!r} must be [windows, frames, pitches], got {value.shape}")
            inner = value[:, context : context + core]
            stitched[name] = inner.reshape(-1, value.shape[-1])[:total]
        return stitched

    def outputs_to_notes(
        self,
        outputs: Mapping[str, np.ndarray],
        *,
        num_samples: int,
        start_times: np.ndarray,
        onset_threshold: float | None = None,
        frame_threshold: float | None = None,
    ) -> tuple[Any, dict[str, float]]:
        """Per-window posteriors of one track -> (NoteSequence, stats) by onset-gated
        decoding (thresholds default to the config's)."""
        del start_times  # the windows are a fixed grid (see :meth:`segment`)
        stitched = self.stitch(outputs, num_samples=num_samples)
        sequence = postprocess.onsets_frames_to_sequence(
            stitched["frame"],
            stitched["onset"],
            stitched.get("velocity"),
            frames_per_second=self.config.frames_per_second,
            onset_threshold=self.config.onset_threshold
            if onset_threshold is None
            else onset_threshold,
            frame_threshold=self.config.frame_threshold
            if frame_threshold is None
            else frame_threshold,
        )
        return sequence, {}


def _mean_bce(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean binary log loss over all cells, from logits (stable form of magenta's log_loss)."""
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), labels))


def velocity_loss(
    velocity_btp: jax.Array, velocity_labels_btp: jax.Array, onset_labels_btp: jax.Array
) -> jax.Array:
    """Per frame Σ_pitch onset · (label − prediction)², then the mean over frames.

    Only onset cells carry a velocity target, so everything else is masked out; the sum
    over the 88 pitches (not a mean) follows magenta.
    """
    squared = onset_labels_btp * jnp.square(velocity_labels_btp - velocity_btp)
    return jnp.mean(jnp.sum(squared, axis=-1))


__all__ = [
    "BiLSTM",
    "ConvStack",
    "LSTM",
    "ONSETS_FRAMES_CONFIG",
    "ONSETS_FRAMES_TINY",
    "OnsetsFrames",
    "OnsetsFramesConfig",
    "velocity_loss",
]

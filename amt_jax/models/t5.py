"""MT3: a T5.1.1 encoder-decoder over log-mel frames, in Flax NNX.

Shapes and numerics follow MT3's released network (``gin/model.gin``): 8+8 layers,
d_model 512, 6 heads x 64, gated-GELU MLP 1024, RMSNorm pre-norm (eps 1e-6), no biases,
no run-time attention scaling, dropout 0.1, fixed sinusoidal absolute positions on both
sides, a bias-free projection of the 512 log-mel bins, untied float32 logits. Parameter
names mirror the t5x tree (``encoder/layers/0/attention/query/kernel``...) so released
checkpoints can be converted by reshaping the flattened (512, 384) kernels.

The log-mel front end runs inside the model call on raw 16 kHz audio (``audio_bs``,
32768 samples = 256 frames = 2.048 s). A precomputed ``inputs_btf`` can be fed instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from amt_jax.models import decoding, layers, platform
from amt_jax.models.base import Batch, Segments, TranscriptionModel, consecutive_segments
from amt_jax.models.losses import sequence_loss_and_metrics
from amt_jax.partitioning.axes import constrain
from amt_jax.vocab import layouts, note_events

SAMPLE_RATE = 16_000
SEGMENT_SAMPLES = 32_768
HOP_LENGTH = 128

#: logical axes of a decode cache entry: [batch, heads, slots, kv] (heads-major, so a
#: step's attention reads it in place)
CACHE_AXES = ("batch", "heads", "length", "kv")


@dataclasses.dataclass(frozen=True)
class MT3Config:
    """Hyper-parameters of the MT3 network; the defaults are MT3's T5.1.1-small.

    vocab_size: embedding / logit rows (MT3 rounds the vocabulary up to a multiple of
      128: 1536 for the ``mt3`` vocabulary).
    vocabulary: the token layout the model is trained on and decoded with (part of the
      config, so the workdir's model record carries it to evaluation and transcription).
    dtype: activation dtype: ``"float32"``, ``"bfloat16"`` or ``"auto"`` (float32 when the
      model is built for CPU, bfloat16 on accelerators; resolved when the model is built,
      :func:`amt_jax.models.platform.resolve_dtype`); parameters, norms, softmax and logits
      stay float32.
    param_dtype: parameter storage dtype. ``"bfloat16"`` with ``dtype="float32"`` is the
      bf16-weights inference form (``Transcriber(weights_dtype="bfloat16")``): every
      dense layer multiplies in bf16 and accumulates in float32; activations, norms,
      attention and the decode cache stay float32.
    inputs_length / targets_length: frames per segment and maximum target (decode) length.
    max_position: rows of the fixed sinusoidal position table (shared by both sides).
    loss_normalization: ``"sum"`` (t5x / MT3) or ``"mean"`` over non-padding tokens.
    kernels: ``"reference"`` (plain T5), ``"cpu"`` (XLA:CPU's forms of the same math,
      :mod:`amt_jax.models.cpu_kernels`), ``"tpu"`` (attention through the Pallas flash
      kernel, :mod:`amt_jax.models.tpu_kernels`) or ``"auto"``: the form of the platform the
      step is compiled for, ``"reference"`` on GPU (:mod:`amt_jax.models.platform`).
    """

    vocab_size: int = 1536
    vocabulary: layouts.VocabularyConfig = layouts.VocabularyConfig.named("mt3")
    emb_dim: int = 512
    num_heads: int = 6
    head_dim: int = 64
    num_encoder_layers: int = 8
    num_decoder_layers: int = 8
    mlp_dim: int = 1024
    dropout_rate: float = 0.1
    input_depth: int = 512
    inputs_length: int = 256
    targets_length: int = 1024
    max_position: int = 2048
    dtype: str = "auto"
    param_dtype: str = "float32"
    layer_norm_epsilon: float = 1e-6
    z_loss: float = 1e-4
    loss_normalization: str = "sum"
    pad_id: int = 0
    eos_id: int = 1
    kernels: str = "auto"

    def __post_init__(self):
        if self.targets_length > self.max_position or self.inputs_length > self.max_position:
            raise ValueError(
                f"inputs_length {self.inputs_length} / targets_length {self.targets_length} "
                f"exceed the position table ({self.max_position} rows)"
            )
        layers.check_kernels(self.kernels)
        if self.dtype not in platform.DTYPES:
            raise ValueError(f"dtype must be one of {platform.DTYPES}, got {self.dtype!r}")
        if self.param_dtype not in ("float32", "bfloat16"):
            raise ValueError(
                f"param_dtype must be 'float32' or 'bfloat16', got {self.param_dtype!r}"
            )

    @classmethod
    def tiny(cls, **overrides: Any) -> MT3Config:
        """A few-hundred-k-parameter config for tests and CPU demos (same input/vocab)."""
        values: dict[str, Any] = dict(
            emb_dim=32,
            num_heads=2,
            head_dim=16,
            num_encoder_layers=2,
            num_decoder_layers=2,
            mlp_dim=64,
        )
        values.update(overrides)
        return cls(**values)

    @classmethod
    def for_vocabulary(cls, vocabulary: Any = "mt3", **overrides: Any) -> MT3Config:
        """Config with as many embedding / logit rows as a vocabulary layout needs.

        vocabulary: a layout name (``"mt3"``, ``"seed"``, ``"ismir2021"``) or an
          ``amt_jax.vocab.vocabularies.VocabularyConfig``.
        """
        if isinstance(vocabulary, str):
            vocabulary = layouts.VocabularyConfig.named(vocabulary)
        values = {"vocab_size": vocabulary.num_embeddings, "vocabulary": vocabulary}
        return cls(**{**values, **overrides})


#: MT3's published network (``mt3`` vocabulary, 1536 embedding rows)
T5_SMALL = MT3Config()


def _dtypes(config: MT3Config) -> dict[str, jnp.dtype]:
    return {
        "dtype": jnp.dtype(platform.resolve_dtype(config.dtype)),
        "param_dtype": jnp.dtype(config.param_dtype),
    }


def _residual_dropout(config: MT3Config, rngs: nnx.Rngs) -> layers.Dropout:
    """Dropout with one mask for every position of a sequence, as MT3 / t5x drop residual
    branches and embeddings (``broadcast_dims=(-2,)`` on [batch, length, embed])."""
    return layers.Dropout(
        config.dropout_rate, broadcast_dims=(-2,), kernels=config.kernels, rngs=rngs
    )


def _norm(config: MT3Config, rngs: nnx.Rngs) -> layers.RMSNorm:
    """T5's pre-norm (and final norm) of the d_model features."""
    return layers.RMSNorm(
        config.emb_dim, epsilon=config.layer_norm_epsilon, rngs=rngs, **_dtypes(config)
    )


def _attention(
    config: MT3Config, rngs: nnx.Rngs, *, q_axis: str, kv_axis: str
) -> layers.MultiHeadAttention:
    """Self- or cross-attention; the axes name the query and key sequences (time or length)."""
    return layers.MultiHeadAttention(
        config.emb_dim,
        config.num_heads,
        config.head_dim,
        dropout_rate=config.dropout_rate,
        q_axis=q_axis,
        kv_axis=kv_axis,
        kernels=config.kernels,
        rngs=rngs,
        **_dtypes(config),
    )


def _mlp(config: MT3Config, rngs: nnx.Rngs, *, seq_axis: str) -> layers.GatedGeluMlp:
    return layers.GatedGeluMlp(
        config.emb_dim,
        config.mlp_dim,
        dropout_rate=config.dropout_rate,
        seq_axis=seq_axis,
        kernels=config.kernels,
        rngs=rngs,
        **_dtypes(config),
    )


def _positions(config: MT3Config, length: int) -> jax.Array:
    table = layers.sinusoidal_positions(config.max_position, config.emb_dim)
    return jnp.asarray(table[:length])


class EncoderLayer(nnx.Module):
    """Pre-norm self-attention and gated-GELU MLP blocks with residual dropout."""

    def __init__(self, config: MT3Config, *, rngs: nnx.Rngs):
        self.pre_attention_layer_norm = _norm(config, rngs)
        self.attention = _attention(config, rngs, q_axis="time", kv_axis="time")
        self.pre_mlp_layer_norm = _norm(config, rngs)
        self.mlp = _mlp(config, rngs, seq_axis="time")
        self.dropout = _residual_dropout(config, rngs)

    def __call__(self, x_btd: jax.Array, *, deterministic: bool | None = None) -> jax.Array:
        normed = self.pre_attention_layer_norm(x_btd)
        # MT3 does not mask the encoder: padded frames are 0.0 log-mel and are attended to
        attended = self.attention(normed, normed, None, deterministic=deterministic)
        x_btd = x_btd + self.dropout(attended, deterministic=deterministic)
        x_btd = constrain(x_btd, ("batch", "time", "embed"))
        hidden = self.mlp(self.pre_mlp_layer_norm(x_btd), deterministic=deterministic)
        x_btd = x_btd + self.dropout(hidden, deterministic=deterministic)
        return constrain(x_btd, ("batch", "time", "embed"))


class DecoderLayer(nnx.Module):
    """Pre-norm causal self-attention, cross-attention and MLP blocks."""

    def __init__(self, config: MT3Config, *, rngs: nnx.Rngs):
        self.pre_self_attention_layer_norm = _norm(config, rngs)
        self.self_attention = _attention(config, rngs, q_axis="length", kv_axis="length")
        self.pre_cross_attention_layer_norm = _norm(config, rngs)
        self.encoder_decoder_attention = _attention(config, rngs, q_axis="length", kv_axis="time")
        self.pre_mlp_layer_norm = _norm(config, rngs)
        self.mlp = _mlp(config, rngs, seq_axis="length")
        self.dropout = _residual_dropout(config, rngs)

    def _cross_and_mlp(
        self,
        x_bld: jax.Array,
        cross_key: jax.Array,
        cross_value: jax.Array,
        cross_mask: layers.AttentionMask | None,
        deterministic: bool | None,
    ) -> jax.Array:
        query = self.encoder_decoder_attention.project_query(
            self.pre_cross_attention_layer_norm(x_bld)
        )
        attended = self.encoder_decoder_attention.attend(
            query, cross_key, cross_value, cross_mask, deterministic=deterministic
        )
        x_bld = x_bld + self.dropout(attended, deterministic=deterministic)
        x_bld = constrain(x_bld, ("batch", "length", "embed"))
        hidden = self.mlp(self.pre_mlp_layer_norm(x_bld), deterministic=deterministic)
        x_bld = x_bld + self.dropout(hidden, deterministic=deterministic)
        return constrain(x_bld, ("batch", "length", "embed"))

    def __call__(
        self,
        x_bld: jax.Array,
        encoded_btd: jax.Array,
        self_mask: layers.AttentionMask,
        cross_mask: layers.AttentionMask | None,
        *,
        deterministic: bool | None = None,
    ) -> jax.Array:
        normed = self.pre_self_attention_layer_norm(x_bld)
        attended = self.self_attention(normed, normed, self_mask, deterministic=deterministic)
        x_bld = x_bld + self.dropout(attended, deterministic=deterministic)
        x_bld = constrain(x_bld, ("batch", "length", "embed"))
        cross_key, cross_value = self.encoder_decoder_attention.project_kv(encoded_btd)
        return self._cross_and_mlp(x_bld, cross_key, cross_value, cross_mask, deterministic)

    def decode_step(
        self,
        x_b1d: jax.Array,
        position: jax.Array,
        cache: tuple[jax.Array, jax.Array],
        cross_kv: tuple[jax.Array, jax.Array],
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """One position: write its self-attention key/value at slot ``position`` of the
        heads-major cache ([batch, heads, slots, kv]) and attend to slots <= it.

        ``position``: one for all rows (a scalar), or one per row ([batch]: rows decoding
        different segments at different steps, :func:`decoding.decode_slots`)."""
        key_bhtd, value_bhtd = cache
        attention = self.self_attention
        normed = self.pre_self_attention_layer_norm(x_b1d)
        query_b1hd = attention.project_query(normed)
        key_bh1d, value_bh1d = attention.project_kv_heads_major(normed)
        key_bh1d = key_bh1d.astype(key_bhtd.dtype)
        value_bh1d = value_bh1d.astype(value_bhtd.dtype)
        slots_t = jnp.arange(key_bhtd.shape[2])
        if jnp.ndim(position) == 0:
            start = (0, 0, position, 0)
            key_bhtd = jax.lax.dynamic_update_slice(key_bhtd, key_bh1d, start)
            value_bhtd = jax.lax.dynamic_update_slice(value_bhtd, value_bh1d, start)
            visible_b11t = (slots_t <= position)[None, None, None, :]
        else:
            rows_b = jnp.arange(key_bhtd.shape[0])
            key_bhtd = key_bhtd.at[rows_b, :, position].set(key_bh1d[:, :, 0], mode="drop")
            value_bhtd = value_bhtd.at[rows_b, :, position].set(value_bh1d[:, :, 0], mode="drop")
            visible_b11t = (slots_t[None, :] <= position[:, None])[:, None, None, :]
        key_bhtd = constrain(key_bhtd, CACHE_AXES)
        value_bhtd = constrain(value_bhtd, CACHE_AXES)
        x_b1d = x_b1d + attention.attend_cached(query_b1hd, key_bhtd, value_bhtd, visible_b11t)
        x_b1d = constrain(x_b1d, ("batch", "length", "embed"))
        cross = self.encoder_decoder_attention
        query_b1hd = cross.project_query(self.pre_cross_attention_layer_norm(x_b1d))
        x_b1d = x_b1d + cross.attend_cached(query_b1hd, *cross_kv, None)
        x_b1d = constrain(x_b1d, ("batch", "length", "embed"))
        x_b1d = x_b1d + self.mlp(self.pre_mlp_layer_norm(x_b1d), deterministic=True)
        return constrain(x_b1d, ("batch", "length", "embed")), (key_bhtd, value_bhtd)


class Encoder(nnx.Module):
    """Log-mel frames [batch, time, 512] -> encodings [batch, time, d_model]."""

    def __init__(self, config: MT3Config, *, rngs: nnx.Rngs):
        self.config = config
        dtypes = _dtypes(config)
        self.continuous_inputs_projection = layers.DenseGeneral(
            config.input_depth,
            config.emb_dim,
            axis_names=("mel", "embed"),
            kernel_init=layers.fan_in_init("truncated_normal", 1),  # lecun normal
            kernels=config.kernels,
            rngs=rngs,
            **dtypes,
        )
        self.layers = nnx.List(
            [EncoderLayer(config, rngs=rngs) for _ in range(config.num_encoder_layers)]
        )
        self.encoder_norm = _norm(config, rngs)
        self.dropout = _residual_dropout(config, rngs)
        # MT3 drops the final encodings element-wise (no shared mask); no RNG stream of
        # its own: it draws from ``dropout``'s, so the model state is one stream as before
        self.output_dropout = layers.Dropout(config.dropout_rate, kernels=config.kernels)

    def __call__(self, inputs_btf: jax.Array, *, deterministic: bool | None = None) -> jax.Array:
        inputs_btf = constrain(inputs_btf, ("batch", "time", "mel"))
        x_btd = self.continuous_inputs_projection(inputs_btf)
        x_btd = x_btd + _positions(self.config, inputs_btf.shape[1]).astype(x_btd.dtype)
        x_btd = self.dropout(x_btd, deterministic=deterministic)
        x_btd = constrain(x_btd, ("batch", "time", "embed"))
        for layer in self.layers:
            x_btd = layer(x_btd, deterministic=deterministic)
        x_btd = self.encoder_norm(x_btd)
        return self.output_dropout(x_btd, deterministic=deterministic, rngs=self.dropout.rngs)


class Decoder(nnx.Module):
    """Token ids + encodings -> float32 logits, with full-sequence and one-step paths."""

    def __init__(self, config: MT3Config, *, rngs: nnx.Rngs):
        self.config = config
        dtypes = _dtypes(config)
        self.token_embedder = layers.Embed(config.vocab_size, config.emb_dim, rngs=rngs, **dtypes)
        self.layers = nnx.List(
            [DecoderLayer(config, rngs=rngs) for _ in range(config.num_decoder_layers)]
        )
        self.decoder_norm = _norm(config, rngs)
        self.dropout = _residual_dropout(config, rngs)
        # untied output projection, computed in float32 whatever the activation dtype
        self.logits_dense = layers.DenseGeneral(
            config.emb_dim,
            config.vocab_size,
            axis_names=("embed", "vocab"),
            kernel_init=layers.fan_in_init("truncated_normal", 1),
            dtype=jnp.float32,
            param_dtype=dtypes["param_dtype"],
            kernels=config.kernels,
            rngs=rngs,
        )

    def _logits(self, x_bld: jax.Array, deterministic: bool | None) -> jax.Array:
        x_bld = self.dropout(self.decoder_norm(x_bld), deterministic=deterministic)
        return constrain(self.logits_dense(x_bld), ("batch", "length", "vocab"))

    def __call__(
        self,
        decoder_input_bl: jax.Array,
        encoded_btd: jax.Array,
        *,
        decoder_target_bl: jax.Array | None = None,
        deterministic: bool | None = None,
    ) -> jax.Array:
        """Teacher-forced logits [batch, length, vocab].

        The self-attention mask is causal; with ``decoder_target_bl`` it also excludes
        padding targets (t5x's ``make_decoder_mask``), and cross-attention is masked for
        padding queries. Encoder positions are never masked (MT3).
        """
        length = decoder_input_bl.shape[1]
        self_mask = layers.AttentionMask(causal=True)
        cross_mask = None
        if decoder_target_bl is not None:
            valid_bl = decoder_target_bl != self.config.pad_id
            self_mask = layers.AttentionMask(
                causal=True, query_valid_bq=valid_bl, key_valid_bk=valid_bl
            )
            cross_mask = layers.AttentionMask(query_valid_bq=valid_bl)
        x_bld = self.token_embedder(decoder_input_bl)
        x_bld = x_bld + _positions(self.config, length).astype(x_bld.dtype)
        x_bld = self.dropout(x_bld, deterministic=deterministic)
        x_bld = constrain(x_bld, ("batch", "length", "embed"))
        for layer in self.layers:
            x_bld = layer(x_bld, encoded_btd, self_mask, cross_mask, deterministic=deterministic)
        return self._logits(x_bld, deterministic)

    def init_cache(
        self, batch_size: int, max_length: int
    ) -> tuple[tuple[jax.Array, jax.Array], ...]:
        """Zero self-attention keys / values, [batch, heads, max_length, kv] per layer."""
        shape = (batch_size, self.config.num_heads, max_length, self.config.head_dim)
        dtype = jnp.dtype(platform.resolve_dtype(self.config.dtype))
        return tuple(
            (jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(len(self.layers))
        )

    @staticmethod
    def extend_cache(
        cache: tuple[tuple[jax.Array, jax.Array], ...], length: int
    ) -> tuple[tuple[jax.Array, jax.Array], ...]:
        """The cache with zero slots appended up to ``length`` (the filled slots kept)."""

        def extend(entry_bhtd: jax.Array) -> jax.Array:
            extra = length - entry_bhtd.shape[2]
            if extra < 0:
                raise ValueError(f"cannot shrink a {entry_bhtd.shape[2]}-slot cache to {length}")
            return constrain(jnp.pad(entry_bhtd, ((0, 0), (0, 0), (0, extra), (0, 0))), CACHE_AXES)

        return jax.tree.map(extend, cache)

    def precompute_cross_kv(
        self, encoded_btd: jax.Array
    ) -> tuple[tuple[jax.Array, jax.Array], ...]:
        """Cross-attention keys / values of every layer, [batch, heads, time, kv], once per
        batch (a decode step only reads them)."""
        return tuple(
            layer.encoder_decoder_attention.project_kv_heads_major(encoded_btd)
            for layer in self.layers
        )

    def decode_step(
        self,
        token_b: jax.Array,
        position: jax.Array,
        cache: tuple[tuple[jax.Array, jax.Array], ...],
        cross_kv: tuple[tuple[jax.Array, jax.Array], ...],
    ) -> tuple[jax.Array, tuple[tuple[jax.Array, jax.Array], ...]]:
        """Logits [batch, vocab] for the token at ``position`` (a scalar, or one per row)
        given the cached prefix."""
        table = _positions(self.config, self.config.max_position)
        x_b1d = self.token_embedder(token_b[:, None])
        if jnp.ndim(position) == 0:
            position_1d = jax.lax.dynamic_slice_in_dim(table, position, 1)[None]
        else:
            position_1d = jnp.take(table, position, axis=0, mode="clip")[:, None]
        x_b1d = x_b1d + position_1d.astype(x_b1d.dtype)
        new_cache = []
        for layer, layer_cache, layer_cross in zip(self.layers, cache, cross_kv, strict=True):
            x_b1d, layer_cache = layer.decode_step(x_b1d, position, layer_cache, layer_cross)
            new_cache.append(layer_cache)
        return self._logits(x_b1d, True)[:, 0], tuple(new_cache)


class MT3Model(TranscriptionModel):
    """MT3 behind the :class:`TranscriptionModel` protocol.

    Batch keys: ``audio_bs`` float [batch, 128 * inputs_length] at 16 kHz (32768 for MT3;
    or ``inputs_btf`` log-mel [batch, frames, 512]), ``targets_bl`` int32 token ids
    (0 = PAD, 1 = EOS) and, optionally, ``decoder_input_bl`` (otherwise targets shifted
    right with 0 as BOS).
    """

    family = "mt3"
    sample_rate = SAMPLE_RATE
    segment_samples = SEGMENT_SAMPLES

    def __init__(self, config: MT3Config, *, rngs: nnx.Rngs):
        self.config = config
        # a segment is inputs_length frames: 256 (2.048 s) for MT3, 512 for ismir2021
        self.segment_samples = config.inputs_length * HOP_LENGTH
        self.encoder = Encoder(config, rngs=rngs)
        self.decoder = Decoder(config, rngs=rngs)

    @classmethod
    def from_config(cls, config: MT3Config, *, rngs: nnx.Rngs) -> MT3Model:
        return cls(config, rngs=rngs)

    # ---- inputs -------------------------------------------------------------------------

    def spectrogram(self, batch: Batch) -> jax.Array:
        """Encoder inputs [batch, frames, 512]: ``inputs_btf`` if given, else log-mel of audio."""
        if "inputs_btf" in batch:
            inputs_btf = batch["inputs_btf"]
            if inputs_btf.ndim != 3 or inputs_btf.shape[-1] != self.config.input_depth:
                raise ValueError(
                    f"MT3Model: inputs_btf must be [batch, frames, {self.config.input_depth}], "
                    f"got shape {inputs_btf.shape}"
                )
            return inputs_btf.astype(jnp.float32)
        if "audio_bs" not in batch:
            raise ValueError(
                f"MT3Model: batch needs 'audio_bs' or 'inputs_btf', got {sorted(batch)}"
            )
        audio_bs = batch["audio_bs"]
        self._check_audio(audio_bs, batch.get("sample_rate"))
        from amt_jax.audio.mel import MT3_MEL, log_mel

        return log_mel(audio_bs.astype(jnp.float32), MT3_MEL)

    def _check_audio(self, audio_bs: jax.Array, sample_rate: Any) -> None:
        if audio_bs.ndim != 2 or audio_bs.shape[1] != self.segment_samples:
            raise ValueError(
                f"MT3Model expects audio_bs of shape [batch, {self.segment_samples}] "
                f"({self.segment_samples / self.sample_rate:g} s at {self.sample_rate} Hz), "
                f"got shape {tuple(audio_bs.shape)}"
            )
        if not jnp.issubdtype(audio_bs.dtype, jnp.floating):
            raise ValueError(f"MT3Model expects floating-point audio, got dtype {audio_bs.dtype}")
        if sample_rate is not None and not isinstance(sample_rate, jax.core.Tracer):
            rates = np.unique(np.asarray(sample_rate))
            if rates.size != 1 or int(rates[0]) != self.sample_rate:
                raise ValueError(
                    f"MT3Model expects {self.sample_rate} Hz audio, got sample_rate "
                    f"{rates.tolist()}; resample with amt_jax.audio.io first"
                )

    @staticmethod
    def shift_right(targets_bl: jax.Array) -> jax.Array:
        """Teacher-forcing inputs: targets shifted one step right with 0 (BOS) in front."""
        return jnp.pad(targets_bl[:, :-1], ((0, 0), (1, 0)), constant_values=decoding.BOS_ID)

    # ---- network ------------------------------------------------------------------------

    def encode(self, inputs_btf: jax.Array, *, deterministic: bool | None = None) -> jax.Array:
        return self.encoder(inputs_btf, deterministic=deterministic)

    def decode(
        self,
        decoder_input_bl: jax.Array,
        encoded_btd: jax.Array,
        *,
        decoder_target_bl: jax.Array | None = None,
        deterministic: bool | None = None,
    ) -> jax.Array:
        return self.decoder(
            decoder_input_bl,
            encoded_btd,
            decoder_target_bl=decoder_target_bl,
            deterministic=deterministic,
        )

    def init_decode_cache(self, batch_size: int, max_length: int) -> Any:
        return self.decoder.init_cache(batch_size, max_length)

    def extend_decode_cache(self, cache: Any, length: int) -> Any:
        return self.decoder.extend_cache(cache, length)

    def precompute_cross_kv(self, encoded_btd: jax.Array) -> Any:
        return self.decoder.precompute_cross_kv(encoded_btd)

    def decode_step(
        self, token_b: jax.Array, position: jax.Array, cache: Any, cross_kv: Any
    ) -> tuple[jax.Array, Any]:
        return self.decoder.decode_step(token_b, position, cache, cross_kv)

    def __call__(self, batch: Batch, *, deterministic: bool | None = None) -> jax.Array:
        """Teacher-forced float32 logits [batch, length, vocab]."""
        targets_bl = batch["targets_bl"]
        decoder_input_bl = batch.get("decoder_input_bl")
        if decoder_input_bl is None:
            decoder_input_bl = self.shift_right(targets_bl)
        encoded_btd = self.encode(self.spectrogram(batch), deterministic=deterministic)
        return self.decode(
            decoder_input_bl,
            encoded_btd,
            decoder_target_bl=targets_bl,
            deterministic=deterministic,
        )

    # ---- protocol -----------------------------------------------------------------------

    def loss(self, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Cross-entropy + z-loss over non-padding targets (dropout per the module mode)."""
        logits_blv = self(batch)
        return sequence_loss_and_metrics(
            logits_blv,
            batch["targets_bl"],
            z_loss=self.config.z_loss,
            pad_id=self.config.pad_id,
            normalization=self.config.loss_normalization,
        )

    def predict(
        self, batch: Batch, *, max_length: int | None = None, use_cache: bool = True
    ) -> dict[str, jax.Array]:
        """``tokens``: greedy token ids [batch, max_length] (EOS kept, PAD after it)."""
        max_length = self.config.targets_length if max_length is None else max_length
        if not 0 < max_length <= self.config.max_position:
            raise ValueError(
                f"max_length must be in [1, {self.config.max_position}], got {max_length}"
            )
        encoded_btd = self.encode(self.spectrogram(batch), deterministic=True)
        decode = decoding.greedy_decode if use_cache else decoding.greedy_decode_uncached
        tokens_bl = decode(self, encoded_btd, max_length=max_length, eos_id=self.config.eos_id)
        return {"tokens": tokens_bl}

    def segment(self, audio_s: np.ndarray) -> Segments:
        """Consecutive segments of ``inputs_length`` frames (2.048 s for MT3, 4.096 s for
        ismir2021; the last zero-padded), as MT3 infers."""
        return consecutive_segments(len(audio_s), self.segment_samples, self.sample_rate)

    def stitch(self, outputs: Mapping[str, np.ndarray], *, num_samples: int) -> dict[str, Any]:
        """``tokens`` [segments, length]: the windows' rows are already one per segment."""
        del num_samples
        return {"tokens": np.asarray(outputs["tokens"])}

    def outputs_to_notes(
        self,
        outputs: Mapping[str, np.ndarray],
        *,
        num_samples: int,
        start_times: np.ndarray,
        **options: Any,
    ) -> tuple[Any, dict[str, float]]:
        """Token ids [segments, length] of a track's segments -> (NoteSequence, stats).

        Decoded with the config's vocabulary (the one the model was trained on), one
        decoding state across segments (ties); stats count invalid / dropped tokens and
        segments without a tie section, which MT3 only counted.
        """
        del num_samples
        if options:
            raise ValueError(f"MT3 decoding takes no options, got {sorted(options)}")
        vocabulary = self.config.vocabulary
        if vocabulary.num_embeddings > self.config.vocab_size:
            raise ValueError(
                f"vocabulary {vocabulary.layout!r} needs {vocabulary.num_embeddings} embedding "
                f"rows but the model has {self.config.vocab_size} (MT3Config.vocab_size)"
            )
        tokens_bl = np.asarray(outputs["tokens"])
        if tokens_bl.ndim != 2:
            raise ValueError(f"outputs_to_notes: tokens must be 2-D, got {tokens_bl.shape}")
        notes, stats = note_events.decode_segments(
            list(tokens_bl), np.asarray(start_times), self.config.vocabulary
        )
        return notes, stats.as_dict()

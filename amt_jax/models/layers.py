"""Shared Flax NNX layers: RMSNorm, dense/embedding with logical axes, positions, attention.

Every parameter is an ``nnx.Param`` whose ``out_sharding`` metadata holds *logical* axis
names from :mod:`amt_jax.partitioning.axes`. Parameters are created with
``eager_sharding=False``: a model can be built anywhere (CPU tests, ``nnx.eval_shape``),
and the trainer turns the names into mesh shardings with the rules in force
(``logical_to_spec``). Activations are pinned with :func:`constrain`, a no-op outside a mesh.

The numerics follow T5.1.1 as used by MT3: no biases, RMSNorm without mean subtraction,
no 1/sqrt(d) attention scaling at run time (it is folded into the query initialisation).

What is written here is the plain form (``jax.nn.dot_product_attention``, which XLA or
cuDNN may fuse on GPU; ``lax.dot_general`` dense layers; ``nnx.Dropout``). The ``kernels``
argument of the layers picks a platform's forms of the same math instead (same values and
gradients): ``"cpu"``, XLA:CPU's forms from :mod:`amt_jax.models.cpu_kernels`; ``"tpu"``,
attention through the Pallas flash-attention kernel (:mod:`amt_jax.models.tpu_kernels`);
``"reference"``; or ``"auto"`` = the compile target's own form (``"cpu"`` on CPU, ``"tpu"`` on
TPU, ``"reference"`` elsewhere; :func:`amt_jax.models.platform.target_platform`), resolved
while tracing.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from amt_jax.models import cpu_kernels, platform, tpu_kernels
from amt_jax.partitioning.axes import LOGICAL_AXES, constrain

#: large negative score for masked attention positions (t5x uses the same magnitude)
NEG_INF = -1e10

#: values of the layers' ``kernels`` argument (and of ``MT3Config.kernels``)
KERNELS = ("auto", "reference", "cpu", "tpu")

Initializer = jax.nn.initializers.Initializer


def check_kernels(kernels: str) -> str:
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")
    return kernels


def resolve_kernels(kernels: str) -> str:
    """The concrete form ``kernels`` means for the step being traced now."""
    if kernels != "auto":
        return kernels
    return {"cpu": "cpu", "tpu": "tpu"}.get(platform.target_platform(), "reference")


def uses_cpu_kernels(kernels: str) -> bool:
    """Whether ``kernels`` means XLA:CPU's forms for the step being traced now."""
    return resolve_kernels(kernels) == "cpu"


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=("query_valid_bq", "key_valid_bk"),
    meta_fields=("causal",),
)
@dataclasses.dataclass(frozen=True)
class AttentionMask:
    """Which keys each query may see, kept factored: causal and per-position validity.

    The reference forms expand it to a dense [batch, 1, q, k] mask (:meth:`dense`); the
    flash-attention kernel takes the factors as they are and never builds the dense mask.
    """

    causal: bool = False
    query_valid_bq: jax.Array | None = None
    key_valid_bk: jax.Array | None = None

    def dense(self, q_length: int, k_length: int) -> jax.Array | None:
        """Boolean [batch or 1, 1, q, k], or None when every query sees every key."""
        mask = None
        if self.causal:
            positions_q, positions_k = jnp.arange(q_length), jnp.arange(k_length)
            mask = (positions_k[None, :] <= positions_q[:, None])[None, None]
        if self.query_valid_bq is not None or self.key_valid_bk is not None:
            query_valid = (
                jnp.ones((1, q_length), bool) if self.query_valid_bq is None
                else self.query_valid_bq
            )  # fmt: skip
            key_valid = (
                jnp.ones((1, k_length), bool) if self.key_valid_bk is None else self.key_valid_bk
            )
            valid = padding_mask(query_valid, key_valid)
            mask = valid if mask is None else mask & valid
        return mask


def axis_metadata(*names: str) -> dict[str, object]:
    """Metadata for a flax layer's parameters: logical axis names, no eager sharding (so
    models build anywhere: CPU tests, ``nnx.eval_shape``); e.g. ``kernel_metadata=``."""
    return {"out_sharding": names, "eager_sharding": False}


def logical_param(
    init: Initializer,
    key: jax.Array,
    shape: Sequence[int],
    names: Sequence[str | None],
    dtype: jnp.dtype = jnp.float32,
) -> nnx.Param:
    """A parameter annotated with logical axis names (one per dimension)."""
    if len(names) != len(shape):
        raise ValueError(f"{len(names)} logical names {tuple(names)} for a shape {tuple(shape)}")
    for name in names:
        if name is not None and name not in LOGICAL_AXES:
            raise ValueError(f"Unknown logical axis {name!r}; add it to amt_jax.partitioning.axes")
    return nnx.Param(
        init(key, tuple(shape), dtype), out_sharding=tuple(names), eager_sharding=False
    )


@functools.lru_cache(maxsize=8)
def sinusoidal_positions(
    max_length: int, features: int, max_timescale: float = 10_000.0
) -> np.ndarray:
    """Fixed absolute position table [max_length, features], float32.

    As MT3's ``FixedEmbed``: sines in the first half of the channels, cosines in the
    second half (concatenated, not interleaved); timescales run geometrically from 1 to
    ``max_timescale`` with ``log(max_timescale) / (features / 2 - 1)`` spacing.
    """
    if features % 2:
        raise ValueError(f"sinusoidal positions need an even width, got {features}")
    half = features // 2
    log_increment = math.log(max_timescale) / max(half - 1, 1)
    inv_timescales = np.exp(-log_increment * np.arange(half, dtype=np.float64))
    angles = np.arange(max_length, dtype=np.float64)[:, None] * inv_timescales[None, :]
    table = np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)
    table.setflags(write=False)
    return table


class RMSNorm(nnx.Module):
    """T5 "LayerNorm": x / sqrt(mean(x^2) + eps) * scale; no mean subtraction, no bias."""

    def __init__(
        self,
        features: int,
        *,
        epsilon: float = 1e-6,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.epsilon = epsilon
        self.dtype = dtype
        self.scale = logical_param(
            jax.nn.initializers.ones, rngs.params(), (features,), ("norm",), param_dtype
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean_square = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        normed = (x32 * jax.lax.rsqrt(mean_square + self.epsilon)).astype(self.dtype)
        return normed * self.scale[...].astype(self.dtype)


class DenseGeneral(nnx.Module):
    """Bias-free dense layer contracting the trailing ``len(in_features)`` input axes.

    The kernel has shape ``in_features + out_features`` (e.g. [embed, heads, kv] for a
    query projection), annotated with ``axis_names``; fan-in for the initialiser is the
    product of ``in_features``, as for the flattened (512, 384) kernels of t5x.
    """

    def __init__(
        self,
        in_features: int | Sequence[int],
        out_features: int | Sequence[int],
        *,
        axis_names: Sequence[str | None],
        kernel_init: Initializer,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        kernels: str = "reference",
        rngs: nnx.Rngs,
    ):
        self.in_features = _as_tuple(in_features)
        self.out_features = _as_tuple(out_features)
        self.dtype = dtype
        self.kernels = check_kernels(kernels)
        self.kernel = logical_param(
            kernel_init,
            rngs.params(),
            self.in_features + self.out_features,
            axis_names,
            param_dtype,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        num_in = len(self.in_features)
        if x.shape[x.ndim - num_in :] != self.in_features:
            raise ValueError(
                f"DenseGeneral expects trailing input axes {self.in_features}, got {x.shape}"
            )
        contracted = (tuple(range(x.ndim - num_in, x.ndim)), tuple(range(num_in)))
        kernel = self.kernel[...]
        if jnp.finfo(kernel.dtype).bits < jnp.finfo(self.dtype).bits:
            # weights stored narrower than the activations (bfloat16 weights for inference):
            # the GEMM runs at the weights' precision and accumulates in ``dtype``, instead
            # of widening every weight at every call (on CPUs with bf16 units: 2.7x faster)
            return jax.lax.dot_general(
                x.astype(kernel.dtype),
                kernel,
                (contracted, ((), ())),
                preferred_element_type=self.dtype,
            )
        x = x.astype(self.dtype)
        kernel = kernel.astype(self.dtype)
        if uses_cpu_kernels(self.kernels):
            return cpu_kernels.contract_trailing(x, kernel, num_in)
        return jax.lax.dot_general(x, kernel, (contracted, ((), ())))


def _as_tuple(features: int | Sequence[int]) -> tuple[int, ...]:
    return (features,) if isinstance(features, int) else tuple(features)


def fan_in_init(distribution: str, num_in_axes: int, scale: float = 1.0) -> Initializer:
    """variance_scaling(scale, "fan_in") with fan-in = product of the first kernel axes.

    The kernel is drawn as the flattened 2-D matrix [prod(in), prod(out)] and reshaped,
    so a [embed, heads, kv] kernel gets fan-in 512 exactly like t5x's (512, 384) one.
    """
    base = jax.nn.initializers.variance_scaling(scale, "fan_in", distribution)

    def init(key: jax.Array, shape: Sequence[int], dtype: jnp.dtype = jnp.float32) -> jax.Array:
        fan_in = math.prod(shape[:num_in_axes])
        fan_out = math.prod(shape[num_in_axes:])
        return base(key, (fan_in, fan_out), dtype).reshape(shape)

    return init


class Embed(nnx.Module):
    """Token embedding table [vocab, embed]; T5 initialises it N(0, 1) and does not scale it."""

    def __init__(
        self,
        num_embeddings: int,
        features: int,
        *,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.dtype = dtype
        self.embedding = logical_param(
            jax.nn.initializers.normal(stddev=1.0),
            rngs.params(),
            (num_embeddings, features),
            ("vocab", "embed"),
            param_dtype,
        )

    def __call__(self, ids: jax.Array) -> jax.Array:
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(f"Embed expects integer token ids, got dtype {ids.dtype}")
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)


class Dropout(nnx.Dropout):
    """``nnx.Dropout``; with CPU kernels the mask comes from 16-bit draws
    (:func:`amt_jax.models.cpu_kernels.dropout`). Either form takes one key per call from
    the layer's RNG stream; state and call signature are ``nnx.Dropout``'s."""

    def __init__(
        self,
        rate: float,
        *,
        broadcast_dims: Sequence[int] = (),
        kernels: str = "reference",
        rngs: nnx.Rngs | nnx.RngStream | None = None,
    ):
        super().__init__(rate, broadcast_dims=broadcast_dims, rngs=rngs)
        self.kernels = check_kernels(kernels)

    def __call__(
        self,
        inputs: jax.Array,
        *,
        deterministic: bool | None = None,
        rngs: nnx.Rngs | nnx.RngStream | jax.Array | None = None,
    ) -> jax.Array:
        if not uses_cpu_kernels(self.kernels):
            return super().__call__(inputs, deterministic=deterministic, rngs=rngs)
        key = self.next_key(deterministic=deterministic, rngs=rngs)
        if key is None:
            return inputs
        return cpu_kernels.dropout(inputs, key, self.rate, self.broadcast_dims)

    def next_key(
        self,
        *,
        deterministic: bool | None = None,
        rngs: nnx.Rngs | nnx.RngStream | jax.Array | None = None,
    ) -> jax.Array | None:
        """This call's mask key from the layer's stream, or None when nothing is dropped
        (deterministic, or rate 0); for callers that draw the mask themselves."""
        deterministic = self.deterministic if deterministic is None else deterministic
        if deterministic is None:
            raise ValueError("Dropout needs deterministic=True/False (argument or attribute)")
        if self.rate == 0.0 or deterministic:
            return None
        rngs = self.rngs if rngs is None else rngs
        if isinstance(rngs, nnx.Rngs):
            return rngs[self.rng_collection]()
        if isinstance(rngs, nnx.RngStream):
            return rngs()
        if isinstance(rngs, jax.Array):
            return rngs
        raise ValueError("Dropout is not deterministic but has no rngs")


def dot_product_attention(
    query_bqhd: jax.Array,
    key_bkhd: jax.Array,
    value_bkhd: jax.Array,
    bias_bhqk: jax.Array | None = None,
    *,
    dropout_key: jax.Array | None = None,
    dropout_rate: float = 0.0,
    dtype: jnp.dtype = jnp.float32,
) -> jax.Array:
    """T5's attention of projected queries over keys / values -> context [b, q, h, d].

    Unscaled scores (float32) plus an additive mask bias, a float32 softmax over keys
    (``jax.nn.dot_product_attention``), and dropout on the probabilities with one mask
    for every query position (t5x ``broadcast_dropout``), applied as :func:`drop_values`.
    """
    value_bkhd = drop_values(value_bkhd, dropout_key, dropout_rate)
    query_bqhd, key_bkhd, value_bkhd = (x.astype(dtype) for x in (query_bqhd, key_bkhd, value_bkhd))
    bias = None if bias_bhqk is None else bias_bhqk.astype(jnp.float32)
    return jax.nn.dot_product_attention(query_bqhd, key_bkhd, value_bkhd, bias=bias, scale=1.0)


def drop_values(
    value_bkhd: jax.Array, dropout_key: jax.Array | None, dropout_rate: float
) -> jax.Array:
    """Probability dropout shared by every query, applied to the values it multiplies.

    With one keep mask m[b, h, k] for all queries, ``sum_k (p_qk m_k / keep) v_k`` equals
    ``sum_k p_qk (m_k v_k / keep)``: dropping value rows is t5x's broadcast dropout exactly,
    and costs a pass over [b, k, h, d] instead of the [b, h, q, k] probabilities (which the
    flash kernel never materialises at all).
    """
    if dropout_key is None or dropout_rate <= 0.0:
        return value_bkhd
    keep_prob = 1.0 - dropout_rate
    batch, keys, heads, _ = value_bkhd.shape
    keep_bh1k = jax.random.bernoulli(dropout_key, keep_prob, (batch, heads, 1, keys))
    keep_bkh1 = jnp.transpose(keep_bh1k, (0, 3, 1, 2))
    scaled = value_bkhd / jnp.asarray(keep_prob, value_bkhd.dtype)
    return jnp.where(keep_bkh1, scaled, jnp.zeros_like(value_bkhd))


class GatedGeluMlp(nnx.Module):
    """T5.1.1 feed-forward: wo(dropout(gelu(wi_0 x) * wi_1 x)), tanh-approximate GELU.

    The hidden dropout mask is shared along the sequence axis, as t5x's ``MlpBlock``
    (``broadcast_dims=(-2,)``).
    """

    def __init__(
        self,
        features: int,
        mlp_dim: int,
        *,
        dropout_rate: float,
        seq_axis: str,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        kernels: str = "reference",
        rngs: nnx.Rngs,
    ):
        self.seq_axis = seq_axis
        init = fan_in_init("truncated_normal", 1)
        dense = functools.partial(
            DenseGeneral,
            kernel_init=init,
            dtype=dtype,
            param_dtype=param_dtype,
            kernels=kernels,
            rngs=rngs,
        )
        self.wi_0 = dense(features, mlp_dim, axis_names=("embed", "mlp"))
        self.wi_1 = dense(features, mlp_dim, axis_names=("embed", "mlp"))
        self.wo = dense(mlp_dim, features, axis_names=("mlp", "embed"))
        self.dropout = Dropout(dropout_rate, broadcast_dims=(-2,), kernels=kernels, rngs=rngs)

    def __call__(self, x: jax.Array, *, deterministic: bool | None = None) -> jax.Array:
        hidden = jax.nn.gelu(self.wi_0(x), approximate=True) * self.wi_1(x)
        hidden = constrain(hidden, ("batch", self.seq_axis, "mlp"))
        hidden = self.dropout(hidden, deterministic=deterministic)
        return self.wo(hidden)


class MultiHeadAttention(nnx.Module):
    """T5 multi-head dot-product attention without biases or run-time 1/sqrt(d) scaling.

    The query initialiser is divided by sqrt(head_dim) instead, which is where T5 puts
    the scaling. Dropout on the attention probabilities is shared across query
    positions (t5x ``broadcast_dropout``).
    """

    def __init__(
        self,
        features: int,
        num_heads: int,
        head_dim: int,
        *,
        dropout_rate: float,
        q_axis: str,
        kv_axis: str,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        kernels: str = "reference",
        rngs: nnx.Rngs,
    ):
        self.q_axis = q_axis
        self.kv_axis = kv_axis
        self.dtype = dtype
        self.kernels = check_kernels(kernels)
        base = fan_in_init("normal", 1)
        depth_scaling = math.sqrt(head_dim)

        def query_init(key, shape, dtype=jnp.float32):
            return base(key, shape, dtype) / depth_scaling

        def project(init):
            return DenseGeneral(
                features,
                (num_heads, head_dim),
                axis_names=("embed", "heads", "kv"),
                kernel_init=init,
                dtype=dtype,
                param_dtype=param_dtype,
                kernels=kernels,
                rngs=rngs,
            )

        self.query = project(query_init)
        self.key = project(base)
        self.value = project(base)
        self.out = DenseGeneral(
            (num_heads, head_dim),
            features,
            axis_names=("heads", "kv", "embed"),
            kernel_init=fan_in_init("normal", 2),
            dtype=dtype,
            param_dtype=param_dtype,
            kernels=kernels,
            rngs=rngs,
        )
        # the RNG stream and rate of the probability dropout, whose [batch, heads, 1, k]
        # mask (shared by the queries) the attention function draws from this layer's key
        self.dropout = Dropout(dropout_rate, broadcast_dims=(2,), kernels=kernels, rngs=rngs)

    def project_query(self, inputs_q: jax.Array) -> jax.Array:
        return constrain(self.query(inputs_q), ("batch", self.q_axis, "heads", "kv"))

    def project_kv(self, inputs_kv: jax.Array) -> tuple[jax.Array, jax.Array]:
        names = ("batch", self.kv_axis, "heads", "kv")
        return constrain(self.key(inputs_kv), names), constrain(self.value(inputs_kv), names)

    def attend(
        self,
        query_bqhd: jax.Array,
        key_bkhd: jax.Array,
        value_bkhd: jax.Array,
        mask: AttentionMask | jax.Array | None,
        *,
        deterministic: bool | None = None,
    ) -> jax.Array:
        """Attention of projected queries over projected keys/values, then the out proj.

        ``mask``: an :class:`AttentionMask`, a dense boolean [batch or 1, 1, q, k], or None.
        """
        dropout_key = self.dropout.next_key(deterministic=deterministic)
        form = resolve_kernels(self.kernels)
        if form == "tpu":
            mask = AttentionMask() if mask is None else mask
            if not isinstance(mask, AttentionMask):
                raise ValueError(
                    "the flash-attention kernel takes an AttentionMask, not a dense mask"
                )
            context = tpu_kernels.flash_attention(
                query_bqhd.astype(self.dtype),
                key_bkhd.astype(self.dtype),
                drop_values(value_bkhd, dropout_key, self.dropout.rate).astype(self.dtype),
                causal=mask.causal,
                query_valid_bq=mask.query_valid_bq,
                key_valid_bk=mask.key_valid_bk,
            )
        else:
            if isinstance(mask, AttentionMask):
                mask = mask.dense(query_bqhd.shape[1], key_bkhd.shape[1])
            # the mask as an additive bias, not a select on the scores: its backward is the
            # identity, where a select would cost one more pass over the [b, h, q, k] gradient
            bias_bhqk = None if mask is None else jnp.where(mask, 0.0, NEG_INF)
            attention = (
                cpu_kernels.dot_product_attention if form == "cpu" else dot_product_attention
            )
            context = attention(
                query_bqhd,
                key_bkhd,
                value_bkhd,
                bias_bhqk,
                dropout_key=dropout_key,
                dropout_rate=self.dropout.rate,
                dtype=self.dtype,
            )
        context = constrain(context, ("batch", self.q_axis, "heads", "kv"))
        return self.out(context)

    def project_kv_heads_major(self, inputs_kv: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Keys / values as [batch, heads, kv_length, kv]: the layout :meth:`attend_cached`
        reads, so a decode step contracts them without re-laying them out."""
        key_bkhd, value_bkhd = self.project_kv(inputs_kv)
        return jnp.transpose(key_bkhd, (0, 2, 1, 3)), jnp.transpose(value_bkhd, (0, 2, 1, 3))

    def attend_cached(
        self,
        query_bqhd: jax.Array,
        key_bhkd: jax.Array,
        value_bhkd: jax.Array,
        mask_bhqk: jax.Array | None,
    ) -> jax.Array:
        """Deterministic attention over heads-major keys / values, then the out projection.

        The same math as :meth:`attend`; keys and values are [batch, heads, k, kv], so both
        einsums batch over (batch, heads) as their leading axes and XLA reads the decode
        cache in place instead of transposing all of it at every step.
        """
        scores_bhqk = jnp.einsum("bqhd,bhkd->bhqk", query_bqhd, key_bhkd).astype(jnp.float32)
        if mask_bhqk is not None:
            scores_bhqk = scores_bhqk + jnp.where(mask_bhqk, 0.0, NEG_INF)
        probs_bhqk = jax.nn.softmax(scores_bhqk, axis=-1).astype(self.dtype)
        context_bqhd = jnp.einsum("bhqk,bhkd->bqhd", probs_bhqk, value_bhkd)
        context_bqhd = constrain(context_bqhd, ("batch", self.q_axis, "heads", "kv"))
        return self.out(context_bqhd)

    def __call__(
        self,
        inputs_q: jax.Array,
        inputs_kv: jax.Array,
        mask: AttentionMask | jax.Array | None = None,
        *,
        deterministic: bool | None = None,
    ) -> jax.Array:
        key, value = self.project_kv(inputs_kv)
        return self.attend(
            self.project_query(inputs_q), key, value, mask, deterministic=deterministic
        )


def causal_mask(length: int) -> jax.Array:
    """[1, 1, length, length] boolean: query i may attend to keys j <= i."""
    positions = jnp.arange(length)
    return (positions[None, :] <= positions[:, None])[None, None]


def padding_mask(query_valid_bq: jax.Array, key_valid_bk: jax.Array) -> jax.Array:
    """[batch, 1, q, k] boolean from per-position validity of queries and keys."""
    return (query_valid_bq[:, :, None] & key_valid_bk[:, None, :])[:, None]

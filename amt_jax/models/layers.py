"""Shared Flax NNX layers: RMSNorm, dense/embedding with logical axes, positions, attention.

Every parameter is an ``nnx.Param`` whose ``out_sharding`` metadata holds *logical* axis
names from :mod:`amt_jax.partitioning.axes`. Parameters are created with
``eager_sharding=False``: a model can be built anywhere (CPU tests, ``nnx.eval_shape``),
and the trainer turns the names into mesh shardings with the rules in force
(``logical_to_spec``). Activations are pinned with :func:`constrain`, a no-op outside a mesh.

The numerics follow T5.1.1 as used by MT3: no biases, RMSNorm without mean subtraction,
no 1/sqrt(d) attention scaling at run time (it is folded into the query initialisation).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from amt_jax.partitioning.axes import LOGICAL_AXES, constrain

#: large negative score for masked attention positions (t5x uses the same magnitude)
NEG_INF = -1e10

Initializer = jax.nn.initializers.Initializer


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
        rngs: nnx.Rngs,
    ):
        self.in_features = _as_tuple(in_features)
        self.out_features = _as_tuple(out_features)
        self.dtype = dtype
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
        kernel = self.kernel[...].astype(self.dtype)
        return contract_trailing(x.astype(self.dtype), kernel, num_in)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def contract_trailing(x: jax.Array, kernel: jax.Array, num_in: int) -> jax.Array:
    """``x`` [..., *in] . ``kernel`` [*in, *out] -> [..., *out] (one GEMM).

    Same value and gradients as ``lax.dot_general``; the custom backward only puts an
    optimization barrier on the saved input and the incoming cotangent. Without it XLA:CPU
    fuses the transpose that the weight-gradient GEMM needs into the producer of one of
    them (the GELU / dropout backward, or the forward dropout / RMSNorm), which then
    writes its output in transposed, cache-hostile order: those fusions took ~25% of a
    T5-small train step. With the barrier the transpose is a separate tiled copy, and the
    weight gradient transposes the narrower of x and the cotangent (see the backward).
    """
    return jax.lax.dot_general(x, kernel, _trailing_dims(x.ndim, num_in))


def _trailing_dims(ndim: int, num_in: int):
    return (tuple(range(ndim - num_in, ndim)), tuple(range(num_in))), ((), ())


def _contract_trailing_fwd(x, kernel, num_in):
    return contract_trailing(x, kernel, num_in), (x, kernel)


def _contract_trailing_bwd(num_in, residuals, grad_out):
    x, kernel = residuals
    x, grad_out = jax.lax.optimization_barrier((x, grad_out))
    num_out = kernel.ndim - num_in
    out_axes = tuple(range(grad_out.ndim - num_out, grad_out.ndim))
    grad_x = jax.lax.dot_general(
        grad_out, kernel, ((out_axes, tuple(range(num_in, kernel.ndim))), ((), ()))
    )
    lead_axes = tuple(range(x.ndim - num_in))
    if math.prod(kernel.shape[:num_in]) > math.prod(kernel.shape[num_in:]):
        # XLA:CPU's GEMMs want the contracted (token) axis last on the left operand, so
        # one operand gets a transposed copy. Let that be the narrower cotangent, not a
        # wide input whose producer (e.g. the MLP's GELU * dropout) XLA would otherwise
        # recompute in transposed order; the [out, in] result is small to transpose.
        grad_kernel_t = jax.lax.dot_general(grad_out, x, ((lead_axes, lead_axes), ((), ())))
        # the barrier keeps XLA from folding the transpose into the GEMM by swapping its
        # operands, which would put the wide input back on the left, contracted on its
        # leading axis: a layout XLA:CPU's fast GEMM path rejects (it falls back to Eigen)
        grad_kernel_t = jax.lax.optimization_barrier(grad_kernel_t)
        in_first = tuple(range(num_out, kernel.ndim)) + tuple(range(num_out))
        grad_kernel = jnp.transpose(grad_kernel_t, in_first)
    else:
        grad_kernel = jax.lax.dot_general(x, grad_out, ((lead_axes, lead_axes), ((), ())))
    return grad_x.astype(x.dtype), grad_kernel.astype(kernel.dtype)


contract_trailing.defvjp(_contract_trailing_fwd, _contract_trailing_bwd)


@jax.custom_vjp
def attention_scores(query_bqhd: jax.Array, key_bkhd: jax.Array) -> jax.Array:
    """``einsum("bqhd,bkhd->bhqk")`` whose backward keeps XLA:CPU on its fast GEMM path.

    JAX's generic transpose rule ends the key gradient in a transpose that XLA folds into
    the GEMM by swapping operands, leaving the [b, h, q, k] cotangent on the left
    contracted over queries (not its last axis). XLA:CPU's fast GEMM path (YNNPACK)
    rejects that layout and runs Eigen at about half the rate. The backward below states
    each gradient with the large operand contracted on its last axis or on the right, and
    a barrier keeps the final small transpose from being folded back.
    """
    return jnp.einsum("bqhd,bkhd->bhqk", query_bqhd, key_bkhd)


def _fwd_keeping_operands(fn):
    """A custom_vjp forward rule for ``fn(a, b)`` that saves both operands for its backward."""

    def fwd(lhs, rhs):
        return fn(lhs, rhs), (lhs, rhs)

    return fwd


def _attention_scores_bwd(residuals, grad_bhqk):
    query_bqhd, key_bkhd = residuals
    grad_query_bhqd = jnp.einsum("bhqk,bkhd->bhqd", grad_bhqk, key_bkhd)
    grad_key_bhdk = jnp.einsum("bqhd,bhqk->bhdk", query_bqhd, grad_bhqk)
    grad_query_bhqd, grad_key_bhdk = jax.lax.optimization_barrier((grad_query_bhqd, grad_key_bhdk))
    return (
        jnp.transpose(grad_query_bhqd, (0, 2, 1, 3)).astype(query_bqhd.dtype),
        jnp.transpose(grad_key_bhdk, (0, 3, 1, 2)).astype(key_bkhd.dtype),
    )


attention_scores.defvjp(_fwd_keeping_operands(attention_scores), _attention_scores_bwd)


@jax.custom_vjp
def attention_context(probs_bhqk: jax.Array, value_bkhd: jax.Array) -> jax.Array:
    """``einsum("bhqk,bkhd->bqhd")`` with the value gradient kept on the fast GEMM path.

    Same reason as :func:`attention_scores`: the value gradient contracts the
    probabilities over queries, so it is computed as [b, h, d, k] with them on the right.
    """
    return jnp.einsum("bhqk,bkhd->bqhd", probs_bhqk, value_bkhd)


def _attention_context_bwd(residuals, grad_bqhd):
    probs_bhqk, value_bkhd = residuals
    grad_probs_bhqk = jnp.einsum("bqhd,bkhd->bhqk", grad_bqhd, value_bkhd)
    grad_value_bhdk = jnp.einsum("bqhd,bhqk->bhdk", grad_bqhd, probs_bhqk)
    grad_value_bhdk = jax.lax.optimization_barrier(grad_value_bhdk)
    return (
        grad_probs_bhqk.astype(probs_bhqk.dtype),
        jnp.transpose(grad_value_bhdk, (0, 3, 1, 2)).astype(value_bkhd.dtype),
    )


attention_context.defvjp(_fwd_keeping_operands(attention_context), _attention_context_bwd)


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
    """``nnx.Dropout`` with a mask drawn from 16 random bits per element instead of 32.

    The random bits dominate dropout's cost on CPU (threefry is ~50 ns per 32-bit word
    here, and MT3 masks ~50M activations per batch-2 step). An element is kept when its
    16-bit draw is below ``round(keep * 65536)`` and scaled by the inverse of that exact
    probability, so the layer stays unbiased (keep 0.9 becomes 0.899994). Same state
    (one RNG stream) and call signature as ``nnx.Dropout``.
    """

    def __call__(
        self,
        inputs: jax.Array,
        *,
        deterministic: bool | None = None,
        rngs: nnx.Rngs | nnx.RngStream | jax.Array | None = None,
    ) -> jax.Array:
        mask_shape = list(inputs.shape)
        for dim in self.broadcast_dims:
            mask_shape[dim] = 1
        keep = self.keep_mask(tuple(mask_shape), deterministic=deterministic, rngs=rngs)
        if keep is None:
            return inputs
        scaled = inputs * jnp.asarray(self.keep_scale, inputs.dtype)
        return jnp.where(keep, scaled, jnp.zeros_like(inputs))

    @property
    def keep_scale(self) -> float:
        """What kept elements are multiplied by: the inverse of the exact keep probability."""
        return 65536 / self._threshold

    @property
    def _threshold(self) -> int:
        return min(max(round((1.0 - self.rate) * 65536), 1), 65535)

    def keep_mask(
        self,
        shape: tuple[int, ...],
        *,
        deterministic: bool | None = None,
        rngs: nnx.Rngs | nnx.RngStream | jax.Array | None = None,
    ) -> jax.Array | None:
        """Boolean keep mask of ``shape`` (one draw from the stream), or None if nothing drops.

        For callers that apply the mask somewhere cheaper than the layer's input (attention
        drops value rows instead of probability columns); ``__call__`` uses it too.
        """
        deterministic = self.deterministic if deterministic is None else deterministic
        if deterministic is None:
            raise ValueError("Dropout needs deterministic=True/False (argument or attribute)")
        if self.rate == 0.0 or deterministic:
            return None
        if self.rate == 1.0:
            return jnp.zeros(shape, bool)
        rngs = self.rngs if rngs is None else rngs
        if isinstance(rngs, nnx.Rngs):
            key = rngs[self.rng_collection]()
        elif isinstance(rngs, nnx.RngStream):
            key = rngs()
        elif isinstance(rngs, jax.Array):
            key = rngs
        else:
            raise ValueError("Dropout is not deterministic but has no rngs")
        return _keep_mask16(key, shape, self._threshold)


def _keep_mask16(key: jax.Array, shape: tuple[int, ...], threshold: int) -> jax.Array:
    """Boolean mask of ``shape``: a 16-bit uniform draw below ``threshold``.

    Each 32-bit random word gives two draws, its high half for the first half of the
    last axis and its low half for the second. The halves are compared before they are
    joined, so what XLA materialises between the forward and backward pass is a
    one-byte mask, not a 32-bit word per element.
    """
    if not shape:
        return (jax.random.bits(key, (), jnp.uint32) >> 16) < threshold
    last = shape[-1]
    words = jax.random.bits(key, shape[:-1] + ((last + 1) // 2,), jnp.uint32)
    keep = jnp.concatenate([(words >> 16) < threshold, (words & 0xFFFF) < threshold], axis=-1)
    return keep[..., :last]


class GatedGeluMlp(nnx.Module):
    """T5.1.1 feed-forward: wo(dropout(gelu(wi_0 x) * wi_1 x)), tanh-approximate GELU."""

    def __init__(
        self,
        features: int,
        mlp_dim: int,
        *,
        dropout_rate: float,
        seq_axis: str,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.seq_axis = seq_axis
        init = fan_in_init("truncated_normal", 1)
        dense = functools.partial(
            DenseGeneral, kernel_init=init, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )
        self.wi_0 = dense(features, mlp_dim, axis_names=("embed", "mlp"))
        self.wi_1 = dense(features, mlp_dim, axis_names=("embed", "mlp"))
        self.wo = dense(mlp_dim, features, axis_names=("mlp", "embed"))
        self.dropout = Dropout(dropout_rate, rngs=rngs)

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
        rngs: nnx.Rngs,
    ):
        self.q_axis = q_axis
        self.kv_axis = kv_axis
        self.dtype = dtype
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
            rngs=rngs,
        )
        # probabilities are [batch, heads, q, k]: one mask for every query position, which
        # ``attend`` draws as [batch, heads, 1, k] and applies to the values
        self.dropout = Dropout(dropout_rate, broadcast_dims=(2,), rngs=rngs)

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
        mask_bhqk: jax.Array | None,
        *,
        deterministic: bool | None = None,
    ) -> jax.Array:
        """Attention of projected queries over projected keys/values, then the out proj."""
        scores = attention_scores(query_bqhd, key_bkhd).astype(jnp.float32)
        if mask_bhqk is not None:
            # an additive bias, not a select on the scores: its backward is the identity,
            # where a select would cost one more pass over the [b, h, q, k] gradient
            scores = scores + jnp.where(mask_bhqk, 0.0, NEG_INF).astype(scores.dtype)
        probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        # Dropout on the probabilities shares its mask over queries (t5x broadcast_dropout),
        # so it equals dropping value rows: sum_k (p_qk m_k) v_k = sum_k p_qk (m_k v_k).
        # Masking [b, k, h, d] values instead of [b, h, q, k] probabilities saves a pass over
        # the largest tensor in both the forward and the backward (~10% of a T5-small step).
        batch, keys, heads, _ = value_bkhd.shape
        keep_bh1k = self.dropout.keep_mask((batch, heads, 1, keys), deterministic=deterministic)
        if keep_bh1k is not None:
            keep_bkh1 = jnp.transpose(keep_bh1k, (0, 3, 1, 2))
            scaled = value_bkhd * jnp.asarray(self.dropout.keep_scale, value_bkhd.dtype)
            value_bkhd = jnp.where(keep_bkh1, scaled, jnp.zeros_like(value_bkhd))
        context = attention_context(probs, value_bkhd)
        context = constrain(context, ("batch", self.q_axis, "heads", "kv"))
        return self.out(context)

    def __call__(
        self,
        inputs_q: jax.Array,
        inputs_kv: jax.Array,
        mask_bhqk: jax.Array | None = None,
        *,
        deterministic: bool | None = None,
    ) -> jax.Array:
        key, value = self.project_kv(inputs_kv)
        return self.attend(
            self.project_query(inputs_q), key, value, mask_bhqk, deterministic=deterministic
        )


def causal_mask(length: int) -> jax.Array:
    """[1, 1, length, length] boolean: query i may attend to keys j <= i."""
    positions = jnp.arange(length)
    return (positions[None, :] <= positions[:, None])[None, None]


def padding_mask(query_valid_bq: jax.Array, key_valid_bk: jax.Array) -> jax.Array:
    """[batch, 1, q, k] boolean from per-position validity of queries and keys."""
    return (query_valid_bq[:, :, None] & key_valid_bk[:, None, :])[:, None]

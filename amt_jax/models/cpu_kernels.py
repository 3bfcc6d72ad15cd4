"""XLA:CPU forms of T5's dense layers, attention and dropout (same values and gradients).

:mod:`amt_jax.models.layers` computes T5 the plain way; with ``kernels="cpu"`` (what
``"auto"`` resolves to when a step is compiled for CPU) it calls these instead. Each one
works around a measured XLA:CPU weakness:

* :func:`contract_trailing`, :func:`attention_scores`, :func:`attention_context`: custom
  backwards that state every gradient GEMM with its large operand contracted on its last
  axis (or on the right), plus ``optimization_barrier``s so XLA does not fold the
  transposes back. Otherwise XLA:CPU sends those GEMMs to Eigen at about half the rate of
  its fast (YNNPACK) path, or fuses a transpose into a producer that then writes in
  cache-hostile order.
* :func:`dot_product_attention`: the probability dropout, shared across queries, applied to
  the value rows instead of the [b, h, q, k] probabilities (one pass less over the largest
  tensor in both directions).
* :func:`keep_mask` / :func:`dropout`: masks from 16 random bits per element instead of 32
  (the random bits dominate dropout's cost on CPU).

Equivalence with the reference forms is pinned by ``tests/models/test_cpu_kernels.py``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

# --- dense: one GEMM with a CPU-friendly backward --------------------------------------------


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


# --- attention ---------------------------------------------------------------------------------


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
    """:func:`amt_jax.models.layers.dot_product_attention` in XLA:CPU's form -> [b, q, h, d].

    The probability dropout (with ``dropout_key``) is shared by every query, as in t5x, so
    dropping probability column k equals dropping value row k:
    ``sum_k (p_qk m_k) v_k = sum_k p_qk (m_k v_k)``. Masking the [b, k, h, d] values instead
    of the [b, h, q, k] probabilities saves a pass over the largest tensor in both the
    forward and the backward (~10% of a T5-small step). The mask is a :func:`keep_mask`.
    """
    scores_bhqk = attention_scores(query_bqhd, key_bkhd).astype(jnp.float32)
    if bias_bhqk is not None:
        scores_bhqk = scores_bhqk + bias_bhqk.astype(scores_bhqk.dtype)
    probs_bhqk = jax.nn.softmax(scores_bhqk, axis=-1).astype(dtype)
    if dropout_key is not None and dropout_rate > 0.0:
        batch, keys, heads, _ = value_bkhd.shape
        keep_bh1k = keep_mask(dropout_key, (batch, heads, 1, keys), dropout_rate)
        value_bkhd = apply_keep_mask(
            value_bkhd, jnp.transpose(keep_bh1k, (0, 3, 1, 2)), dropout_rate
        )
    return attention_context(probs_bhqk, value_bkhd)


# --- dropout from 16-bit draws ---------------------------------------------------------------


def keep_threshold(rate: float) -> int:
    """An element is kept when its 16-bit draw is below this (keep 0.9 -> 58982)."""
    return min(max(round((1.0 - rate) * 65536), 1), 65535)


def keep_scale(rate: float) -> float:
    """What kept elements are multiplied by: the inverse of the exact keep probability, so
    the layer stays unbiased (keep 0.9 becomes 0.899994)."""
    return 65536 / keep_threshold(rate)


def keep_mask(key: jax.Array, shape: tuple[int, ...], rate: float) -> jax.Array:
    """Boolean keep mask of ``shape`` with keep probability ``keep_threshold(rate) / 65536``.

    Each 32-bit random word gives two draws, its high half for the first half of the
    last axis and its low half for the second. The halves are compared before they are
    joined, so what XLA materialises between the forward and backward pass is a
    one-byte mask, not a 32-bit word per element.
    """
    if rate >= 1.0:
        return jnp.zeros(shape, bool)
    threshold = keep_threshold(rate)
    if not shape:
        return (jax.random.bits(key, (), jnp.uint32) >> 16) < threshold
    last = shape[-1]
    words = jax.random.bits(key, shape[:-1] + ((last + 1) // 2,), jnp.uint32)
    keep = jnp.concatenate([(words >> 16) < threshold, (words & 0xFFFF) < threshold], axis=-1)
    return keep[..., :last]


def apply_keep_mask(inputs: jax.Array, keep: jax.Array, rate: float) -> jax.Array:
    """``inputs`` where ``keep`` (broadcast), scaled by :func:`keep_scale`; zero elsewhere."""
    scaled = inputs * jnp.asarray(keep_scale(rate), inputs.dtype)
    return jnp.where(keep, scaled, jnp.zeros_like(inputs))


def dropout(
    inputs: jax.Array, key: jax.Array, rate: float, broadcast_dims: Sequence[int] = ()
) -> jax.Array:
    """Inverted dropout with one :func:`keep_mask` shared along ``broadcast_dims``."""
    mask_shape = list(inputs.shape)
    for dim in broadcast_dims:
        mask_shape[dim] = 1
    return apply_keep_mask(inputs, keep_mask(key, tuple(mask_shape), rate), rate)

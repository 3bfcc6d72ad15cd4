"""TPU forms of the layers' math: attention through the Pallas flash-attention kernel.

The plain attention materialises [batch, heads, q, k] scores, probabilities and their
gradients in HBM; for MT3's 1024-token decoder that is most of a train step's memory
traffic. JAX's Pallas TPU flash-attention kernel computes the same softmax attention
block by block in VMEM and never writes those tensors. It is chosen by ``kernels="tpu"``
(what ``"auto"`` means when a step is compiled for TPU); the equality with the reference
form is tested through Pallas's TPU interpreter on CPU.

Masks reach the kernel in factored form (:class:`amt_jax.models.layers.AttentionMask`):
causal, plus per-position validity as segment ids (valid 1, padding 0), so a valid query
sees exactly the valid keys it sees in the reference form. Padding queries see padding
keys instead of nothing; their outputs are never read (the loss masks them and no valid
query attends to them).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import flash_attention as pallas_flash

from amt_jax.partitioning import axes, rules

#: sequence lengths are padded to a multiple of this (the kernel's smallest key block)
BLOCK_MULTIPLE = 128

#: largest block the kernel is given along a sequence axis
MAX_BLOCK = 512


def _block(length: int) -> int:
    """The largest of 512 / 256 / 128 that divides ``length`` (a multiple of 128)."""
    for size in (MAX_BLOCK, 256, BLOCK_MULTIPLE):
        if length % size == 0:
            return size
    raise ValueError(f"length {length} is not a multiple of {BLOCK_MULTIPLE}")


def block_sizes(q_length: int, k_length: int) -> pallas_flash.BlockSizes:
    """Forward and backward blocks for padded lengths (multiples of 128)."""
    block_q, block_k = _block(q_length), _block(k_length)
    return pallas_flash.BlockSizes(
        block_q=block_q,
        block_k_major=block_k,
        block_k=block_k,
        block_b=1,
        block_q_major_dkv=block_q,
        block_k_major_dkv=block_k,
        block_k_dkv=block_k,
        block_q_dkv=block_q,
        block_k_major_dq=block_k,
        block_k_dq=block_k,
        block_q_dq=block_q,
    )


def _padded(length: int) -> int:
    return -(-length // BLOCK_MULTIPLE) * BLOCK_MULTIPLE


def _segments(valid_bl: jax.Array | None, batch: int, length: int, padded: int) -> jax.Array:
    """int32 segment ids [batch, padded]: 1 for valid positions, 0 for padding."""
    ids_bl = (
        jnp.ones((batch, length), jnp.int32)
        if valid_bl is None
        else jnp.broadcast_to(valid_bl, (batch, length)).astype(jnp.int32)
    )
    return jnp.pad(ids_bl, ((0, 0), (0, padded - length)))


def _heads_major_spec(shape: tuple[int, ...]) -> jax.sharding.PartitionSpec | None:
    """Mesh axes of a [batch, heads, length, depth] operand under the logical rules in force
    (axes that do not divide their dimension dropped), or None off a mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return None
    names = ("batch", "heads", None, None)
    return rules.spec_for_shape(names, shape, mesh, axes.current_rules(), label="flash attention")


def flash_attention(
    query_bqhd: jax.Array,
    key_bkhd: jax.Array,
    value_bkhd: jax.Array,
    *,
    causal: bool,
    query_valid_bq: jax.Array | None,
    key_valid_bk: jax.Array | None,
) -> jax.Array:
    """Unscaled softmax attention -> context [b, q, h, d] in the inputs' dtype.

    Scores, softmax statistics and accumulation are float32 inside the kernel. Lengths are
    padded to multiples of 128 (padding is its own segment). Under a mesh the kernel runs
    per shard (``shard_map`` over batch and, where they divide, heads).
    """
    batch, q_length, _, _ = query_bqhd.shape
    k_length = key_bkhd.shape[1]
    q_padded, k_padded = _padded(q_length), _padded(k_length)
    needs_segments = (
        query_valid_bq is not None
        or key_valid_bk is not None
        or (q_padded, k_padded) != (q_length, k_length)
    )

    def heads_major(x_bthd: jax.Array, padded: int) -> jax.Array:
        x_bhtd = jnp.transpose(x_bthd, (0, 2, 1, 3))
        return jnp.pad(x_bhtd, ((0, 0), (0, 0), (0, padded - x_bhtd.shape[2]), (0, 0)))

    query_bhqd = heads_major(query_bqhd, q_padded)
    key_bhkd = heads_major(key_bkhd, k_padded)
    value_bhkd = heads_major(value_bkhd, k_padded)
    sizes = block_sizes(q_padded, k_padded)

    def kernel(q, k, v, q_ids=None, kv_ids=None):
        segments = None if q_ids is None else pallas_flash.SegmentIds(q=q_ids, kv=kv_ids)
        return pallas_flash.flash_attention(
            q, k, v, segment_ids=segments, causal=causal, sm_scale=1.0, block_sizes=sizes
        )

    operands = [query_bhqd, key_bhkd, value_bhkd]
    if needs_segments:
        operands += [
            _segments(query_valid_bq, batch, q_length, q_padded),
            _segments(key_valid_bk, batch, k_length, k_padded),
        ]
    spec = _heads_major_spec(query_bhqd.shape)
    if spec is None:
        context_bhqd = kernel(*operands)
    else:
        specs = [spec] * 3 + [jax.sharding.PartitionSpec(spec[0], None)] * (len(operands) - 3)
        context_bhqd = jax.shard_map(
            kernel, in_specs=tuple(specs), out_specs=spec, check_vma=False
        )(*operands)
    return jnp.transpose(context_bhqd[:, :, :q_length], (0, 2, 1, 3))

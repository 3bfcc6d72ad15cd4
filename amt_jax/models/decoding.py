"""Greedy decoding for encoder-decoder models, with and without a key/value cache.

MT3 decodes with beam size 1, i.e. greedily, up to 1024 tokens per 2.048 s segment. The
encoder runs once per batch of segments; the cross-attention keys/values are projected
once; each step then runs the decoder on one position per row, reading the self-attention
keys/values of earlier positions from a cache. The cache grows in buckets of doubling
length, so a step attends over at most twice the filled slots rather than all
``max_length``. Rows that emitted EOS keep producing PAD (0), and decoding stops as soon
as every row is done.

:func:`greedy_decode_uncached` recomputes the full decoder over the whole (fixed-shape)
prefix buffer at every step. It is the reference the cached path is tested against and
the baseline of ``tools/bench_decode.py``.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from amt_jax.partitioning.axes import constrain

#: t5x convention: decoder input position 0 holds PAD (0) as the begin-of-sequence token
BOS_ID = 0

#: cache slots of the first decoding bucket (:func:`cache_buckets`)
FIRST_BUCKET = 128


class CachedDecoder(Protocol):
    """What greedy decoding needs from a model (``MT3Model`` implements it)."""

    def decode(
        self,
        decoder_input_bl: jax.Array,
        encoded_btd: jax.Array,
        *,
        decoder_target_bl: jax.Array | None = None,
        deterministic: bool | None = None,
    ) -> jax.Array: ...

    def init_decode_cache(self, batch_size: int, max_length: int) -> Any: ...

    def extend_decode_cache(self, cache: Any, length: int) -> Any: ...

    def precompute_cross_kv(self, encoded_btd: jax.Array) -> Any: ...

    def decode_step(
        self, token_b: jax.Array, position: jax.Array, cache: Any, cross_kv: Any
    ) -> tuple[jax.Array, Any]: ...


def _finish_step(
    step: jax.Array, logits_bv: jax.Array, tokens_bl: jax.Array, done_b: jax.Array, eos_id: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Argmax, PAD for rows already done, write column ``step``, update done flags."""
    next_b = jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
    next_b = jnp.where(done_b, 0, next_b)
    tokens_bl = jax.lax.dynamic_update_slice(tokens_bl, next_b[:, None], (0, step))
    return next_b, tokens_bl, done_b | (next_b == eos_id)


def cache_buckets(max_length: int, first: int = FIRST_BUCKET) -> list[int]:
    """Cache lengths the cached decoder steps through: ``first``, doubling, ``max_length``.

    Steps ``[previous bucket, bucket)`` attend over a cache of ``bucket`` slots, so a step
    reads at most twice its filled slots, not ``max_length`` (1024 -> 128, 256, 512, 1024).
    """
    buckets = [min(first, max_length)]
    while buckets[-1] < max_length:
        buckets.append(min(2 * buckets[-1], max_length))
    return buckets


def greedy_decode(
    model: CachedDecoder,
    encoded_btd: jax.Array,
    *,
    max_length: int = 1024,
    eos_id: int = 1,
    first_bucket: int = FIRST_BUCKET,
) -> jax.Array:
    """Greedy decoding with a KV cache: int32 tokens [batch, max_length], PAD after EOS.

    One ``while_loop`` per cache bucket (:func:`cache_buckets`); between them the cache
    is extended with zero slots. A loop stops at its bucket's end or when every row is
    done (the later loops then exit at once).
    """
    batch_size = encoded_btd.shape[0]
    buckets = cache_buckets(max_length, first_bucket)
    cache = model.init_decode_cache(batch_size, buckets[0])
    cross_kv = model.precompute_cross_kv(encoded_btd)
    tokens_bl = constrain(jnp.zeros((batch_size, max_length), jnp.int32), ("batch", "length"))
    state = (
        jnp.asarray(0, jnp.int32),
        jnp.full((batch_size,), BOS_ID, jnp.int32),
        tokens_bl,
        jnp.zeros((batch_size,), bool),
        cache,
    )

    def body(state):
        step, previous_b, tokens_bl, done_b, cache = state
        logits_bv, cache = model.decode_step(previous_b, step, cache, cross_kv)
        next_b, tokens_bl, done_b = _finish_step(step, logits_bv, tokens_bl, done_b, eos_id)
        return step + 1, next_b, tokens_bl, done_b, cache

    for bucket in buckets:
        if bucket != buckets[0]:
            state = (*state[:4], model.extend_decode_cache(state[4], bucket))

        def keep_going(state, bucket=bucket):
            step, _, _, done_b, _ = state
            return (step < bucket) & ~jnp.all(done_b)

        state = jax.lax.while_loop(keep_going, body, state)
    return state[2]


def greedy_decode_uncached(
    model: CachedDecoder, encoded_btd: jax.Array, *, max_length: int = 1024, eos_id: int = 1
) -> jax.Array:
    """Greedy decoding that re-runs the whole decoder each step (no cache); same output.

    The decoder sees a fixed [batch, max_length] input buffer (BOS, then the tokens so
    far, then PAD); causal masking makes the logits at ``step`` depend only on the
    prefix, so each step costs a full-length decoder pass.
    """
    batch_size = encoded_btd.shape[0]
    tokens_bl = jnp.zeros((batch_size, max_length), jnp.int32)
    init = (jnp.asarray(0, jnp.int32), tokens_bl, jnp.zeros((batch_size,), bool))

    def keep_going(state):
        step, _, done_b = state
        return (step < max_length) & ~jnp.all(done_b)

    def body(state):
        step, tokens_bl, done_b = state
        decoder_input_bl = jnp.pad(tokens_bl[:, :-1], ((0, 0), (1, 0)), constant_values=BOS_ID)
        logits_blv = model.decode(decoder_input_bl, encoded_btd, deterministic=True)
        logits_bv = jax.lax.dynamic_index_in_dim(logits_blv, step, axis=1, keepdims=False)
        _, tokens_bl, done_b = _finish_step(step, logits_bv, tokens_bl, done_b, eos_id)
        return step + 1, tokens_bl, done_b

    _, tokens_bl, _ = jax.lax.while_loop(keep_going, body, init)
    return tokens_bl


# --- slots: rows that decode independent segments, refilled as they finish --------------------


class Slots(NamedTuple):
    """A batch of decoding rows, each on its own segment and at its own step.

    A row that emits EOS stops (``live_b`` false) and can be refilled with the next
    waiting segment (:func:`refill_slot`) while the others go on, so a batch no longer
    runs at the pace of its longest row. Row ``i`` has decoded ``position_b[i]`` tokens
    of its segment, stored in ``tokens_bl[i]`` as :func:`greedy_decode` stores them.
    """

    cache: Any
    cross_kv: Any
    position_b: jax.Array
    previous_b: jax.Array
    tokens_bl: jax.Array
    live_b: jax.Array


def start_slots(
    model: CachedDecoder,
    encoded_btd: jax.Array,
    live_b: jax.Array,
    *,
    max_length: int,
    cache_length: int,
) -> Slots:
    """Slots for ``encoded_btd``'s rows (rows with ``live_b`` false wait for a refill)."""
    batch_size = encoded_btd.shape[0]
    return Slots(
        cache=model.init_decode_cache(batch_size, cache_length),
        cross_kv=model.precompute_cross_kv(encoded_btd),
        position_b=jnp.zeros((batch_size,), jnp.int32),
        previous_b=jnp.full((batch_size,), BOS_ID, jnp.int32),
        tokens_bl=jnp.zeros((batch_size, max_length), jnp.int32),
        live_b=jnp.asarray(live_b, bool),
    )


def refill_slot(
    model: CachedDecoder, slots: Slots, encoded_1td: jax.Array, slot: jax.Array
) -> Slots:
    """Row ``slot`` restarted on a new segment (its cache needs no reset: a row only
    attends to the slots it has written since its start)."""

    def put(entry, row):
        return jax.lax.dynamic_update_index_in_dim(entry, row[0].astype(entry.dtype), slot, 0)

    cross_kv = jax.tree.map(put, slots.cross_kv, model.precompute_cross_kv(encoded_1td))
    return slots._replace(
        cross_kv=cross_kv,
        position_b=slots.position_b.at[slot].set(0),
        previous_b=slots.previous_b.at[slot].set(BOS_ID),
        tokens_bl=slots.tokens_bl.at[slot].set(0),
        live_b=slots.live_b.at[slot].set(True),
    )


def resize_slots(model: CachedDecoder, slots: Slots, cache_length: int) -> Slots:
    """The cache grown (zero slots appended) or cut to ``cache_length`` slots; cutting
    is the caller's promise that no live row has reached ``cache_length``."""
    current = jax.tree.leaves(slots.cache)[0].shape[2]
    if cache_length >= current:
        return slots._replace(cache=model.extend_decode_cache(slots.cache, cache_length))
    return slots._replace(cache=jax.tree.map(lambda x: x[:, :, :cache_length], slots.cache))


def decode_slots(
    model: CachedDecoder,
    slots: Slots,
    *,
    steps: int,
    eos_id: int,
    stop_on_finish: jax.Array,
) -> Slots:
    """Up to ``steps`` greedy steps of every live row; stops early when every row is
    done, when a live row reaches the end of the cache (the caller grows it), or, with
    ``stop_on_finish``, as soon as a row finishes (the caller refills it).

    A row's tokens are those :func:`greedy_decode` gives its segment alone.
    """
    batch_size, max_length = slots.tokens_bl.shape
    cache_length = jax.tree.leaves(slots.cache)[0].shape[2]
    rows_b = jnp.arange(batch_size)

    def keep_going(state):
        step, finished, slots = state
        furthest = jnp.max(jnp.where(slots.live_b, slots.position_b, 0))
        return (
            (step < steps)
            & jnp.any(slots.live_b)
            & ~(stop_on_finish & finished)
            & (furthest < cache_length)
        )

    def body(state):
        step, finished, slots = state
        logits_bv, cache = model.decode_step(
            slots.previous_b, slots.position_b, slots.cache, slots.cross_kv
        )
        next_b = jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
        next_b = jnp.where(slots.live_b, next_b, 0)
        tokens_bl = slots.tokens_bl.at[rows_b, slots.position_b].set(next_b, mode="drop")
        ended_b = slots.live_b & ((next_b == eos_id) | (slots.position_b + 1 >= max_length))
        slots = Slots(
            cache=cache,
            cross_kv=slots.cross_kv,
            position_b=slots.position_b + slots.live_b.astype(jnp.int32),
            previous_b=next_b,
            tokens_bl=tokens_bl,
            live_b=slots.live_b & ~ended_b,
        )
        return step + 1, finished | jnp.any(ended_b), slots

    state = (jnp.asarray(0, jnp.int32), jnp.asarray(False), slots)
    return jax.lax.while_loop(keep_going, body, state)[2]

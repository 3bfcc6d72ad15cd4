"""Greedy decoding: KV cache equals full recomputation; EOS / PAD / early-exit logic."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from amt_jax.models import decoding
from amt_jax.models.t5 import T5_SMALL, MT3Config, MT3Model

VOCAB = 64


pytestmark = pytest.mark.usefixtures("fast_compile")


@pytest.fixture(scope="module")
def tiny_model():
    return MT3Model.from_config(MT3Config.tiny(vocab_size=VOCAB), rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def encoded(tiny_model):
    inputs_btf = jax.random.normal(jax.random.key(1), (3, 12, 512))
    return nnx.jit(lambda model, x: model.encode(x, deterministic=True))(tiny_model, inputs_btf)


def test_decode_step_logits_match_teacher_forced_decoder(tiny_model, encoded):
    """Feeding a fixed sequence one step at a time through the cache gives the full logits."""
    length = 10
    tokens_bl = jax.random.randint(jax.random.key(2), (3, length), 2, VOCAB)
    decoder_input_bl = MT3Model.shift_right(tokens_bl)

    @nnx.jit
    def teacher_forced(model, decoder_input_bl, encoded):
        return model.decode(decoder_input_bl, encoded, deterministic=True)

    @nnx.jit
    def stepwise(model, decoder_input_bl, encoded):
        cross_kv = model.precompute_cross_kv(encoded)

        def step(cache, position):
            token_b = jax.lax.dynamic_index_in_dim(decoder_input_bl, position, 1, False)
            logits_bv, cache = model.decode_step(token_b, position, cache, cross_kv)
            return cache, logits_bv

        _, logits_lbv = jax.lax.scan(step, model.init_decode_cache(3, length), jnp.arange(length))
        return jnp.swapaxes(logits_lbv, 0, 1)

    full_blv = np.asarray(teacher_forced(tiny_model, decoder_input_bl, encoded))
    stepped_blv = np.asarray(stepwise(tiny_model, decoder_input_bl, encoded))
    np.testing.assert_allclose(stepped_blv, full_blv, atol=2e-5, rtol=1e-5)


def test_cached_and_uncached_greedy_decoding_agree(tiny_model, encoded):
    """Same tokens from the cached decoder stepping through 8-, 16- and 24-slot caches."""
    assert decoding.cache_buckets(24, 8) == [8, 16, 24]
    decode = nnx.jit(
        lambda model, encoded, use_cache: (
            functools.partial(decoding.greedy_decode, first_bucket=8)
            if use_cache
            else decoding.greedy_decode_uncached
        )(model, encoded, max_length=24),
        static_argnums=2,
    )
    cached = np.asarray(decode(tiny_model, encoded, True))
    uncached = np.asarray(decode(tiny_model, encoded, False))
    assert cached.shape == (3, 24) and cached.dtype == np.int32
    np.testing.assert_array_equal(cached, uncached)
    # random weights: the rows must actually differ, so equality is not trivially all-PAD
    assert len({tuple(row) for row in cached}) == 3 and (cached != 0).any()


def _random_full_size_model() -> MT3Model:
    """T5-small with random weights drawn on the host (nnx's initialisers take ~40 s for
    46 M parameters on a loaded 2-core CPU): N(0, 1 / fan-in) kernels, unit norm scales."""
    abstract = nnx.eval_shape(lambda: MT3Model.from_config(T5_SMALL, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(0)

    def fill(leaf):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.key(0)
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            return jnp.zeros(leaf.shape, leaf.dtype)
        if len(leaf.shape) == 1:
            return jnp.ones(leaf.shape, leaf.dtype)
        draws = rng.standard_normal(leaf.shape, dtype=np.float32)
        return jnp.asarray(draws / np.sqrt(leaf.shape[0]))

    return nnx.merge(graphdef, jax.tree.map(fill, state))


def test_full_size_cached_decoding_matches_the_reference_across_buckets():
    """T5-small (MT3's size): the cached decoder's tokens equal full recomputation's over
    8 steps that cross a cache-bucket boundary (4 -> 8 slots)."""
    model = _random_full_size_model()
    # unit-RMS stand-in for the encoder's (RMS-normed) output: the encoder is not under test
    encoded_btd = jax.random.normal(jax.random.key(1), (1, T5_SMALL.inputs_length, 512))

    @functools.partial(nnx.jit, static_argnums=2)
    def decode(model, encoded_btd, use_cache):
        if use_cache:
            return decoding.greedy_decode(
                model, encoded_btd, max_length=8, eos_id=-1, first_bucket=4
            )
        return decoding.greedy_decode_uncached(model, encoded_btd, max_length=8, eos_id=-1)

    cached = np.asarray(decode(model, encoded_btd, True))
    np.testing.assert_array_equal(cached, np.asarray(decode(model, encoded_btd, False)))
    assert len(set(cached.ravel().tolist())) > 2


class ScriptedDecoder:
    """A decoder whose step ``t`` for row ``b`` puts all mass on ``script[b, t]``."""

    def __init__(self, script_bl: np.ndarray, vocab: int = 8):
        self.script_bl = jnp.asarray(script_bl)
        self.vocab = vocab

    def init_decode_cache(self, batch_size, max_length):
        return jnp.zeros((), jnp.int32)

    def extend_decode_cache(self, cache, length):
        return cache

    def precompute_cross_kv(self, encoded_btd):
        return None

    def decode_step(self, token_b, position, cache, cross_kv):
        target_b = jax.lax.dynamic_index_in_dim(self.script_bl, position, 1, keepdims=False)
        return jax.nn.one_hot(target_b, self.vocab) * 10.0, cache

    def decode(self, decoder_input_bl, encoded_btd, *, decoder_target_bl=None, deterministic=None):
        return jax.nn.one_hot(self.script_bl, self.vocab) * 10.0


def test_rows_stop_at_eos_and_loop_exits_early(monkeypatch):
    script = np.array(
        [
            [3, 4, 1, 5, 6, 7, 3, 3],  # EOS at step 2, later tokens must become PAD
            [5, 1, 7, 7, 7, 7, 7, 7],  # EOS at step 1
            [2, 3, 4, 5, 1, 6, 6, 6],  # EOS at step 4: the loop stops after 5 steps
        ],
        np.int32,
    )
    expected = np.array(
        [[3, 4, 1, 0, 0, 0, 0, 0], [5, 1, 0, 0, 0, 0, 0, 0], [2, 3, 4, 5, 1, 0, 0, 0]]
    )
    model = ScriptedDecoder(script)
    encoded = jnp.zeros((3, 2, 4))
    steps_taken = []
    original_while = jax.lax.while_loop

    def counting_while(cond, body, init):
        final = original_while(cond, body, init)
        steps_taken.append(int(final[0]))
        return final

    monkeypatch.setattr(jax.lax, "while_loop", counting_while)
    tokens = decoding.greedy_decode(model, encoded, max_length=8, eos_id=1)
    np.testing.assert_array_equal(np.asarray(tokens), expected)
    assert steps_taken == [5]
    tokens = decoding.greedy_decode_uncached(model, encoded, max_length=8, eos_id=1)
    np.testing.assert_array_equal(np.asarray(tokens), expected)
    assert steps_taken == [5, 5]
    # cache buckets of 2, 4, 8 slots: one loop each, the last stops after step 4
    tokens = decoding.greedy_decode(model, encoded, max_length=8, eos_id=1, first_bucket=2)
    np.testing.assert_array_equal(np.asarray(tokens), expected)
    assert steps_taken[2:] == [2, 4, 5]
    # no EOS anywhere: runs to max_length
    no_eos = ScriptedDecoder(np.full((2, 6), 4, np.int32))
    tokens = decoding.greedy_decode(no_eos, jnp.zeros((2, 2, 4)), max_length=6, eos_id=1)
    np.testing.assert_array_equal(np.asarray(tokens), 4)
    assert steps_taken[-1] == 6

"""Shared layers: positions, RMSNorm, dense init, attention numerics and masks, dropout.

The XLA:CPU kernels' equivalence with the reference forms: test_cpu_kernels.py."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from amt_jax.models import layers


def test_sinusoidal_positions_match_hand_values():
    table = layers.sinusoidal_positions(2048, 512)
    assert table.shape == (2048, 512) and table.dtype == np.float32
    # position 0: sin half is 0, cos half is 1
    np.testing.assert_array_equal(table[0, :256], 0.0)
    np.testing.assert_array_equal(table[0, 256:], 1.0)
    # channel 0 has timescale 1, channel 255 timescale 10000 (sin | cos halves, not interleaved)
    assert table[1, 0] == pytest.approx(math.sin(1.0), abs=1e-7)
    assert table[1, 256] == pytest.approx(math.cos(1.0), abs=1e-7)
    assert table[7, 255] == pytest.approx(math.sin(7 / 10_000), abs=1e-7)
    assert table[7, 511] == pytest.approx(math.cos(7 / 10_000), abs=1e-7)
    # channel 100: timescale 10000 ** (100 / 255)
    assert table[300, 100] == pytest.approx(math.sin(300 / 10_000 ** (100 / 255)), abs=1e-6)


def test_rms_norm_matches_hand_computation():
    norm = layers.RMSNorm(4, rngs=nnx.Rngs(0))
    norm.scale[...] = jnp.array([1.0, 2.0, 0.5, -1.0])
    x = np.array([[3.0, -4.0, 0.0, 1e-4]], np.float32)
    rms = math.sqrt((9 + 16 + 1e-8) / 4 + 1e-6)
    expected = x / rms * np.array([1.0, 2.0, 0.5, -1.0])
    np.testing.assert_allclose(np.asarray(norm(jnp.asarray(x))), expected, rtol=1e-6)
    # no mean subtraction: a constant input is not mapped to zero
    assert np.all(np.asarray(norm(jnp.ones((1, 4)))) != 0)


def test_attention_init_folds_query_scaling_and_uses_fan_in():
    attention = layers.MultiHeadAttention(
        512, 6, 64, dropout_rate=0.0, q_axis="length", kv_axis="length", rngs=nnx.Rngs(0)
    )
    assert attention.query.kernel.shape == (512, 6, 64)
    assert attention.out.kernel.shape == (6, 64, 512)
    std = lambda p: float(np.std(np.asarray(p[...])))
    # key/value: N(0, 1/fan_in) with fan_in 512 (not 512 * 6); query also / sqrt(64)
    assert std(attention.key.kernel) == pytest.approx(1 / math.sqrt(512), rel=0.02)
    assert std(attention.value.kernel) == pytest.approx(1 / math.sqrt(512), rel=0.02)
    assert std(attention.query.kernel) == pytest.approx(1 / math.sqrt(512) / 8, rel=0.02)
    assert std(attention.out.kernel) == pytest.approx(1 / math.sqrt(384), rel=0.02)


@pytest.mark.parametrize("kernels", ["reference", "cpu"])
def test_attention_is_unscaled_softmax_with_mask(kernels):
    rngs = nnx.Rngs(1)
    attention = layers.MultiHeadAttention(
        8, 2, 4, dropout_rate=0.0, q_axis="length", kv_axis="time", kernels=kernels, rngs=rngs
    )
    x_q = jax.random.normal(jax.random.key(2), (1, 3, 8))
    x_kv = jax.random.normal(jax.random.key(3), (1, 5, 8))
    mask = jnp.array([True, True, False, True, False])[None, None, None, :]
    got = np.asarray(attention(x_q, x_kv, mask, deterministic=True))

    wq, wk, wv, wo = (np.asarray(m.kernel[...]) for m in (
        attention.query, attention.key, attention.value, attention.out))  # fmt: skip
    q = np.einsum("bte,ehd->bthd", x_q, wq)
    k = np.einsum("bte,ehd->bthd", x_kv, wk)
    v = np.einsum("bte,ehd->bthd", x_kv, wv)
    scores = np.einsum("bqhd,bkhd->bhqk", q, k)  # no 1/sqrt(d)
    scores = np.where(np.asarray(mask), scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    expected = np.einsum("bqhd,hde->bqe", np.einsum("bhqk,bkhd->bqhd", probs, v), wo)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernels", ["reference", "cpu"])
def test_attention_dropout_is_shared_across_queries(kernels):
    attention = layers.MultiHeadAttention(
        4,
        1,
        4,
        dropout_rate=0.5,
        q_axis="length",
        kv_axis="length",
        kernels=kernels,
        rngs=nnx.Rngs(4),
    )
    # identity value/out projections expose the (dropped-out) probabilities per key
    attention.value.kernel[...] = jnp.eye(4).reshape(4, 1, 4)
    attention.out.kernel[...] = jnp.eye(4).reshape(1, 4, 4)
    x = jnp.eye(4)[None]  # key j writes into channel j
    out = np.asarray(attention(x, x, None, deterministic=False))[0]  # [query, key channel]
    dropped = out == 0
    assert dropped.any() and not dropped.all()
    assert (dropped == dropped[0:1]).all()  # same keys dropped for every query


def test_masks():
    np.testing.assert_array_equal(
        np.asarray(layers.causal_mask(3))[0, 0], np.tril(np.ones((3, 3), bool))
    )
    valid = jnp.array([[True, True, False]])
    mask = np.asarray(layers.padding_mask(valid, jnp.array([[True, False]])))
    assert mask.shape == (1, 1, 3, 2)
    np.testing.assert_array_equal(mask[0, 0], [[True, False], [True, False], [False, False]])


def test_params_carry_logical_axes():
    dense = layers.DenseGeneral(
        3,
        (2, 5),
        axis_names=("embed", "heads", "kv"),
        kernel_init=layers.fan_in_init("normal", 1),
        rngs=nnx.Rngs(0),
    )
    assert dense.kernel.get_metadata()["out_sharding"] == ("embed", "heads", "kv")
    with pytest.raises(ValueError, match="Unknown logical axis"):
        layers.logical_param(jax.nn.initializers.ones, jax.random.key(0), (2,), ("nope",))
    with pytest.raises(ValueError, match="trailing input axes"):
        dense(jnp.ones((1, 4)))


@pytest.mark.parametrize("kernels", ["reference", "cpu"])
def test_dropout_is_unbiased_fresh_per_call_and_shares_broadcast_dims(kernels):
    ones = jnp.ones((4, 257, 301))
    dropout = layers.Dropout(0.1, kernels=kernels, rngs=nnx.Rngs(dropout=3))
    out = np.asarray(dropout(ones, deterministic=False))
    kept = out != 0
    # 310k Bernoulli draws: the keep fraction is within 5 standard errors of 0.9
    assert abs(kept.mean() - 0.9) < 5 * math.sqrt(0.09 / kept.size) + 1e-5
    assert abs(out.mean() - 1.0) < 0.01  # kept values scaled by 1 / keep probability
    assert (np.asarray(dropout(ones, deterministic=False)) != out).any()
    np.testing.assert_array_equal(dropout(ones, deterministic=True), ones)

    shared = layers.Dropout(0.5, broadcast_dims=(1,), kernels=kernels, rngs=nnx.Rngs(dropout=0))
    mask = np.asarray(shared(ones, deterministic=False)) != 0
    assert (mask == mask[:, :1]).all()
    assert 0.4 < mask.mean() < 0.6


def test_kernels_must_be_known():
    with pytest.raises(ValueError, match="kernels"):
        layers.Dropout(0.1, kernels="gpu")

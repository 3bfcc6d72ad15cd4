"""Shared layers: positions, RMSNorm, dense init, attention numerics and masks."""

import math
import re

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


def test_attention_is_unscaled_softmax_with_mask():
    rngs = nnx.Rngs(1)
    attention = layers.MultiHeadAttention(
        8, 2, 4, dropout_rate=0.0, q_axis="length", kv_axis="time", rngs=rngs
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


def test_attention_dropout_is_shared_across_queries():
    attention = layers.MultiHeadAttention(
        4, 1, 4, dropout_rate=0.5, q_axis="length", kv_axis="length", rngs=nnx.Rngs(4)
    )
    # identity value/out projections expose the (dropped-out) probabilities per key
    attention.value.kernel[...] = jnp.eye(4).reshape(4, 1, 4)
    attention.out.kernel[...] = jnp.eye(4).reshape(1, 4, 4)
    x = jnp.eye(4)[None]  # key j writes into channel j
    out = np.asarray(attention(x, x, None, deterministic=False))[0]  # [query, key channel]
    dropped = out == 0
    assert dropped.any() and not dropped.all()
    assert (dropped == dropped[0:1]).all()  # same keys dropped for every query


def test_attention_dropout_on_values_equals_dropping_probabilities():
    """attend() masks value rows; the result must equal dropping probability columns."""
    attention = layers.MultiHeadAttention(
        8, 2, 4, dropout_rate=0.4, q_axis="length", kv_axis="time", rngs=nnx.Rngs(7)
    )
    twin = nnx.clone(attention)  # same RNG state: draws the same mask
    x_q = jax.random.normal(jax.random.key(2), (2, 3, 8))
    x_kv = jax.random.normal(jax.random.key(3), (2, 5, 8))
    got = np.asarray(attention(x_q, x_kv, None, deterministic=False))

    keep_bh1k = np.asarray(twin.dropout.keep_mask((2, 2, 1, 5), deterministic=False))
    assert keep_bh1k.any() and not keep_bh1k.all()
    wq, wk, wv, wo = (np.asarray(m.kernel[...]) for m in (
        attention.query, attention.key, attention.value, attention.out))  # fmt: skip
    q = np.einsum("bte,ehd->bthd", x_q, wq)
    k = np.einsum("bte,ehd->bthd", x_kv, wk)
    v = np.einsum("bte,ehd->bthd", x_kv, wv)
    scores = np.einsum("bqhd,bkhd->bhqk", q, k)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    probs = np.where(keep_bh1k, probs * twin.dropout.keep_scale, 0.0)
    expected = np.einsum("bqhd,hde->bqe", np.einsum("bhqk,bkhd->bqhd", probs, v), wo)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


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


@pytest.mark.parametrize(
    ("x_shape", "kernel_shape", "num_in"),
    [
        ((2, 5, 6), (6, 3), 1),  # wide input: weight gradient via the transposed product
        ((2, 5, 3), (3, 6), 1),  # narrow input: plain x^T g
        ((4, 3, 2), (3, 2, 4), 2),  # two contracted axes (attention output projection)
        ((4, 6), (6, 2, 2), 1),  # two output axes (q/k/v projections)
        ((4, 2), (2, 2, 3), 1),  # two output axes, narrow input
    ],
)
def test_contract_trailing_gradients_equal_dot_general(x_shape, kernel_shape, num_in):
    key_x, key_k, key_g = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(key_x, x_shape)
    kernel = jax.random.normal(key_k, kernel_shape)
    out_shape = x_shape[: len(x_shape) - num_in] + kernel_shape[num_in:]
    cotangent = jax.random.normal(key_g, out_shape)
    dims = ((tuple(range(len(x_shape) - num_in, len(x_shape))), tuple(range(num_in))), ((), ()))

    def reference(x, kernel):
        return jax.lax.dot_general(x, kernel, dims)

    out, vjp = jax.vjp(lambda x, k: layers.contract_trailing(x, k, num_in), x, kernel)
    ref_out, ref_vjp = jax.vjp(reference, x, kernel)
    np.testing.assert_allclose(out, ref_out, rtol=1e-6)
    for got, want in zip(vjp(cotangent), ref_vjp(cotangent), strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("fn", "spec", "lhs_shape", "rhs_shape"),
    [
        # distinct b, q, k, h, d sizes so a swapped axis cannot pass
        (layers.attention_scores, "bqhd,bkhd->bhqk", (2, 3, 4, 5), (2, 7, 4, 5)),
        (layers.attention_context, "bhqk,bkhd->bqhd", (2, 4, 3, 7), (2, 7, 4, 5)),
    ],
)
def test_attention_einsums_match_jnp_einsum_and_its_gradients(fn, spec, lhs_shape, rhs_shape):
    key_a, key_b, key_g = jax.random.split(jax.random.key(1), 3)
    lhs = jax.random.normal(key_a, lhs_shape)
    rhs = jax.random.normal(key_b, rhs_shape)
    out, vjp = jax.vjp(fn, lhs, rhs)
    ref_out, ref_vjp = jax.vjp(lambda a, b: jnp.einsum(spec, a, b), lhs, rhs)
    np.testing.assert_allclose(out, ref_out, rtol=1e-6)
    cotangent = jax.random.normal(key_g, out.shape)
    for got, want in zip(vjp(cotangent), ref_vjp(cotangent), strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.perf
@pytest.mark.cpu_only
def test_tiny_mt3_train_step_runs_every_gemm_on_the_fast_cpu_path():
    """No dot of the compiled train step is left for XLA:CPU's slow Eigen fallback.

    XLA:CPU sends a dot to YNNPACK (inside a fusion) only if its left operand is contracted
    on its last axis; any other dot stays a top-level Eigen call at about half the rate.
    Before the custom backwards of ``attention_scores`` / ``attention_context`` and the
    barrier in ``contract_trailing``, the attention key/value and ``wo`` weight gradients
    landed there (40 dots per T5-small step).
    """
    from amt_jax.models.t5 import MT3Config, MT3Model
    from amt_jax.partitioning import mesh as mesh_lib
    from amt_jax.train.optimizers import mt3_adafactor
    from amt_jax.train.trainer import Trainer, model_factory

    config = MT3Config.tiny()
    mesh = mesh_lib.make_mesh(data=1, model=1, devices=jax.devices()[:1])
    trainer = Trainer(model_factory(MT3Model, config), mt3_adafactor(), mesh)
    rng = np.random.default_rng(0)
    batch = trainer.global_batch(
        {
            "audio_bs": rng.standard_normal((2, 128 * config.inputs_length), np.float32),
            "targets_bl": rng.integers(3, 100, (2, config.targets_length), np.int32),
        }
    )
    hlo = trainer.lower_train_step(trainer.init_state(), batch).compile().as_text()
    if "ynn_fusion" not in hlo:
        pytest.skip("this XLA:CPU build does not use YNNPACK for dots")
    entry = hlo[hlo.index("\nENTRY") :]
    eigen_dots = re.findall(r"^\s*%\S+ = (\S+ dot\(.*)$", entry, re.M)
    assert not eigen_dots, [line[:160] for line in eigen_dots[:3]]


def test_dropout_keeps_the_stated_fraction_unbiased_and_shares_broadcast_dims():
    dropout = layers.Dropout(0.1, rngs=nnx.Rngs(dropout=3))
    ones = jnp.ones((4, 257, 301))  # odd last axis: the two 16-bit halves are trimmed
    out = np.asarray(dropout(ones, deterministic=False))
    kept = out != 0
    threshold = round(0.9 * 65536)
    # kept values are scaled by the exact inverse of the 16-bit keep probability
    np.testing.assert_allclose(out[kept], 65536 / threshold, rtol=1e-6)
    # 310k Bernoulli draws: the keep fraction is within 5 standard errors of 0.9
    assert abs(kept.mean() - threshold / 65536) < 5 * math.sqrt(0.09 / kept.size)
    # both halves of the random words are used and independent of each other
    first, second = kept[..., :150], kept[..., 151:]
    assert abs(first.mean() - second.mean()) < 0.01
    assert abs((first & second).mean() - first.mean() * second.mean()) < 0.01
    # a fresh call draws a fresh mask; deterministic passes the input through
    assert (np.asarray(dropout(ones, deterministic=False)) != out).any()
    np.testing.assert_array_equal(dropout(ones, deterministic=True), ones)

    shared = layers.Dropout(0.5, broadcast_dims=(1,), rngs=nnx.Rngs(dropout=0))
    mask = np.asarray(shared(ones, deterministic=False)) != 0
    assert (mask == mask[:, :1]).all()
    assert 0.4 < mask.mean() < 0.6

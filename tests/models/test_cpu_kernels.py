"""XLA:CPU's forms of T5 (models/cpu_kernels.py) equal the reference forms in models/layers.py,
in values and gradients, and "auto" picks them exactly when the step is compiled for CPU."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax._src.mesh import AbstractDevice  # no public constructor for a TPU abstract mesh

from amt_jax.models import cpu_kernels, layers


def _normal(key, shape):
    return jax.random.normal(jax.random.key(key), shape)


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
    x = _normal(0, x_shape)
    kernel = _normal(1, kernel_shape)
    out_shape = x_shape[: len(x_shape) - num_in] + kernel_shape[num_in:]
    cotangent = _normal(2, out_shape)
    dims = ((tuple(range(len(x_shape) - num_in, len(x_shape))), tuple(range(num_in))), ((), ()))

    def reference(x, kernel):
        return jax.lax.dot_general(x, kernel, dims)

    out, vjp = jax.vjp(lambda x, k: cpu_kernels.contract_trailing(x, k, num_in), x, kernel)
    ref_out, ref_vjp = jax.vjp(reference, x, kernel)
    np.testing.assert_allclose(out, ref_out, rtol=1e-6)
    for got, want in zip(vjp(cotangent), ref_vjp(cotangent), strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("fn", "spec", "lhs_shape", "rhs_shape"),
    [
        # distinct b, q, k, h, d sizes so a swapped axis cannot pass
        (cpu_kernels.attention_scores, "bqhd,bkhd->bhqk", (2, 3, 4, 5), (2, 7, 4, 5)),
        (cpu_kernels.attention_context, "bhqk,bkhd->bqhd", (2, 4, 3, 7), (2, 7, 4, 5)),
    ],
)
def test_attention_einsums_match_jnp_einsum_and_its_gradients(fn, spec, lhs_shape, rhs_shape):
    lhs = _normal(3, lhs_shape)
    rhs = _normal(4, rhs_shape)
    out, vjp = jax.vjp(fn, lhs, rhs)
    ref_out, ref_vjp = jax.vjp(lambda a, b: jnp.einsum(spec, a, b), lhs, rhs)
    np.testing.assert_allclose(out, ref_out, rtol=1e-6)
    cotangent = _normal(5, out.shape)
    for got, want in zip(vjp(cotangent), ref_vjp(cotangent), strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _qkv_and_bias():
    # distinct batch 2, queries 3, keys 5, heads 4, depth 6
    query, key, value = _normal(6, (2, 3, 4, 6)), _normal(7, (2, 5, 4, 6)), _normal(8, (2, 5, 4, 6))
    mask_bhqk = jnp.array([True, False, True, True, False])[None, None, None, :]
    bias_bhqk = jnp.where(mask_bhqk, 0.0, layers.NEG_INF)
    return query, key, value, bias_bhqk


def _assert_same_values_and_gradients(fn, reference, args, cotangent_seed=9):
    out, vjp = jax.vjp(fn, *args)
    ref_out, ref_vjp = jax.vjp(reference, *args)
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-6)
    cotangent = _normal(cotangent_seed, out.shape)
    for got, want in zip(vjp(cotangent), ref_vjp(cotangent), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_dot_product_attention_equals_the_reference_without_dropout():
    query, key, value, bias = _qkv_and_bias()
    _assert_same_values_and_gradients(
        lambda q, k, v: cpu_kernels.dot_product_attention(q, k, v, bias),
        lambda q, k, v: layers.dot_product_attention(q, k, v, bias),
        (query, key, value),
    )


def test_attention_dropout_on_values_equals_dropping_probability_columns():
    """The CPU form masks value rows; values and gradients must equal masking probabilities."""
    query, key, value, bias = _qkv_and_bias()
    dropout_key, rate = jax.random.key(10), 0.4
    keep_bh1k = cpu_kernels.keep_mask(dropout_key, (2, 4, 1, 5), rate)
    assert keep_bh1k.any() and not keep_bh1k.all()

    def masked_probabilities(q, k, v):
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) + bias
        probs = jax.nn.softmax(scores, axis=-1)
        probs = jnp.where(keep_bh1k, probs * cpu_kernels.keep_scale(rate), 0.0)
        return jnp.einsum("bhqk,bkhd->bqhd", probs, v)

    _assert_same_values_and_gradients(
        lambda q, k, v: cpu_kernels.dot_product_attention(
            q, k, v, bias, dropout_key=dropout_key, dropout_rate=rate
        ),
        masked_probabilities,
        (query, key, value),
    )


def test_16_bit_dropout_keeps_the_stated_fraction_unbiased_from_both_halves():
    ones = jnp.ones((4, 257, 301))  # odd last axis: the two 16-bit halves are trimmed
    out = np.asarray(cpu_kernels.dropout(ones, jax.random.key(3), 0.1))
    kept = out != 0
    threshold = round(0.9 * 65536)
    assert cpu_kernels.keep_threshold(0.1) == threshold
    # kept values are scaled by the exact inverse of the 16-bit keep probability
    np.testing.assert_allclose(out[kept], 65536 / threshold, rtol=1e-6)
    assert abs(kept.mean() - threshold / 65536) < 5 * math.sqrt(0.09 / kept.size)
    # both halves of the random words are used and independent of each other
    first, second = kept[..., :150], kept[..., 151:]
    assert abs(first.mean() - second.mean()) < 0.01
    assert abs((first & second).mean() - first.mean() * second.mean()) < 0.01
    assert not np.asarray(cpu_kernels.dropout(ones, jax.random.key(3), 1.0)).any()


def test_dropout_layer_takes_one_key_per_call_in_either_form():
    counts = {}
    for kernels in ("reference", "cpu"):
        dropout = layers.Dropout(0.3, kernels=kernels, rngs=nnx.Rngs(dropout=0))
        for _ in range(3):
            dropout(jnp.ones((2, 8)), deterministic=False)
        dropout(jnp.ones((2, 8)), deterministic=True)  # draws nothing
        counts[kernels] = int(dropout.rngs.count[...])
    assert counts == {"reference": 3, "cpu": 3}


def _tiny_mt3(kernels):
    from amt_jax.models.t5 import MT3Config, MT3Model

    config = MT3Config.tiny(kernels=kernels, inputs_length=16, targets_length=12)
    return MT3Model(config, rngs=nnx.Rngs(0))


def test_tiny_mt3_loss_and_gradients_are_the_same_with_either_kernels():
    rng = np.random.default_rng(0)
    batch = {
        "inputs_btf": jnp.asarray(rng.standard_normal((2, 16, 512), np.float32)),
        "targets_bl": jnp.asarray(rng.integers(3, 100, (2, 12), np.int32)),
    }
    results = {}
    for kernels in ("reference", "cpu"):
        model = _tiny_mt3(kernels)
        model.eval()  # dropout off: the two forms draw different masks
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        @jax.jit
        def loss_and_grads(params, rest, batch, graphdef=graphdef):
            def loss(params):
                return nnx.merge(graphdef, params, rest).loss(batch)[0]

            return jax.value_and_grad(loss)(params)

        results[kernels] = loss_and_grads(params, rest, batch)
    (ref_loss, ref_grads), (cpu_loss, cpu_grads) = results["reference"], results["cpu"]
    np.testing.assert_allclose(cpu_loss, ref_loss, rtol=1e-6)
    ref_leaves, cpu_leaves = jax.tree.leaves(ref_grads), jax.tree.leaves(cpu_grads)
    assert len(ref_leaves) == len(cpu_leaves) > 30
    for got, want in zip(cpu_leaves, ref_leaves, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def _dense_gradient_primitives(mesh):
    dense = layers.DenseGeneral(
        6, 3, axis_names=("embed", "mlp"), kernel_init=layers.fan_in_init("normal", 1),
        kernels="auto", rngs=nnx.Rngs(0),
    )  # fmt: skip
    graphdef, params = nnx.split(dense)

    def loss(params, x):
        return jnp.sum(nnx.merge(graphdef, params)(x))

    with jax.sharding.use_abstract_mesh(mesh):
        jaxpr = jax.make_jaxpr(jax.grad(loss))(params, jnp.ones((4, 6)))
    return str(jaxpr)


def test_auto_kernels_are_the_cpu_ones_only_when_compiling_for_cpu():
    cpu_mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    tpu_mesh = jax.sharding.AbstractMesh(
        (2,),
        ("data",),
        axis_types=(jax.sharding.AxisType.Auto,),
        abstract_device=AbstractDevice("TPU v5 lite", 1, "tpu"),
    )
    assert "optimization_barrier" in _dense_gradient_primitives(cpu_mesh.abstract_mesh)
    # an ahead-of-time compile for TPU from this CPU host traces the plain dot_general
    assert "optimization_barrier" not in _dense_gradient_primitives(tpu_mesh)
    assert layers.uses_cpu_kernels("auto")  # no mesh: the default backend (CPU here)
    assert not layers.uses_cpu_kernels("reference") and layers.uses_cpu_kernels("cpu")


def _eigen_dots_of_tiny_mt3_train_step(kernels):
    """Dots of the compiled step left for XLA:CPU's slow Eigen fallback (None: no YNNPACK)."""
    from amt_jax.models.t5 import MT3Config, MT3Model
    from amt_jax.partitioning import mesh as mesh_lib
    from amt_jax.train.optimizers import mt3_adafactor
    from amt_jax.train.trainer import Trainer, model_factory

    config = MT3Config.tiny(kernels=kernels)
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
        return None
    entry = hlo[hlo.index("\nENTRY") :]
    return re.findall(r"^\s*%\S+ = (\S+ dot\(.*)$", entry, re.M)


@pytest.mark.perf
@pytest.mark.cpu_only
def test_tiny_mt3_train_step_runs_every_gemm_on_the_fast_cpu_path():
    """No dot of the compiled train step is left for XLA:CPU's slow Eigen fallback.

    XLA:CPU sends a dot to YNNPACK (inside a fusion) only if its left operand is contracted
    on its last axis; any other dot stays a top-level Eigen call at about half the rate.
    With the reference kernels the attention key/value and ``wo`` weight gradients land
    there (40 dots per T5-small step); "auto" on CPU must pick the kernels that avoid it.
    """
    eigen_dots = _eigen_dots_of_tiny_mt3_train_step("auto")
    if eigen_dots is None:
        pytest.skip("this XLA:CPU build does not use YNNPACK for dots")
    assert not eigen_dots, [line[:160] for line in eigen_dots[:3]]
    assert _eigen_dots_of_tiny_mt3_train_step("reference")  # what the CPU kernels avoid

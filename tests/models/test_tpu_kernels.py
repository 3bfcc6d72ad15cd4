"""The TPU flash-attention form equals the reference attention (Pallas's TPU interpreter)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.experimental.pallas import tpu as pltpu

from amt_jax.models import layers, tpu_kernels


def _normal(seed, shape):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _reference(query, key, value, mask):
    dense = mask.dense(query.shape[1], key.shape[1])
    bias = None if dense is None else jnp.where(dense, 0.0, layers.NEG_INF)
    return layers.dot_product_attention(query, key, value, bias)


def _flash(query, key, value, mask):
    return tpu_kernels.flash_attention(
        query,
        key,
        value,
        causal=mask.causal,
        query_valid_bq=mask.query_valid_bq,
        key_valid_bk=mask.key_valid_bk,
    )


@pytest.mark.parametrize(
    "kind, q_length, k_length",
    [("self", 100, 100), ("cross", 90, 128), ("unmasked", 128, 256)],
)
def test_flash_attention_equals_the_reference_at_valid_queries(kind, q_length, k_length):
    batch, heads, depth = 2, 2, 64
    query = _normal(0, (batch, q_length, heads, depth))
    key = _normal(1, (batch, k_length, heads, depth))
    value = _normal(2, (batch, k_length, heads, depth))
    lengths = jnp.array([q_length - 27, q_length])  # row 0 ends in padding
    valid_bq = jnp.arange(q_length)[None, :] < lengths[:, None]
    mask = {
        "self": layers.AttentionMask(causal=True, query_valid_bq=valid_bq, key_valid_bk=valid_bq),
        "cross": layers.AttentionMask(query_valid_bq=valid_bq),
        "unmasked": layers.AttentionMask(),
    }[kind]
    # the loss reads valid queries only (as MT3's loss does): padding queries may differ
    weight_bq = valid_bq if kind != "unmasked" else jnp.ones_like(valid_bq)
    cotangent = _normal(3, query.shape) * weight_bq[:, :, None, None]

    def loss(attention):
        return lambda q, k, v: jnp.sum(attention(q, k, v, mask) * cotangent)

    want, want_grads = jax.value_and_grad(loss(_reference), argnums=(0, 1, 2))(query, key, value)
    with pltpu.force_tpu_interpret_mode():  # the kernel's forward and backward, on CPU
        got, got_grads = jax.value_and_grad(loss(_flash), argnums=(0, 1, 2))(query, key, value)
        context = np.asarray(_flash(query, key, value, mask))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for got_grad, want_grad in zip(got_grads, want_grads, strict=True):
        # float32 sums in another order: equal to 1e-5 of the gradient's scale
        scale = float(np.abs(want_grad).max())
        np.testing.assert_allclose(got_grad, want_grad, rtol=1e-5, atol=1e-5 * scale)
    reference = np.asarray(_reference(query, key, value, mask))
    valid = np.asarray(weight_bq)
    np.testing.assert_allclose(context[valid], reference[valid], rtol=1e-5, atol=1e-5)


def test_block_sizes_divide_the_padded_lengths():
    sizes = tpu_kernels.block_sizes(1024, 256)
    assert (sizes.block_q, sizes.block_k_major, sizes.block_k) == (512, 256, 256)
    assert tpu_kernels.block_sizes(384, 128).block_q == 128
    with pytest.raises(ValueError, match="multiple of 128"):
        tpu_kernels.block_sizes(100, 128)


def test_tiny_mt3_loss_and_gradients_are_the_same_with_the_flash_kernel():
    from amt_jax.models.t5 import MT3Config, MT3Model

    rng = np.random.default_rng(0)
    targets_bl = rng.integers(3, 100, (2, 12)).astype(np.int32)
    targets_bl[0, 9:] = 0  # padding: the masks carry per-row validity
    batch = {
        "inputs_btf": jnp.asarray(rng.standard_normal((2, 16, 512), np.float32)),
        "targets_bl": jnp.asarray(targets_bl),
    }
    results = {}
    for kernels in ("reference", "tpu"):
        config = MT3Config.tiny(
            kernels=kernels,
            inputs_length=16,
            targets_length=12,
            num_encoder_layers=1,
            num_decoder_layers=1,
        )
        model = MT3Model(config, rngs=nnx.Rngs(0))
        model.eval()
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def loss(params, graphdef=graphdef, rest=rest):
            return nnx.merge(graphdef, params, rest).loss(batch)[0]

        with pltpu.force_tpu_interpret_mode():
            results[kernels] = jax.value_and_grad(loss)(params)
    (ref_loss, ref_grads), (tpu_loss, tpu_grads) = results["reference"], results["tpu"]
    np.testing.assert_allclose(tpu_loss, ref_loss, rtol=1e-5)
    ref_leaves, tpu_leaves = jax.tree.leaves(ref_grads), jax.tree.leaves(tpu_grads)
    assert len(ref_leaves) == len(tpu_leaves) > 20
    for got, want in zip(tpu_leaves, ref_leaves, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_auto_kernels_are_the_flash_ones_when_compiling_for_tpu():
    from jax._src.mesh import AbstractDevice  # no public constructor for a TPU abstract mesh

    tpu_mesh = jax.sharding.AbstractMesh(
        (2,),
        ("data",),
        axis_types=(jax.sharding.AxisType.Auto,),
        abstract_device=AbstractDevice("TPU v5 lite", 1, "tpu"),
    )
    with jax.sharding.use_abstract_mesh(tpu_mesh):
        assert layers.resolve_kernels("auto") == "tpu"
        assert not layers.uses_cpu_kernels("auto")
    assert layers.resolve_kernels("auto") == "cpu"
    with pytest.raises(ValueError, match="kernels must be one of"):
        layers.check_kernels("gpu")


def test_auto_dtype_is_bfloat16_when_built_for_an_accelerator():
    """t5x's mixed precision by default off CPU: every family's ``dtype="auto"``."""
    from amt_jax.models import platform
    from amt_jax.models.nmp import NMP, NMPConfig
    from amt_jax.models.onsets_frames import OnsetsFrames, OnsetsFramesConfig
    from amt_jax.models.t5 import MT3Config, MT3Model

    def dtypes():
        mt3 = nnx.eval_shape(lambda: MT3Model(MT3Config.tiny(), rngs=nnx.Rngs(0)))
        onsets_frames = nnx.eval_shape(lambda: OnsetsFrames(OnsetsFramesConfig(), rngs=nnx.Rngs(0)))
        nmp = nnx.eval_shape(lambda: NMP(NMPConfig(), rngs=nnx.Rngs(0)))
        return (
            str(mt3.encoder.layers[0].mlp.wi_0.dtype),
            str(onsets_frames.onset_stack.dtype),
            nmp.compute_dtype,
        )

    assert MT3Config().dtype == OnsetsFramesConfig().dtype == NMPConfig().dtype == "auto"
    assert dtypes() == ("float32",) * 3  # built on this CPU host
    for target in ("tpu", "gpu"):
        with platform.building_for(target):
            assert dtypes() == ("bfloat16",) * 3
    with pytest.raises(ValueError, match="dtype must be one of"):
        platform.resolve_dtype("float16")

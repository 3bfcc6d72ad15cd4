"""The hand-written backward of nmp_convs.single_output_conv (the CPU "gemm" form of NMP's
1-output head convs) gives the gradients of the plain TF-SAME convolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amt_jax.models import nmp_convs


def _random(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _vjp(conv, x, kernel, bias, cotangent, **kwargs):
    value, pullback = jax.vjp(lambda x, k, b: conv(x, k, b, **kwargs), x, kernel, bias)
    return (value, *pullback(cotangent))


@pytest.mark.parametrize(
    ("x_shape", "kernel_shape"),
    [
        ((2, 11, 88, 32), (7, 3, 32, 1)),  # NMP's note output conv
        ((2, 11, 88, 33), (3, 3, 33, 1)),  # NMP's onset output conv
        ((1, 5, 9, 3), (2, 4, 3, 2)),  # even kernels (asymmetric SAME pads), two outputs
        ((1, 4, 6, 2), (1, 1, 2, 1)),  # 1x1: no shifts at all
    ],
)
def test_single_output_conv_gradients_equal_the_plain_conv(x_shape, kernel_shape):
    x, kernel = _random(x_shape, 0), _random(kernel_shape, 1)
    bias = _random(kernel_shape[3:], 2)
    cotangent = _random(x_shape[:3] + kernel_shape[3:], 3)
    want = jax.jit(lambda *a: _vjp(nmp_convs.conv_same, *a))(x, kernel, bias, cotangent)
    got = jax.jit(lambda *a: _vjp(nmp_convs.single_output_conv, *a))(x, kernel, bias, cotangent)
    for name, g, w in zip(("value", "d_input", "d_kernel", "d_bias"), got, want, strict=True):
        assert g.shape == w.shape, name
        scale = float(np.max(np.abs(w)))
        np.testing.assert_allclose(g, w, atol=2e-6 * scale, rtol=1e-5, err_msg=name)


def test_single_output_conv_backward_is_not_the_automatic_one():
    """The custom backward is what runs: its jaxpr has no pad of the full taps tensor."""
    x, kernel = _random((1, 6, 10, 4), 4), _random((3, 3, 4, 1), 5)

    def pad_shapes(fn):
        jaxpr = jax.make_jaxpr(jax.grad(lambda x, k: jnp.sum(fn(x, k) ** 2), (0, 1)))(x, kernel)
        return [e.outvars[0].aval.shape for e in jaxpr.jaxpr.eqns if e.primitive.name == "pad"]

    def automatic(x, k):  # the same computation without the custom VJP
        taps = nmp_convs._tap_products(x, k)
        taps = jnp.pad(taps, ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0), (0, 0)))
        return sum(taps[:, dt : dt + 6, df : df + 10, dt, df] for dt in range(3) for df in range(3))

    np.testing.assert_allclose(
        automatic(x, kernel), nmp_convs.single_output_conv(x, kernel), rtol=1e-6, atol=1e-6
    )
    full_taps = (1, 8, 12, 3, 3, 1)
    assert pad_shapes(automatic).count(full_taps) >= 9  # one per tap in the automatic form
    assert full_taps not in pad_shapes(nmp_convs.single_output_conv)[1:]  # forward pad only


def test_single_output_conv_bfloat16_gradients_keep_operand_dtypes():
    x = jnp.asarray(_random((1, 6, 12, 5), 6))
    kernel = jnp.asarray(_random((3, 3, 5, 1), 7))
    d_x, d_kernel = jax.grad(
        lambda x, k: jnp.sum(nmp_convs.single_output_conv(x, k, dtype="bfloat16")), (0, 1)
    )(x, kernel)
    want_x, want_kernel = jax.grad(lambda x, k: jnp.sum(nmp_convs.conv_same(x, k)), (0, 1))(
        x, kernel
    )
    assert d_x.dtype == d_kernel.dtype == jnp.float32  # the cast back to the float32 inputs
    np.testing.assert_allclose(d_x, want_x, rtol=3e-2, atol=3e-2)
    np.testing.assert_allclose(d_kernel, want_kernel, rtol=3e-2, atol=3e-1)

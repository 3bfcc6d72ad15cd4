"""cpu_kernels.conv_general_dilated (per-tap GEMM kernel gradient for XLA:CPU) has the value
and both gradients of lax.conv_general_dilated, and plugs into nnx.Conv."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from amt_jax.models import cpu_kernels


def _random(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _value_and_grads(conv, x, kernel, cotangent, padding):
    def f(x, k):
        return conv(x, k, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))

    value, pullback = jax.vjp(f, x, kernel)
    return (value, *pullback(cotangent))


@pytest.mark.parametrize(
    ("x_shape", "kernel_shape", "padding"),
    [
        ((2, 9, 13, 5), (3, 3, 5, 7), "SAME"),  # O&F's 3x3 SAME convs
        ((1, 6, 8, 1), (3, 3, 1, 4), "SAME"),  # one input channel (O&F's first conv)
        ((1, 7, 9, 3), (2, 4, 3, 2), "SAME"),  # even kernel: asymmetric pads
        ((2, 6, 7, 2), (3, 2, 2, 3), "VALID"),
        ((1, 6, 7, 2), (3, 3, 2, 2), ((2, 0), (-1, 1))),  # explicit, with a crop
    ],
)
def test_conv_value_and_gradients_equal_lax(x_shape, kernel_shape, padding):
    x, kernel = _random(x_shape, 0), _random(kernel_shape, 1)
    out_shape = jax.eval_shape(
        lambda: jax.lax.conv_general_dilated(
            x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    ).shape
    cotangent = _random(out_shape, 2)
    want = jax.jit(lambda *a: _value_and_grads(jax.lax.conv_general_dilated, *a, padding))(
        x, kernel, cotangent
    )
    got = jax.jit(lambda *a: _value_and_grads(cpu_kernels.conv_general_dilated, *a, padding))(
        x, kernel, cotangent
    )
    for name, g, w in zip(("value", "d_input", "d_kernel"), got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype, name
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(w))))


def test_kernel_gradient_is_tap_gemms_not_a_convolution():
    x, kernel = _random((1, 5, 6, 3), 3), _random((3, 3, 3, 4), 4)

    def primitives(conv):
        loss = lambda k: jnp.sum(  # noqa: E731
            conv(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) ** 2
        )
        text = str(jax.make_jaxpr(jax.grad(loss))(kernel))
        return text.count("conv_general_dilated"), text.count("dot_general")

    assert primitives(jax.lax.conv_general_dilated) == (2, 0)  # forward + kernel-grad conv
    convs, dots = primitives(cpu_kernels.conv_general_dilated)
    assert dots == 9  # one GEMM per tap


def test_strided_or_grouped_convs_fall_back_to_lax():
    x, kernel = _random((1, 8, 8, 4), 5), _random((3, 3, 2, 4), 6)
    for kwargs in ({"window_strides": (2, 1)}, {"feature_group_count": 2}):
        args = {"window_strides": (1, 1), "feature_group_count": 1} | kwargs
        k = kernel if args["feature_group_count"] == 2 else _random((3, 3, 4, 4), 7)
        want = jax.lax.conv_general_dilated(
            x, k, padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), **args
        )
        got = cpu_kernels.conv_general_dilated(
            x, k, padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), **args
        )
        np.testing.assert_array_equal(got, want)


def test_plugs_into_nnx_conv():
    plain = nnx.Conv(3, 5, (3, 3), padding="SAME", use_bias=False, rngs=nnx.Rngs(0))
    tapped = nnx.Conv(
        3,
        5,
        (3, 3),
        padding="SAME",
        use_bias=False,
        conv_general_dilated=cpu_kernels.conv_general_dilated,
        rngs=nnx.Rngs(0),
    )
    x = jnp.asarray(_random((2, 6, 7, 3), 8))

    def kernel_grad(module):
        return nnx.grad(lambda m: jnp.sum(jnp.sin(m(x))))(module).kernel[...]

    np.testing.assert_allclose(tapped(x), plain(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(kernel_grad(tapped), kernel_grad(plain), rtol=1e-5, atol=1e-5)

"""The NMP heads' conv forms (models/nmp_convs.py) equal the plain TF-SAME convolution they
replace, layer by layer and as a network ("gemm" for CPU, "xla" for TPU)."""

import dataclasses
import functools

import jax
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from jax._src.mesh import AbstractDevice  # no public constructor for a TPU abstract mesh

from amt_jax.audio.harmonic import harmonic_shifts, harmonic_stack
from amt_jax.models import nmp, nmp_convs

# Jitted once per static configuration: eager dispatch of the many small ops is slower.
conv_same = jax.jit(nmp_convs.conv_same, static_argnames=("freq_stride", "dtype"))
toeplitz_conv = jax.jit(nmp_convs.toeplitz_conv, static_argnames=("freq_stride", "block", "dtype"))
single_output_conv = jax.jit(nmp_convs.single_output_conv, static_argnames=("dtype",))
harmonic_conv = jax.jit(nmp_convs.harmonic_conv, static_argnames=("shifts", "n_out_bins", "block"))
strided_im2col_conv = jax.jit(
    nmp_convs.strided_im2col_conv, static_argnames=("freq_stride", "dtype")
)


def _random(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@settings(max_examples=6, deadline=None)
@given(
    n_bins=st.integers(5, 40),
    kernel_time=st.integers(1, 5),
    kernel_freq=st.integers(1, 7),
    channels=st.integers(1, 3),
    outputs=st.integers(1, 3),
    stride=st.sampled_from([1, 3]),
    block=st.integers(1, 9),
    seed=st.integers(0, 100),
)
def test_toeplitz_conv_equals_conv(
    n_bins, kernel_time, kernel_freq, channels, outputs, stride, block, seed
):
    x = _random((2, 6, n_bins, channels), seed)
    kernel = _random((kernel_time, kernel_freq, channels, outputs), seed + 1)
    bias = _random((outputs,), seed + 2)
    want = conv_same(x, kernel, bias, freq_stride=stride)
    got = toeplitz_conv(x, kernel, bias, freq_stride=stride, block=block)
    assert got.shape == want.shape == (2, 6, -(-n_bins // stride), outputs)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel", [(7, 3, 32, 1), (3, 3, 33, 1), (2, 4, 3, 2)])
def test_single_output_conv_equals_conv(kernel):
    x = _random((2, 9, 17, kernel[2]), 0)
    weights = _random(kernel, 1)
    bias = _random(kernel[3:], 2)
    want = conv_same(x, weights, bias)
    got = single_output_conv(x, weights, bias)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("harmonics", "n_out", "block"),
    [
        ((0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0), 264, 24),  # Basic Pitch: 1 edge block/side
        ((0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0), 264, 7),  # several edge blocks per side
        ((1.0, 2.0, 3.0), 60, 100),  # one block holding both edges
    ],
)
def test_harmonic_conv_equals_conv_of_the_stack(harmonics, n_out, block):
    shifts = harmonic_shifts(harmonics, 3)
    n_in = n_out + 45
    x = np.abs(_random((2, 5, n_in), 3))
    kernel = _random((3, 39, len(harmonics), 4), 4)
    bias = _random((4,), 5)
    stack = harmonic_stack(x, harmonics=harmonics, bins_per_semitone=3, n_output_bins=n_out)
    want = conv_same(stack, kernel, bias)
    got = harmonic_conv(x, kernel, bias, shifts=shifts, n_out_bins=n_out, block=block)
    assert got.shape == want.shape == (2, 5, n_out, 4)
    # Edge bins (own kernels) and interior bins (shared combined kernel) alike.
    np.testing.assert_allclose(got, want, atol=5e-5, rtol=1e-5)


@settings(max_examples=8, deadline=None)
@given(
    n_bins=st.integers(3, 40),
    kernel_time=st.integers(1, 7),
    kernel_freq=st.integers(1, 9),
    channels=st.integers(1, 3),
    outputs=st.integers(1, 4),
    stride=st.integers(1, 4),
    seed=st.integers(0, 100),
)
def test_strided_im2col_conv_equals_conv(
    n_bins, kernel_time, kernel_freq, channels, outputs, stride, seed
):
    # any bin count (not only multiples of the stride), even and odd kernels
    x = _random((2, 6, n_bins, channels), seed)
    kernel = _random((kernel_time, kernel_freq, channels, outputs), seed + 1)
    bias = _random((outputs,), seed + 2)
    want = conv_same(x, kernel, bias, freq_stride=stride)
    got = strided_im2col_conv(x, kernel, bias, freq_stride=stride)
    assert got.shape == want.shape == (2, 6, -(-n_bins // stride), outputs)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-6)


def test_im2col_note_conv_equals_the_strided_conv_at_basic_pitch_size():
    # contour posteriors in [0, 1], unit-norm 7x7x1->32 kernel, stride 3 over 264 bins
    probs = np.random.default_rng(8).uniform(size=(2, 20, 264, 1)).astype(np.float32)
    kernel = _random((7, 7, 1, 32), 9)
    kernel /= np.sqrt(np.sum(kernel**2, axis=(0, 1, 2), keepdims=True))
    bias = _random((32,), 10)
    want = conv_same(probs, kernel, bias, freq_stride=3)
    got = strided_im2col_conv(probs, kernel, bias, freq_stride=3)
    assert got.shape == (2, 20, 88, 32)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_xla_and_gemm_heads_give_the_same_network():
    # the heads on a normalised CQT (the front end is shared by both implementations)
    normed_btf = _random((2, 24, nmp.N_CQT_BINS), 11)
    outputs = {}
    for impl in ("gemm", "xla"):
        model = nmp.NMP(dataclasses.replace(nmp.NMP_TINY, conv_impl=impl), rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(model)
        outputs[impl] = jax.jit(
            lambda state, x, graphdef=graphdef: nnx.merge(graphdef, state).heads(
                x, use_running_average=True
            )
        )(state, normed_btf)
    for head in ("contour", "note", "onset"):
        np.testing.assert_allclose(outputs["xla"][head], outputs["gemm"][head], atol=1e-5)
    assert outputs["xla"]["contour"].shape == (2, 24, 264)
    assert outputs["xla"]["note"].shape == outputs["xla"]["onset"].shape == (2, 24, 88)


def _platform_seen_by_auto(mesh):
    seen = []
    with jax.sharding.use_abstract_mesh(mesh):
        jax.make_jaxpr(lambda x: seen.append(nmp_convs.resolve_conv_impl("auto")) or x)(1.0)
    return seen[0]


def test_auto_conv_impl_follows_the_mesh_platform_not_the_host():
    cpu_mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    assert jax.default_backend() == "cpu"
    assert _platform_seen_by_auto(cpu_mesh.abstract_mesh) == "gemm"
    # what an ahead-of-time compile for TPU traces under: host CPU, mesh of TPU devices
    tpu_mesh = jax.sharding.AbstractMesh(
        (2,),
        ("data",),
        axis_types=(jax.sharding.AxisType.Auto,),
        abstract_device=AbstractDevice("TPU v5 lite", 1, "tpu"),
    )
    assert _platform_seen_by_auto(tpu_mesh) == "xla"
    assert nmp_convs.resolve_conv_impl("auto") == "gemm"  # no mesh: the default backend (CPU)
    assert nmp_convs.resolve_conv_impl("xla") == "xla"
    with pytest.raises(ValueError, match="conv_impl"):
        nmp.NMPConfig(conv_impl="cudnn")


def test_bfloat16_convs_use_bfloat16_operands_and_return_float32():
    x = _random((1, 4, 30, 2), 6)
    kernel = _random((3, 5, 2, 1), 7)
    im2col = functools.partial(nmp_convs.strided_im2col_conv, freq_stride=3)
    for conv in (
        nmp_convs.conv_same,
        nmp_convs.toeplitz_conv,
        nmp_convs.single_output_conv,
        im2col,
    ):
        out = conv(x, kernel, dtype="bfloat16")
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, conv(x, kernel), atol=0.1, rtol=0.05)
        dtypes = {
            str(eqn.invars[0].aval.dtype)
            for eqn in jax.make_jaxpr(lambda a, k, conv=conv: conv(a, k, dtype="bfloat16"))(
                x, kernel
            ).jaxpr.eqns
            if eqn.primitive.name in ("conv_general_dilated", "dot_general")
        }
        assert dtypes == {"bfloat16"}


@pytest.mark.parametrize("conv_impl", ["gemm", "xla"])
def test_every_layer_form_equals_the_reference_conv(conv_impl):
    """nmp_convs.conv on each head layer's shapes (Basic Pitch's, few frames) == conv_same."""
    config = nmp.NMP_CONFIG
    shifts = harmonic_shifts(config.harmonics, config.bins_per_semitone)
    cqt = np.abs(_random((1, 6, nmp.N_CQT_BINS), 12))
    stack = np.asarray(
        harmonic_stack(cqt, harmonics=config.harmonics, bins_per_semitone=3, n_output_bins=264)
    )
    stacked = nmp_convs.HarmonicStack(stack, cqt, shifts)
    # layer: (input, kernel [kt, kf, in, out], frequency stride)
    layers = {
        "contour": (stacked, (3, 39, 8, 8), 1),
        "contour_out": (_random((1, 6, 264, 8), 13), (5, 5, 8, 1), 1),
        "note": (_random((1, 6, 264, 1), 14), (7, 7, 1, 32), 3),
        "note_out": (_random((1, 6, 88, 32), 15), (7, 3, 32, 1), 1),
        "onset": (stacked, (5, 5, 8, 32), 3),
        "onset_out": (_random((1, 6, 88, 33), 16), (3, 3, 33, 1), 1),
    }
    assert set(layers) == set(nmp_convs.LAYER_FORMS[conv_impl])
    for seed, (layer, (x, kernel_shape, stride)) in enumerate(layers.items()):
        kernel = _random(kernel_shape, 20 + seed)
        bias = _random(kernel_shape[3:], 30 + seed)
        plain = x.stack_btfh if isinstance(x, nmp_convs.HarmonicStack) else x
        want = conv_same(plain, kernel, bias, freq_stride=stride)
        got = jax.jit(
            lambda k, b, layer=layer, x=x, stride=stride: nmp_convs.conv(
                layer, x, k, b, conv_impl=conv_impl, freq_stride=stride, block=8
            )
        )(kernel, bias)
        assert got.shape == want.shape, layer
        np.testing.assert_allclose(got, want, atol=5e-5, rtol=1e-5, err_msg=layer)


def test_gemm_and_xla_differ_in_the_forms_they_trace():
    """The choice is made: "gemm" traces no 8-channel conv for the contour layer."""
    config = nmp.NMP_CONFIG
    cqt = np.abs(_random((1, 4, nmp.N_CQT_BINS), 17))
    stack = harmonic_stack(cqt, harmonics=config.harmonics, bins_per_semitone=3, n_output_bins=264)
    stacked = nmp_convs.HarmonicStack(stack, cqt, harmonic_shifts(config.harmonics, 3))
    kernel = _random((3, 39, 8, 8), 18)

    def input_channels_of_convs(conv_impl):
        jaxpr = jax.make_jaxpr(
            lambda k: nmp_convs.conv("contour", stacked, k, conv_impl=conv_impl, block=24)
        )(kernel)
        return {
            eqn.invars[0].aval.shape[-1]
            for eqn in jaxpr.jaxpr.eqns
            if eqn.primitive.name == "conv_general_dilated"
        }

    assert 8 in input_channels_of_convs("xla")
    assert 8 not in input_channels_of_convs("gemm")

"""NMP's convolutions in the forms each backend runs well, chosen per layer by ``conv_impl``.

Every conv of Basic Pitch's heads is a 2-D conv over (time, frequency) with TensorFlow's
SAME padding (:func:`conv_same`, the reference). XLA:CPU runs convolutions with 1-32
channels at a few GFLOP/s, so ``conv_impl="gemm"`` computes them in forms that become
large GEMMs (same values up to float32 rounding, pinned by ``tests/models/test_nmp_convs.py``):

* contour conv: the harmonic stack is 8 shifted copies of one CQT, so the 3×39×8 conv is a
  3×176 conv of the CQT itself (:func:`harmonic_conv`, 44 % fewer FLOPs), evaluated as a
  block-Toeplitz GEMM over blocks of output bins (the edge blocks, where the stack's zero
  padding differs from the CQT's, get their own exact kernels);
* contour out (5×5×8 → 1): block-Toeplitz GEMM (:func:`toeplitz_conv`);
* note out and onset out (one output channel): channel contraction as one GEMM, then a sum
  of shifted slices (:func:`single_output_conv`);
* note conv and onset conv (32 outputs, stride 3): XLA's own convolution.

XLA:TPU is the other way round: it compiles those GEMM forms for minutes (a full-size
v5e:4x4 train step did not finish in 40 min), so ``conv_impl="xla"`` uses XLA's convs on
the harmonic stack, except the 1-channel stride-3 note conv, which XLA:TPU compiles slowly
too and is computed as one im2col GEMM (:func:`strided_im2col_conv`). ``"auto"`` is
"gemm" when the step is compiled for CPU, "xla" otherwise
(:func:`amt_jax.models.platform.target_platform`). :data:`LAYER_FORMS` lists the choice
per layer and :func:`conv` applies it.

Operands are cast to the ``dtype`` argument (float32 or bfloat16); accumulation and
results are float32.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from amt_jax.models import platform


def tf_same_padding(size: int, kernel: int, stride: int = 1) -> tuple[int, int]:
    """TensorFlow's ``padding='same'`` for one axis: (lo, hi) with lo = total // 2."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


# --- the reference and the GEMM forms ---------------------------------------------------------


def _operands(x: jax.Array, kernel: jax.Array, dtype: Any) -> tuple[jax.Array, jax.Array]:
    dtype = jnp.dtype(dtype)
    return x.astype(dtype), kernel.astype(dtype)


def conv_same(
    x_btfc: jax.Array,
    kernel_tfio: jax.Array,
    bias_o: jax.Array | None = None,
    *,
    freq_stride: int = 1,
    dtype: Any = jnp.float32,
) -> jax.Array:
    """The reference: a 2-D conv over (time, freq) with TensorFlow's SAME padding, NHWC.

    Operands in ``dtype``, accumulation and result in float32.
    """
    kernel_time, kernel_freq = kernel_tfio.shape[:2]
    padding = (
        tf_same_padding(1, kernel_time),
        tf_same_padding(x_btfc.shape[2], kernel_freq, freq_stride),
    )
    x_btfc, kernel_tfio = _operands(x_btfc, kernel_tfio, dtype)
    y = jax.lax.conv_general_dilated(
        x_btfc,
        kernel_tfio,
        (1, freq_stride),
        padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST,
        preferred_element_type=jnp.float32,
    )
    return y if bias_o is None else y + bias_o.astype(jnp.float32)


def _conv_over_time(patches_btnk: jax.Array, weight_tkm: jax.Array) -> jax.Array:
    """SAME conv along time only: [b, t, blocks, K] * [kt, K, M] -> [b, t, blocks, M] (f32).

    Blocks are moved into the batch, so every time tap is one GEMM with K = (block span x
    channels) and M = (block bins x outputs) (measured ~1.8x faster here than keeping the
    blocks as a width-1 spatial axis).
    """
    batch, frames, blocks, depth = patches_btnk.shape
    rows = jnp.moveaxis(patches_btnk, 2, 1).reshape(batch * blocks, frames, depth)
    y = jax.lax.conv_general_dilated(
        rows,
        weight_tkm,
        (1,),
        (tf_same_padding(1, weight_tkm.shape[0]),),
        dimension_numbers=("NWC", "WIO", "NWC"),
        precision=jax.lax.Precision.HIGHEST,
        preferred_element_type=jnp.float32,
    )
    return jnp.moveaxis(y.reshape(batch, blocks, frames, -1), 1, 2)


def _block_patches(x_btfc: jax.Array, pad_lo: int, block_stride: int, span: int, blocks: int):
    """Overlapping frequency windows: [b, t, f, c] -> [b, t, blocks, span * c].

    Block j holds input bins ``j * block_stride - pad_lo ... + span - 1`` (zeros outside).
    """
    needed = (blocks - 1) * block_stride + span
    pad_hi = max(needed - pad_lo - x_btfc.shape[2], 0)
    padded = jnp.pad(x_btfc, ((0, 0), (0, 0), (pad_lo, pad_hi), (0, 0)))
    index = np.arange(blocks)[:, None] * block_stride + np.arange(span)[None, :]
    patches = padded[:, :, index, :]  # [b, t, blocks, span, c]
    return patches.reshape(*patches.shape[:3], span * x_btfc.shape[3])


def _toeplitz(kernel_tfio: jax.Array, freq_stride: int, block: int) -> jax.Array:
    """[kt, kf, c, o] -> [kt, span * c, block * o]: one block's banded weight matrix.

    Row (s, c), column (g, o) holds ``kernel[:, s - g * stride, c, o]`` (zero off the band).
    """
    kernel_time, kernel_freq, channels, outputs = kernel_tfio.shape
    span = (block - 1) * freq_stride + kernel_freq
    offset = np.arange(span)[:, None] - freq_stride * np.arange(block)[None, :]
    inside = (offset >= 0) & (offset < kernel_freq)
    banded = kernel_tfio[:, np.clip(offset, 0, kernel_freq - 1)]  # [kt, span, block, c, o]
    banded = jnp.where(inside[None, :, :, None, None], banded, 0)
    banded = jnp.transpose(banded, (0, 1, 3, 2, 4))
    return banded.reshape(kernel_time, span * channels, block * outputs)


def toeplitz_conv(
    x_btfc: jax.Array,
    kernel_tfio: jax.Array,
    bias_o: jax.Array | None = None,
    *,
    freq_stride: int = 1,
    block: int = 8,
    dtype: Any = jnp.float32,
) -> jax.Array:
    """:func:`conv_same` as GEMMs: output bins in blocks of ``block``, each block one
    banded (Toeplitz) weight matrix over its input span, applied per time tap.

    Costs ``((block - 1) * stride + kf) / kf`` times the conv's FLOPs, but at GEMM speed;
    worth it for few channels (the 5×5×8→1 contour output conv runs ~2× faster).
    """
    n_bins = x_btfc.shape[2]
    kernel_freq, outputs = kernel_tfio.shape[1], kernel_tfio.shape[3]
    pad_lo, _ = tf_same_padding(n_bins, kernel_freq, freq_stride)
    n_out = -(-n_bins // freq_stride)
    blocks = -(-n_out // block)
    span = (block - 1) * freq_stride + kernel_freq
    x_btfc, kernel_tfio = _operands(x_btfc, kernel_tfio, dtype)
    patches = _block_patches(x_btfc, pad_lo, block * freq_stride, span, blocks)
    y = _conv_over_time(patches, _toeplitz(kernel_tfio, freq_stride, block))
    y = y.reshape(*y.shape[:2], blocks * block, outputs)[:, :, :n_out]
    return y if bias_o is None else y + bias_o.astype(jnp.float32)


def single_output_conv(
    x_btfc: jax.Array,
    kernel_tfio: jax.Array,
    bias_o: jax.Array | None = None,
    *,
    dtype: Any = jnp.float32,
) -> jax.Array:
    """:func:`conv_same` (stride 1) for few outputs: the channel contraction of every tap is
    one GEMM ([b t f, c] x [c, taps o]), then the taps' shifted slices are summed (one fused
    elementwise pass). For the 1-output note / onset convs this is 1.4-4× faster.

    The backward is written by hand (:func:`_shifted_tap_sum`): differentiated
    automatically, each of the kt·kf shifted slices becomes a pad of the cotangent to the
    full taps tensor, which XLA:CPU materialises one by one and then transposes for the
    kernel gradient (half of an NMP train step's time)."""
    kernel_time, kernel_freq = kernel_tfio.shape[:2]
    pads = (tf_same_padding(1, kernel_time), tf_same_padding(x_btfc.shape[2], kernel_freq))
    x_btfc, kernel_tfio = _operands(x_btfc, kernel_tfio, dtype)
    y = _shifted_tap_sum(_tap_products(x_btfc, kernel_tfio), x_btfc, kernel_tfio, pads)
    return y if bias_o is None else y + bias_o.astype(jnp.float32)


def _tap_products(x_btfc: jax.Array, kernel_tfio: jax.Array) -> jax.Array:
    """[b, t, f, c] x [kt, kf, c, o] -> every tap's channel contraction [b, t, f, kt, kf, o]."""
    return jnp.einsum(
        "btfc,kgco->btfkgo",
        x_btfc,
        kernel_tfio,
        precision=jax.lax.Precision.HIGHEST,
        preferred_element_type=jnp.float32,
    )


def _shifted_cotangents(grad_btfo: jax.Array, kernel_shape, pads) -> jax.Array:
    """The cotangent of every tap's products: [kt * kf, b, t, f, o] (tap-major rows).

    Output (t, f) reads tap (dt, df)'s products at (t + dt - lo_t, f + df - lo_f), so that
    tap's cotangent is the output cotangent shifted the other way (zeros past the edges).
    """
    kernel_time, kernel_freq = kernel_shape[:2]
    (lo_time, _), (lo_freq, _) = pads
    frames, n_bins = grad_btfo.shape[1:3]
    margin_t, margin_f = kernel_time - 1, kernel_freq - 1
    padded = jnp.pad(grad_btfo, ((0, 0), (margin_t, margin_t), (margin_f, margin_f), (0, 0)))
    return jnp.stack(
        [
            padded[
                :,
                margin_t + lo_time - dt : margin_t + lo_time - dt + frames,
                margin_f + lo_freq - df : margin_f + lo_freq - df + n_bins,
            ]
            for dt in range(kernel_time)
            for df in range(kernel_freq)
        ]
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _shifted_tap_sum(
    taps_btfkgo: jax.Array, x_btfc: jax.Array, kernel_tfio: jax.Array, pads
) -> jax.Array:
    """SAME conv (stride 1, ``pads`` per axis) from its tap products
    ``taps = _tap_products(x, kernel)``: the sum of each tap's shifted slice.

    ``x`` and ``kernel`` only feed the backward, which differentiates the whole conv with
    respect to them and gives ``taps`` a zero cotangent (so the GEMM that made the taps is
    not transposed as well); ``taps`` must therefore be exactly their tap products.
    """
    del x_btfc  # for the backward
    frames, n_bins = taps_btfkgo.shape[1:3]
    kernel_time, kernel_freq = kernel_tfio.shape[:2]
    taps = jnp.pad(taps_btfkgo, ((0, 0), pads[0], pads[1], (0, 0), (0, 0), (0, 0)))
    return sum(
        taps[:, dt : dt + frames, df : df + n_bins, dt, df]
        for dt in range(kernel_time)
        for df in range(kernel_freq)
    )


def _shifted_tap_sum_fwd(taps_btfkgo, x_btfc, kernel_tfio, pads):
    return _shifted_tap_sum(taps_btfkgo, x_btfc, kernel_tfio, pads), (x_btfc, kernel_tfio)


def _shifted_tap_sum_bwd(pads, residuals, grad_btfo):
    """Kernel gradient: one GEMM [taps, b t f] x [b t f, c] (both operands row-major, no
    transpose); input gradient: a fused sum over taps of shifted cotangent x kernel row."""
    x_btfc, kernel_tfio = residuals
    kernel_time, kernel_freq, channels, outputs = kernel_tfio.shape
    shifted_nbtfo = _shifted_cotangents(grad_btfo.astype(jnp.float32), kernel_tfio.shape, pads)
    grad_kernel = jnp.einsum(
        "nbtfo,btfc->nco",
        shifted_nbtfo.astype(x_btfc.dtype),
        x_btfc,
        precision=jax.lax.Precision.HIGHEST,
        preferred_element_type=jnp.float32,
    ).reshape(kernel_time, kernel_freq, channels, outputs)
    kernel_nco = kernel_tfio.reshape(kernel_time * kernel_freq, channels, outputs)
    kernel_nco = kernel_nco.astype(jnp.float32)
    grad_x = sum(
        jnp.sum(shifted_nbtfo[n][..., None, :] * kernel_nco[n], axis=-1)
        for n in range(kernel_time * kernel_freq)
    )
    return None, grad_x.astype(x_btfc.dtype), grad_kernel.astype(kernel_tfio.dtype)


_shifted_tap_sum.defvjp(_shifted_tap_sum_fwd, _shifted_tap_sum_bwd)


def strided_im2col_conv(
    x_btfc: jax.Array,
    kernel_tfio: jax.Array,
    bias_o: jax.Array | None = None,
    *,
    freq_stride: int,
    dtype: Any = jnp.float32,
) -> jax.Array:
    """:func:`conv_same` with a frequency stride, as shifted slices + one GEMM (im2col).

    The input bins are regrouped in groups of ``freq_stride`` (output bin j reads whole
    groups j + q), the kernel is zero-padded in frequency to whole groups, and the
    (time tap, group offset) slices are concatenated along channels and contracted with the
    kernel in one GEMM. Same values as the strided conv; for the 7×7×1→32 stride-3 note
    conv XLA:TPU compiles this ~3× faster (forward + gradients) than the strided conv.
    """
    batch, frames, n_bins, channels = x_btfc.shape
    kernel_time, kernel_freq, _, outputs = kernel_tfio.shape
    n_out = -(-n_bins // freq_stride)
    pad_lo, _ = tf_same_padding(n_bins, kernel_freq, freq_stride)
    # output bin j reads input bins j * stride + m - pad_lo, m < kernel_freq
    first_group = (-pad_lo) // freq_stride  # <= 0
    last_group = (kernel_freq - 1 - pad_lo) // freq_stride
    n_groups = last_group - first_group + 1
    tap_shift = -pad_lo - first_group * freq_stride  # kernel tap m sits at m + tap_shift
    x_btfc, kernel_tfio = _operands(x_btfc, kernel_tfio, dtype)
    x_btfc = jnp.pad(x_btfc, ((0, 0), (0, 0), (0, n_out * freq_stride - n_bins), (0, 0)))
    groups = x_btfc.reshape(batch, frames, n_out, freq_stride * channels)
    pad_time = tf_same_padding(1, kernel_time)
    groups = jnp.pad(groups, ((0, 0), pad_time, (-first_group, last_group), (0, 0)))
    patches = jnp.concatenate(
        [
            groups[:, dt : dt + frames, q : q + n_out]
            for dt in range(kernel_time)
            for q in range(n_groups)
        ],
        axis=-1,
    )  # [b, t, n_out, (dt, q, r, c)]
    kernel = jnp.pad(
        kernel_tfio,
        ((0, 0), (tap_shift, n_groups * freq_stride - kernel_freq - tap_shift), (0, 0), (0, 0)),
    ).reshape(kernel_time * n_groups * freq_stride * channels, outputs)
    y = jnp.einsum(
        "btnk,ko->btno",
        patches,
        kernel,
        precision=jax.lax.Precision.HIGHEST,
        preferred_element_type=jnp.float32,
    )
    return y if bias_o is None else y + bias_o.astype(jnp.float32)


def harmonic_conv(
    x_btf: jax.Array,
    kernel_tfho: jax.Array,
    bias_o: jax.Array | None = None,
    *,
    shifts: tuple[int, ...],
    n_out_bins: int,
    block: int = 24,
    dtype: Any = jnp.float32,
) -> jax.Array:
    """``conv_same(harmonic_stack(x), kernel)`` computed from the un-stacked input ``x``.

    Stack channel h at bin f is ``x[f + shifts[h]]`` (zero outside ``x``), so for every
    output bin whose kernel window lies inside the stack the conv is one conv of ``x``
    with the combined kernel ``V[m] = sum_h kernel[m - shifts[h] + min(shifts), h]``
    (39 + 137 = 176 taps for Basic Pitch instead of 39 × 8 = 312). Bins near the stack's
    edges, where the stack's SAME padding hides taps the combined kernel would see, get
    their own kernel built from the valid taps only, so the result is exact everywhere.
    Evaluated as block-Toeplitz GEMMs over blocks of ``block`` output bins (one shared
    weight for the interior blocks, one per edge block).
    """
    kernel_time, kernel_freq, n_harmonics, outputs = kernel_tfho.shape
    if len(shifts) != n_harmonics:
        raise ValueError(f"{len(shifts)} harmonic shifts for a kernel with {n_harmonics} inputs")
    lowest = min(shifts)
    taps = kernel_freq + max(shifts) - lowest
    pad_lo, pad_hi = tf_same_padding(n_out_bins, kernel_freq)
    blocks = -(-n_out_bins // block)
    span = block + taps - 1
    x_btf, kernel_tfho = _operands(x_btf, kernel_tfho, dtype)

    # Which kernel taps each output bin sees inside the stack (bins past the end: all).
    bins = np.arange(blocks * block)
    position = bins[:, None] + np.arange(kernel_freq)[None, :] - pad_lo
    valid_gk = ((position >= 0) & (position < n_out_bins)) | (bins[:, None] >= n_out_bins)
    interior = valid_gk.reshape(blocks, block, kernel_freq).all(axis=(1, 2))

    def combined(mask_nk: np.ndarray) -> jax.Array:
        """Per-bin combined kernels [n, kt, taps, o] for tap masks [n, kf]."""
        total = 0
        for h, shift in enumerate(shifts):
            part = kernel_tfho[None, :, :, h, :] * mask_nk[:, None, :, None]
            left = shift - lowest
            total = total + jnp.pad(
                part, ((0, 0), (0, 0), (left, taps - kernel_freq - left), (0, 0))
            )
        return total

    offset = np.arange(span)[:, None] - np.arange(block)[None, :]  # [span, block]
    inside = (offset >= 0) & (offset < taps)
    rows = np.broadcast_to(np.arange(block)[None, :], offset.shape)

    def banded(kernels_gkto: jax.Array) -> jax.Array:
        """Per-bin kernels of one block [block, kt, taps, o] -> [kt, span, block * o]."""
        weight = kernels_gkto[rows, :, np.clip(offset, 0, taps - 1)]  # [span, block, kt, o]
        weight = jnp.where(inside[:, :, None, None], weight, 0)
        return jnp.transpose(weight, (2, 0, 1, 3)).reshape(kernel_time, span, block * outputs)

    patches = _block_patches(x_btf[..., None], pad_lo - lowest, block, span, blocks)
    shared = None
    pieces = []
    first = 0
    while first < blocks:  # runs of interior blocks share one weight; edge blocks have own
        last = first + 1
        if interior[first]:
            while last < blocks and interior[last]:
                last += 1
            if shared is None:
                shared = banded(
                    jnp.broadcast_to(
                        combined(np.ones((1, kernel_freq))), (block,) + (kernel_time, taps, outputs)
                    )
                )
            weight = shared
        else:
            mask = valid_gk[first * block : last * block].astype(np.float32)
            weight = banded(combined(mask))
        pieces.append(_conv_over_time(patches[:, :, first:last], weight.astype(x_btf.dtype)))
        first = last
    y = jnp.concatenate(pieces, axis=2) if len(pieces) > 1 else pieces[0]
    y = y.reshape(*y.shape[:2], blocks * block, outputs)[:, :, :n_out_bins]
    return y if bias_o is None else y + bias_o.astype(jnp.float32)


# --- which form each NMP layer takes ---------------------------------------------------------

CONV_IMPLS = ("auto", "gemm", "xla")

#: the form of each conv of NMP's heads, per resolved ``conv_impl``
LAYER_FORMS: dict[str, dict[str, str]] = {
    "gemm": {
        "contour": "harmonic",
        "contour_out": "toeplitz",
        "note": "xla",
        "note_out": "single_output",
        "onset": "xla",
        "onset_out": "single_output",
    },
    "xla": {
        "contour": "xla",
        "contour_out": "xla",
        "note": "im2col",
        "note_out": "xla",
        "onset": "xla",
        "onset_out": "xla",
    },
}


def resolve_conv_impl(conv_impl: str) -> str:
    """``"auto"`` → ``"gemm"`` when compiling for CPU, ``"xla"`` otherwise."""
    return platform.resolve_auto(conv_impl, cpu="gemm", other="xla")


@dataclasses.dataclass(frozen=True)
class HarmonicStack:
    """A conv input that is a harmonic stack: the stack [b, t, bins, harmonics] and the CQT
    [b, t, cqt_bins] it was cut from with ``shifts`` (the "harmonic" form reads the CQT)."""

    stack_btfh: jax.Array
    cqt_btf: jax.Array
    shifts: tuple[int, ...]


def conv(
    layer: str,
    x: jax.Array | HarmonicStack,
    kernel_tfio: jax.Array,
    bias_o: jax.Array | None = None,
    *,
    conv_impl: str,
    freq_stride: int = 1,
    block: int = 8,
    dtype: Any = jnp.float32,
) -> jax.Array:
    """NMP conv ``layer`` (a key of :data:`LAYER_FORMS`) of ``x``: :func:`conv_same`'s values
    in the form ``conv_impl`` resolves to for it. ``block``: output bins per GEMM block of
    the harmonic / Toeplitz forms."""
    form = LAYER_FORMS[resolve_conv_impl(conv_impl)][layer]
    if form == "harmonic":
        if not isinstance(x, HarmonicStack):
            raise TypeError(f"the {layer!r} conv's harmonic form needs a HarmonicStack input")
        return harmonic_conv(
            x.cqt_btf,
            kernel_tfio,
            bias_o,
            shifts=x.shifts,
            n_out_bins=x.stack_btfh.shape[2],
            block=block,
            dtype=dtype,
        )
    x_btfc = x.stack_btfh if isinstance(x, HarmonicStack) else x
    if form == "toeplitz":
        return toeplitz_conv(
            x_btfc, kernel_tfio, bias_o, freq_stride=freq_stride, block=block, dtype=dtype
        )
    if form == "single_output":  # the 1-output head convs, stride 1
        return single_output_conv(x_btfc, kernel_tfio, bias_o, dtype=dtype)
    if form == "im2col":
        return strided_im2col_conv(
            x_btfc, kernel_tfio, bias_o, freq_stride=freq_stride, dtype=dtype
        )
    return conv_same(x_btfc, kernel_tfio, bias_o, freq_stride=freq_stride, dtype=dtype)

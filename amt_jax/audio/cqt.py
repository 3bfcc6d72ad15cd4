"""Constant-Q transforms in JAX.

Two transforms live here:

* :func:`cqt` -- a general CQT with librosa's filter definition (relative bandwidth,
  L1-normalised periodic Hann x complex exponential, ``scale=True``), computed by
  FFT-domain band filtering: one ``rfft`` of the padded signal, each bin's band multiplied
  by the analytic DTFT of its Hann kernel (kept to +-``nlobe`` main-lobe widths), then
  folded to the frame rate and inverse-transformed. Sampling the filter output every
  ``hop`` samples is a fold of the spectrum into ``N / hop`` bins, so each bin costs one
  small IFFT. The band tables are computed once per (config, length) on the host.
* :func:`basic_pitch_cqt` -- an exact port of the CQT layer Basic Pitch was trained with
  (nnAudio's CQT2010v2 as ported to TF): 256-tap kernels for the top octave, reflect
  padding, recursive FIR half-band decimation and sqrt-length scaling, so imported Basic
  Pitch weights see the inputs they were trained on.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from amt_jax.audio import basic_pitch_constants as bp

# ----------------------------------------------------------------------------------------
# General CQT (librosa filters, FFT band-fold)
# ----------------------------------------------------------------------------------------

#: Equivalent noise bandwidth of a Hann window, in FFT bins (as librosa uses it).
_HANN_BANDWIDTH = 1.50018310546875


@dataclasses.dataclass(frozen=True)
class CQTConfig:
    """A constant-Q transform; defaults are Basic Pitch's analysis settings.

    padding: how the signal is extended beyond its ends for the centred frames
      (``"constant"`` = zeros, as librosa; ``"reflect"``; ``"edge"``).
    nlobe: each filter's spectrum is kept within +-nlobe * f / Q Hz of its centre;
      4 gives ~4e-4 relative error against the exact transform, 8 gives ~1e-4.
    direct_hops: bins whose kernel fits in this many hops (even; the top octaves, whose
      wide bands dominate the FFT route) are computed exactly in the time domain, as one
      GEMM of frames of that width against their kernels; 0 turns this off.
    """

    sample_rate: int = bp.SAMPLE_RATE
    hop_length: int = bp.HOP_SAMPLES
    fmin: float = bp.FMIN
    n_bins: int = bp.N_CQT_BINS
    bins_per_octave: int = bp.BINS_PER_OCTAVE
    filter_scale: float = 1.0
    padding: str = "constant"
    scale: bool = True
    nlobe: float = 8.0
    direct_hops: int = 2

    @property
    def alpha(self) -> float:
        """librosa's relative bandwidth for a constant-Q filterbank."""
        r = 2.0 ** (2.0 / self.bins_per_octave)
        return (r - 1.0) / (r + 1.0)

    @property
    def q(self) -> float:
        return self.filter_scale / self.alpha

    def frequencies(self) -> np.ndarray:
        return self.fmin * 2.0 ** (np.arange(self.n_bins) / self.bins_per_octave)

    def lengths(self) -> np.ndarray:
        """Filter lengths in samples (float), librosa's ``wavelet_lengths``."""
        return self.q * self.sample_rate / self.frequencies()

    def num_frames(self, num_samples: int) -> int:
        return 1 + num_samples // self.hop_length

    def validate(self) -> None:
        if self.n_bins <= 0 or self.bins_per_octave <= 0 or self.hop_length <= 0:
            raise ValueError(f"CQT sizes must be positive: {self}")
        if self.fmin <= 0:
            raise ValueError(f"CQT fmin must be positive, got {self.fmin}")
        top = self.frequencies()[-1]
        cutoff = top * (1 + 0.5 * _HANN_BANDWIDTH / self.q)
        if cutoff > self.sample_rate / 2:
            raise ValueError(
                f"CQT top filter ({top:.1f} Hz, cutoff {cutoff:.1f} Hz) exceeds Nyquist "
                f"({self.sample_rate / 2} Hz): lower n_bins or fmin, or raise sample_rate"
            )
        if self.padding not in ("constant", "reflect", "edge"):
            raise ValueError(f"Unknown CQT padding {self.padding!r}")


def _smooth_size(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (fast FFT sizes)."""
    best = 1 << (max(n - 1, 1)).bit_length()
    five = 1
    while five < best:
        three = five
        while three < best:
            two = three
            while two < n:
                two *= 2
            best = min(best, two)
            three *= 3
        five *= 5
    return best


@dataclasses.dataclass(frozen=True)
class _Group:
    starts: np.ndarray  # (nb,) first rfft index of each bin's band
    response: np.ndarray  # (nb, width) complex64 filter response over the band
    gain: np.ndarray  # (nb,) output scaling
    bins: np.ndarray  # (nb,) output bin indices
    folds: int  # width = folds * fold_len (or width <= fold_len when folds == 1)


@dataclasses.dataclass(frozen=True)
class _Plan:
    context: int  # samples of padding before frame 0's centre
    fft_len: int  # N
    fold_len: int  # N / hop
    num_frames: int
    groups: tuple[_Group, ...]
    direct_bins: np.ndarray  # (nd,) bins computed in the time domain
    direct_kernels: np.ndarray  # (width, 2 * nd) float32: conj kernels, real then imag
    direct_gain: np.ndarray  # (nd,)


def _hann_dtft(nu: np.ndarray, m: int) -> np.ndarray:
    """sum_{n<m} hann_m[n] e^{i nu n} for a periodic Hann of length m (float64, exact)."""

    def geometric(x):
        half = x / 2
        s = np.sin(half)
        safe = np.where(np.abs(s) < 1e-300, 1.0, s)
        ratio = np.where(np.abs(s) < 1e-300, float(m), np.sin(m * half) / safe)
        return np.exp(1j * half * (m - 1)) * ratio

    step = 2 * np.pi / m
    return 0.5 * geometric(nu) - 0.25 * geometric(nu - step) - 0.25 * geometric(nu + step)


@functools.lru_cache(maxsize=32)
def _make_plan(config: CQTConfig, num_samples: int) -> _Plan:
    config.validate()
    hop = config.hop_length
    lengths = config.lengths()
    freqs = config.frequencies()
    max_half = int(np.max(np.ceil(lengths))) // 2 + 2
    context = max(-(-max_half // hop) * hop, config.direct_hops // 2 * hop)
    num_frames = config.num_frames(num_samples)
    padded = context + num_samples + context
    fold_len = _smooth_size(-(-padded // hop) + 1)
    fft_len = fold_len * hop
    n_rfft = fft_len // 2 + 1

    bands = []
    if config.direct_hops % 2 or config.direct_hops < 0:
        raise ValueError(f"CQT direct_hops must be an even number >= 0, got {config.direct_hops}")
    direct_width = config.direct_hops * hop
    direct_bins, direct_columns, direct_gain = [], [], []
    for k, (f, length) in enumerate(zip(freqs, lengths)):
        m = len(np.arange(-length // 2, length // 2))
        j0 = math.floor(-length / 2)
        if m + 2 <= direct_width:
            # Exact kernel on a window centred on the frame (offsets -width/2 ... width/2-1).
            column = np.zeros(direct_width, np.complex128)
            j = np.arange(j0, j0 + m)
            window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(m) / m)
            phasor = np.exp(-2j * np.pi * f * j / config.sample_rate)
            column[j + direct_width // 2] = window * phasor / (m / 2)
            direct_bins.append(k)
            direct_columns.append(column)
            direct_gain.append(np.sqrt(length) if config.scale else length)
            continue
        centre = fft_len * f / config.sample_rate
        half_width = config.nlobe * fft_len / length
        start = max(int(math.floor(centre - half_width)), 0)
        stop = min(int(math.ceil(centre + half_width)) + 1, n_rfft)
        bands.append((k, start, stop - start, m, j0, length))

    # Group bins by the number of folds their band needs, so shapes are static per group.
    by_folds: dict[int, list] = {}
    for band in bands:
        folds = max(1, -(-band[2] // fold_len))
        by_folds.setdefault(folds, []).append(band)
    groups = []
    for folds, members in sorted(by_folds.items()):
        width = folds * fold_len if folds > 1 else max(b[2] for b in members)
        starts, responses, gains, bins = [], [], [], []
        for k, start, _, m, j0, length in members:
            index = start + np.arange(width)
            nu = 2 * np.pi * (index / fft_len - freqs[k] / config.sample_rate)
            # Correlation with kernel h_k(j) = w(j - j0) e^{-i w_k j} / S is a filter whose
            # transfer function at rfft bin q is sum_j h_k(j) e^{+i 2 pi q j / N}.
            response = np.exp(1j * nu * j0) * _hann_dtft(nu, m) / (m / 2.0)
            response[index >= n_rfft] = 0.0
            starts.append(start)
            responses.append(response)
            gains.append((np.sqrt(length) if config.scale else length) / hop)
            bins.append(k)
        groups.append(
            _Group(
                starts=np.asarray(starts, np.int32),
                response=np.asarray(responses, np.complex64),
                gain=np.asarray(gains, np.float32),
                bins=np.asarray(bins, np.int32),
                folds=folds,
            )
        )
    columns = np.zeros((direct_width, len(direct_bins)), np.complex128)
    for i, column in enumerate(direct_columns):
        columns[:, i] = column
    return _Plan(
        context,
        fft_len,
        fold_len,
        num_frames,
        tuple(groups),
        direct_bins=np.asarray(direct_bins, np.int32),
        direct_kernels=np.concatenate([columns.real, columns.imag], axis=1).astype(np.float32),
        direct_gain=np.asarray(direct_gain, np.float32),
    )


def _apply_plan(padded_bs: jax.Array, plan: _Plan, tables) -> jax.Array:
    """CQT magnitudes of an already padded signal: [batch, padded] -> [batch, frames, bins]."""
    batch = padded_bs.shape[0]
    if plan.groups:
        signal = jnp.pad(padded_bs, ((0, 0), (0, plan.fft_len - padded_bs.shape[1])))
        spectrum = jnp.fft.rfft(signal, axis=-1)
        # Zero tail so every band slice is in range (responses are zero beyond Nyquist).
        widest = max(response.shape[1] for _, response, _ in tables)
        spectrum = jnp.pad(spectrum, ((0, 0), (0, widest)))
    first = plan.context // (plan.fft_len // plan.fold_len)
    outputs, order = [], []
    for group, (starts, response, gain) in zip(plan.groups, tables):
        width = response.shape[1]
        # One contiguous slice per bin (a gather of whole windows, not of scalars).
        band = (
            jax.vmap(
                lambda start, width=width: jax.lax.dynamic_slice_in_dim(spectrum, start, width, 1),
                out_axes=1,
            )(starts)
            * response
        )
        if group.folds > 1:
            band = band.reshape(batch, -1, group.folds, plan.fold_len).sum(axis=2)
        else:
            band = jnp.pad(band, ((0, 0), (0, 0), (0, plan.fold_len - width)))
        frames = jnp.fft.ifft(band, axis=-1)[:, :, first : first + plan.num_frames]
        outputs.append(jnp.abs(frames) * gain[None, :, None])
        order.append(group.bins)
    if plan.direct_bins.size:
        hop = plan.fft_len // plan.fold_len
        hops = plan.direct_kernels.shape[0] // hop
        blocks = padded_bs[:, : padded_bs.shape[1] // hop * hop].reshape(batch, -1, hop)
        first_block = plan.context // hop - hops // 2
        frames = jnp.concatenate(
            [blocks[:, first_block + i : first_block + i + plan.num_frames] for i in range(hops)],
            axis=-1,
        )  # [batch, frames, hops * hop], frame t centred on sample t * hop
        response = jnp.einsum(
            "btw,wk->bkt", frames, plan.direct_kernels, precision=jax.lax.Precision.HIGHEST
        )
        count = plan.direct_bins.size
        magnitude = jnp.sqrt(response[:, :count] ** 2 + response[:, count:] ** 2)
        outputs.append(magnitude * plan.direct_gain[None, :, None])
        order.append(plan.direct_bins)
    stacked = jnp.concatenate(outputs, axis=1)
    inverse = np.argsort(np.concatenate(order))
    return jnp.transpose(stacked[:, inverse, :], (0, 2, 1))


def _tables(plan: _Plan, as_device: bool):
    convert = jnp.asarray if as_device else (lambda x: x)
    return tuple((convert(g.starts), convert(g.response), convert(g.gain)) for g in plan.groups)


@functools.lru_cache(maxsize=32)
def _device_tables(config: CQTConfig, num_samples: int):
    return _tables(_make_plan(config, num_samples), as_device=True)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _cqt_jit(audio_bs, config: CQTConfig, num_samples: int, tables):
    plan = _make_plan(config, num_samples)
    padded = jnp.pad(audio_bs, ((0, 0), (plan.context, plan.context)), mode=config.padding)
    return _apply_plan(padded, plan, tables)


def cqt(audio_bs: jax.Array, config: CQTConfig = CQTConfig()) -> jax.Array:
    """Magnitude CQT: [batch, samples] -> [batch, 1 + samples // hop, n_bins] (float32).

    Frame t is centred on sample ``t * hop`` (librosa's ``center=True``). Works eagerly
    (band tables passed as device arrays to a cached jitted kernel) and inside an outer
    ``jax.jit`` (tables become constants of that computation).
    """
    audio_bs = jnp.asarray(audio_bs, jnp.float32)
    if audio_bs.ndim != 2:
        raise ValueError(f"cqt expects [batch, samples], got shape {audio_bs.shape}")
    num_samples = audio_bs.shape[1]
    if isinstance(audio_bs, jax.core.Tracer):
        plan = _make_plan(config, num_samples)
        padded = jnp.pad(audio_bs, ((0, 0), (plan.context, plan.context)), mode=config.padding)
        return _apply_plan(padded, plan, _tables(plan, as_device=False))
    return _cqt_jit(audio_bs, config, num_samples, _device_tables(config, num_samples))


def cqt_chunked(
    audio_s: np.ndarray, config: CQTConfig = CQTConfig(), chunk_frames: int = 2048
) -> np.ndarray:
    """CQT of a long mono signal in bounded memory; equals :func:`cqt` on the whole signal.

    The signal is processed ``chunk_frames`` frames at a time, each chunk carrying the
    longest filter's half-length of context on both sides, so peak memory scales with the
    chunk, not the file.
    """
    audio_s = np.asarray(audio_s, np.float32)
    if audio_s.ndim != 1:
        raise ValueError(f"cqt_chunked expects mono [samples], got shape {audio_s.shape}")
    hop = config.hop_length
    num_frames = config.num_frames(audio_s.shape[0])
    chunk_samples = (chunk_frames - 1) * hop + 1  # a chunk of this many samples has chunk_frames
    plan = _make_plan(config, chunk_samples)
    context = plan.context
    padded = np.pad(audio_s, (context, context), mode=config.padding)
    tail = (num_frames + chunk_frames) * hop + 2 * context - padded.shape[0]
    padded = np.pad(padded, (0, max(tail, 0)))
    tables = _device_tables(config, chunk_samples)
    run = _chunk_jit
    out = np.empty((num_frames, config.n_bins), np.float32)
    for first in range(0, num_frames, chunk_frames):
        piece = padded[first * hop : first * hop + chunk_samples + 2 * context]
        count = min(chunk_frames, num_frames - first)
        out[first : first + count] = np.asarray(run(piece[None], config, chunk_samples, tables))[
            0, :count
        ]
    return out


@functools.partial(jax.jit, static_argnums=(1, 2))
def _chunk_jit(padded_bs, config: CQTConfig, num_samples: int, tables):
    return _apply_plan(padded_bs, _make_plan(config, num_samples), tables)


# ----------------------------------------------------------------------------------------
# Basic Pitch's CQT (exact port of its CQT2010v2 layer) and NormalizedLog
# ----------------------------------------------------------------------------------------

#: nnAudio's kernel buffer: the top octave's filters, each centred in 256 samples
_KERNEL_LEN = 256


@functools.lru_cache(maxsize=1)
def basic_pitch_constants() -> dict[str, np.ndarray]:
    """Kernels, anti-alias FIR and per-bin scaling of Basic Pitch's CQT (float64).

    kernels: (36, 256) complex, top octave (5274.0 ... 10346.9 Hz), each a periodic Hann of
    length ceil(Q sr / f) times a complex exponential, L1-normalised, placed at
    ``ceil(128 - l/2) - l % 2`` in a 256-sample buffer. lowpass: 256-tap firwin2 half-band.
    scale: sqrt(ceil(Q sr / f_k)) for the 309 output bins.
    """
    import scipy.signal

    bpo, sr = bp.BINS_PER_OCTAVE, bp.SAMPLE_RATE
    q = 1.0 / (2.0 ** (1.0 / bpo) - 1.0)
    f_top = bp.FMIN * 2.0 ** ((bp.N_CQT_BINS - 1) / bpo)
    f_low = f_top / 2.0 ** (1 - 1.0 / bpo)
    freqs = f_low * 2.0 ** (np.arange(bpo) / bpo)
    kernels = np.zeros((bpo, _KERNEL_LEN), np.complex128)
    for k, f in enumerate(freqs):
        length = math.ceil(q * sr / f)
        start = math.ceil(_KERNEL_LEN / 2 - length / 2) - length % 2
        n = np.arange(-length // 2, length // 2)
        window = scipy.signal.get_window("hann", length, fftbins=True)
        sig = window * np.exp(1j * 2 * np.pi * f * n / sr) / length
        kernels[k, start : start + length] = sig / np.sum(np.abs(sig))
    lowpass = scipy.signal.firwin2(256, [0.0, 0.5 / 1.001, 0.5 * 1.001, 1.0], [1.0, 1.0, 0.0, 0.0])
    all_freqs = bp.FMIN * 2.0 ** (np.arange(bp.N_CQT_BINS) / bpo)
    scale = np.sqrt(np.ceil(q * sr / all_freqs))
    return {"kernels": kernels, "lowpass": lowpass, "scale": scale, "q": np.float64(q)}


def _bp_octave_count() -> int:
    return math.ceil(bp.N_CQT_BINS / bp.BINS_PER_OCTAVE)


def _halfband_decimate(x_bs: jax.Array, lowpass: jax.Array, dtype=jnp.float32) -> jax.Array:
    """Zero-pad 127 both sides, 256-tap FIR, keep every 2nd sample (stride-2 VALID conv).

    (A banded-GEMM form runs ~3x faster here but its float32 rounding doubles the
    posteriors' distance to Basic Pitch's TF outputs on a 60 s file, 1e-4 -> 2e-4: the
    decimated signal feeds eight octaves and the per-window dB normalisation.)
    """
    padded = jnp.pad(x_bs, ((0, 0), (127, 127)))
    out_len = (padded.shape[1] - 256) // 2 + 1
    # Polyphase: y[i] = sum_p h[2p] x[2i+2p] + h[2p+1] x[2i+2p+1] -- a 128-tap, 2-channel
    # stride-1 correlation, written as a conv so XLA does not materialise frames.
    even = padded[:, 0::2]
    odd = padded[:, 1::2]
    length = min(even.shape[1], odd.shape[1])
    lhs = jnp.stack([even[:, :length], odd[:, :length]], axis=1)  # [b, 2, n/2]
    rhs = jnp.stack([lowpass[0::2], lowpass[1::2]], axis=0)[None]  # [1, 2, 128]
    out = jax.lax.conv_general_dilated(
        lhs.astype(dtype),
        rhs.astype(dtype),
        window_strides=(1,),
        padding="VALID",
        dimension_numbers=("NCH", "OIH", "NCH"),
        precision=jax.lax.Precision.HIGHEST,
        preferred_element_type=jnp.float32,
    )[:, 0]
    return out[:, :out_len]


@functools.partial(jax.jit, static_argnames=("dtype",))
def basic_pitch_cqt(audio_bs: jax.Array, dtype: str = "float32") -> jax.Array:
    """Basic Pitch's CQT magnitude: [batch, samples] at 22050 Hz -> [batch, frames, 309].

    For the model's 43844-sample windows this gives 172 frames. Jittable. ``dtype``: the
    operand dtype of the kernel GEMMs and the decimation FIR (``"bfloat16"`` for mixed
    precision; accumulation and output stay float32).
    """
    dtype = jnp.dtype(dtype)
    consts = basic_pitch_constants()
    audio_bs = jnp.asarray(audio_bs, jnp.float32)
    kernels = consts["kernels"]
    # [256, 72]: real parts, then minus imaginary parts (the TF port's sign convention).
    weight = jnp.asarray(np.concatenate([kernels.real, -kernels.imag], axis=0).T.astype(np.float32))
    lowpass = jnp.asarray(consts["lowpass"].astype(np.float32))
    bpo = bp.BINS_PER_OCTAVE
    octaves = []
    signal = audio_bs
    for octave in range(_bp_octave_count()):
        stride = bp.HOP_SAMPLES // 2**octave
        if stride < 1:
            raise ValueError("Basic Pitch CQT needs hop >= 2**(octaves-1)")
        padded = jnp.pad(signal, ((0, 0), (_KERNEL_LEN // 2, _KERNEL_LEN // 2)), mode="reflect")
        # Strided VALID cross-correlation (TF conv1d semantics) as one gather of frames and
        # one GEMM. (A strided conv gives the same values to 6e-7 but a different float32
        # rounding; this form is the one measured against Basic Pitch's outputs.)
        count = (padded.shape[1] - _KERNEL_LEN) // stride + 1
        index = np.arange(count)[:, None] * stride + np.arange(_KERNEL_LEN)[None, :]
        response = jnp.einsum(
            "btn,nk->btk",
            padded[:, index].astype(dtype),
            weight.astype(dtype),
            precision=jax.lax.Precision.HIGHEST,
            preferred_element_type=jnp.float32,
        )
        octaves.append(jnp.sqrt(response[..., :bpo] ** 2 + response[..., bpo:] ** 2))
        if octave + 1 < _bp_octave_count():
            signal = _halfband_decimate(signal, lowpass, dtype)
    num_frames = min(o.shape[1] for o in octaves)
    stacked = jnp.concatenate([o[:, :num_frames] for o in reversed(octaves)], axis=-1)
    stacked = stacked[..., -bp.N_CQT_BINS :]
    return stacked * jnp.asarray(consts["scale"].astype(np.float32))


@jax.jit
def normalized_log(mag_btf: jax.Array) -> jax.Array:
    """Basic Pitch's NormalizedLog: dB of power, min-max normalised per example to [0, 1]."""
    power = jnp.square(mag_btf)
    db = 10.0 * jnp.log10(power + 1e-10)
    axes = tuple(range(1, db.ndim))
    db = db - jnp.min(db, axis=axes, keepdims=True)
    peak = jnp.max(db, axis=axes, keepdims=True)
    return jnp.where(peak > 0, db / jnp.where(peak > 0, peak, 1.0), 0.0)


@functools.partial(jax.jit, static_argnames=("exact",))
def basic_pitch_frontend(audio_bs: jax.Array, exact: bool = True) -> jax.Array:
    """CQT -> NormalizedLog -> harmonic stack: [batch, samples] -> [batch, frames, 264, 8].

    ``exact=True`` uses Basic Pitch's own CQT (what its weights expect); ``exact=False``
    uses the faster librosa-definition :func:`cqt` in the same configuration. (In the NMP
    model an input BatchNorm sits between NormalizedLog and the stack.)
    """
    from amt_jax.audio.harmonic import harmonic_stack

    if exact:
        mag = basic_pitch_cqt(audio_bs)
    else:
        mag = cqt(audio_bs, CQTConfig())
    return harmonic_stack(normalized_log(mag))

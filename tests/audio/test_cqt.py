"""CQT against an exact dense transform, librosa, and an independent Basic Pitch port."""

import math

import librosa
import numpy as np
import pytest
import scipy.signal

from amt_jax.audio import cqt as C

SR = 22050


def _signals(num_samples, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / SR
    chirp = 0.3 * np.sin(2 * np.pi * (40 * t + 900 * t**2))
    noise = 0.05 * rng.standard_normal(num_samples)
    tones = sum(0.2 / h * np.sin(2 * np.pi * 220 * h * t + h) for h in range(1, 9))
    return {
        "chirp": chirp.astype(np.float32),
        "noise": noise.astype(np.float32),
        "harmonic": (tones + 0.01 * noise).astype(np.float32),
    }


def _dense_cqt(x, config, bins=None):
    """Exact CQT by direct correlation with librosa-definition kernels, float64."""
    x = np.asarray(x, np.float64)
    hop, frames = config.hop_length, config.num_frames(len(x))
    bins = range(config.n_bins) if bins is None else bins
    out = np.zeros((frames, len(bins)))
    for i, k in enumerate(bins):
        f, length = config.frequencies()[k], config.lengths()[k]
        j = np.arange(-length // 2, length // 2)  # librosa's sample positions
        window = scipy.signal.get_window("hann", len(j), fftbins=True)
        kernel = window * np.exp(2j * np.pi * f * j / config.sample_rate)
        kernel /= np.abs(kernel).sum()
        pad = len(j) + 2
        padded = np.pad(x, (pad, pad))
        index = np.arange(frames)[:, None] * hop + j[None, :].astype(int) + pad
        out[:, i] = np.abs(padded[index] @ np.conj(kernel)) * np.sqrt(length)
    return out


@pytest.fixture(scope="module")
def small_config():
    # Basic Pitch's bins/octave and hop, 4 octaves from 110 Hz: fast enough for a dense reference.
    return C.CQTConfig(fmin=110.0, n_bins=144)


@pytest.mark.parametrize("name", ["chirp", "noise", "harmonic"])
def test_cqt_matches_exact_dense_transform(name, small_config):
    x = _signals(SR)[name]
    ours = np.asarray(C.cqt(x[None], small_config))[0]
    exact = _dense_cqt(x, small_config)
    assert ours.shape == exact.shape == (small_config.num_frames(SR), 144)
    rel = np.linalg.norm(ours - exact) / np.linalg.norm(exact)
    assert rel <= 1e-3, rel


def test_cqt_full_basic_pitch_range_matches_dense_on_low_and_high_bins():
    config = C.CQTConfig()  # 309 bins from 27.5 Hz, the real configuration
    x = _signals(SR * 2, seed=1)["harmonic"] + _signals(SR * 2, seed=1)["chirp"]
    ours = np.asarray(C.cqt(x[None], config))[0]
    keep = [0, 1, 100, 200, 300, 308]
    exact = _dense_cqt(x, config, bins=keep)
    rel = np.linalg.norm(ours[:, keep] - exact) / np.linalg.norm(exact)
    assert rel <= 1e-3, rel


def test_cqt_agrees_with_librosa_within_its_resampling_error(small_config):
    # librosa decimates octaves with soxr, whose transition band attenuates the top bin of
    # each octave (up to ~5 dB); the measured disagreement with the exact transform is ~4 %.
    x = _signals(SR)["harmonic"] + _signals(SR)["chirp"]
    ours = np.asarray(C.cqt(x[None], small_config))[0]
    theirs = np.abs(
        librosa.cqt(x, sr=SR, hop_length=256, fmin=110.0, n_bins=144, bins_per_octave=36)
    ).T
    assert ours.shape == theirs.shape
    rel = np.linalg.norm(ours - theirs) / np.linalg.norm(theirs)
    assert rel <= 0.06, rel


def test_pure_tone_peaks_in_its_bin_with_librosa_scaling(small_config):
    f = 110.0 * 2 ** (50 / 36)
    x = np.sin(2 * np.pi * f * np.arange(SR) / SR).astype(np.float32)
    ours = np.asarray(C.cqt(x[None], small_config))[0]
    mid = ours[ours.shape[0] // 2]
    assert int(np.argmax(mid)) == 50
    # scale=True: a unit sinusoid gives sqrt(filter length) / 2 in its own bin.
    expected = math.sqrt(small_config.lengths()[50]) / 2
    assert mid[50] == pytest.approx(expected, rel=2e-3)


def test_chunked_cqt_equals_single_call(small_config):
    x = _signals(SR * 3, seed=3)["harmonic"]
    whole = np.asarray(C.cqt(x[None], small_config))[0]
    chunked = C.cqt_chunked(x, small_config, chunk_frames=64)
    assert chunked.shape == whole.shape
    np.testing.assert_allclose(chunked, whole, rtol=2e-4, atol=2e-4 * whole.max())


def test_cqt_rejects_bins_above_nyquist():
    with pytest.raises(ValueError, match="Nyquist"):
        C.cqt(np.zeros((1, 1000), np.float32), C.CQTConfig(sample_rate=8000))


# ---------------------------------------------------------------------------------------
# Basic Pitch mode vs an independent float64 NumPy port written from its description.
# ---------------------------------------------------------------------------------------


def _reference_basic_pitch_cqt(x):
    bpo, hop, n_bins, fmin = 36, 256, 309, 27.5
    q = 1 / (2 ** (1 / bpo) - 1)
    f_top = fmin * 2 ** ((n_bins - 1) / bpo)
    freqs = f_top / 2 ** (1 - 1 / bpo) * 2 ** (np.arange(bpo) / bpo)
    kernels = np.zeros((bpo, 256), complex)
    for k, f in enumerate(freqs):
        length = int(np.ceil(q * SR / f))
        window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / length)
        n = np.arange(-(length // 2) - (length % 2), length // 2)
        sig = window * np.exp(2j * np.pi * f * n / SR)
        start = int(np.ceil(128 - length / 2)) - length % 2
        kernels[k, start : start + length] = sig / np.abs(sig).sum()
    fir = scipy.signal.firwin2(256, [0, 0.5 / 1.001, 0.5 * 1.001, 1], [1, 1, 0, 0])
    signal = np.asarray(x, np.float64)
    octaves = []
    for octave in range(9):
        stride = hop // 2**octave
        padded = np.pad(signal, 128, mode="reflect")
        count = (len(padded) - 256) // stride + 1
        index = np.arange(count)[:, None] * stride + np.arange(256)[None, :]
        resp = padded[index] @ kernels.T
        octaves.append(np.abs(np.real(resp) - 1j * np.imag(resp)))
        zp = np.pad(signal, 127)
        index = np.arange((len(zp) - 256) // 2 + 1)[:, None] * 2 + np.arange(256)[None, :]
        signal = zp[index] @ fir
    frames = min(o.shape[0] for o in octaves)
    mag = np.concatenate([o[:frames] for o in octaves[::-1]], axis=1)[:, -n_bins:]
    lengths = np.ceil(q * SR / (fmin * 2 ** (np.arange(n_bins) / bpo)))
    mag = mag * np.sqrt(lengths)
    db = 10 * np.log10(mag**2 + 1e-10)
    db -= db.min()
    return mag, db / db.max()


def test_basic_pitch_cqt_matches_independent_float64_port():
    sigs = _signals(43844, seed=4)
    x = sigs["harmonic"] + sigs["chirp"] + sigs["noise"]
    ref_mag, ref_norm = _reference_basic_pitch_cqt(x)
    mag = np.asarray(C.basic_pitch_cqt(x[None]))[0]
    assert mag.shape == ref_mag.shape == (172, 309)
    np.testing.assert_allclose(mag, ref_mag, rtol=1e-3, atol=1e-4 * ref_mag.max())
    norm = np.asarray(C.normalized_log(C.basic_pitch_cqt(x[None])))[0]
    assert np.max(np.abs(norm - ref_norm)) <= 1e-4


def test_normalized_log_all_zero_window_is_zero_not_nan():
    out = np.asarray(C.normalized_log(np.zeros((2, 5, 7), np.float32)))
    assert np.all(out == 0)


def test_basic_pitch_frontend_shape_and_range():
    sigs = _signals(43844, seed=5)
    x = sigs["harmonic"] + sigs["noise"]  # every bin well above the -100 dB floor
    stack = np.asarray(C.basic_pitch_frontend(np.stack([x, 0.5 * x])))
    assert stack.shape == (2, 172, 264, 8)
    assert stack.min() >= 0 and stack.max() <= 1
    # NormalizedLog removes gain: halving the input leaves the features (almost) unchanged.
    np.testing.assert_allclose(stack[0], stack[1], atol=2e-3)

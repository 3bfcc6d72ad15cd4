"""Log-mel against tf.signal (MT3) and librosa (Onsets and Frames) references."""

import dataclasses
import os
import subprocess
import sys

import jax
import librosa
import numpy as np
import pytest
import tensorflow as tf

from amt_jax.audio import mel


def _audio(num_samples, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / 16000
    tones = sum(0.1 * np.sin(2 * np.pi * f * t) for f in (110, 440, 1234.5, 5000))
    return (tones + 0.02 * rng.standard_normal(num_samples)).astype(np.float32)


def _tf_mt3_log_mel(audio_bs, dtype=np.float64):
    """MT3's spectrogram, written directly with tf.signal."""
    stft = tf.signal.stft(
        audio_bs.astype(dtype),
        frame_length=2048,
        frame_step=128,
        fft_length=2048,
        window_fn=tf.signal.hann_window,
        pad_end=True,
    )
    matrix = tf.signal.linear_to_mel_weight_matrix(
        512, 1025, 16000, 20.0, 7600.0, tf.as_dtype(dtype)
    )
    spec = tf.tensordot(tf.abs(stft), matrix, 1).numpy().astype(np.float64)
    return np.log(np.where(spec > 0, spec, 1e-5))


def test_mt3_log_mel_matches_tf_signal():
    audio = np.stack([_audio(32768, 0), _audio(32768, 1)])
    ours = np.asarray(mel.log_mel(audio, mel.MT3_MEL))
    ref = _tf_mt3_log_mel(audio)
    assert ours.shape == ref.shape == (2, 256, 512)  # one 2.048 s segment = 256 frames
    error = np.abs(ours - ref)
    # float32 FFT rounding is relative to the frame's loudest bin, so log error grows in
    # bins 60+ dB below it; above that, 1e-4 holds.
    assert np.max(error[ref > np.log(1e-2)]) <= 1e-4
    assert np.max(error) <= 5e-4
    # ... and we are closer to the float64 transform than tf.signal's own float32 run.
    tf32_error = np.abs(_tf_mt3_log_mel(audio, np.float32) - ref)
    assert np.max(error) < np.max(tf32_error)


def test_mt3_log_mel_at_reference_precision_matches_tf_signal():
    """Same algorithm as tf.signal: run at the reference's precision, the two agree to 1e-4.

    (In float32 the FFT's rounding, relative to a frame's loudest bin, bounds the error in
    near-empty single-FFT-bin mel filters; see the test above.)
    """
    audio = np.stack([_audio(32768, 0), _audio(32768, 1)]).astype(np.float64)
    with jax.enable_x64(True):
        ours_mel = mel.log_mel(audio, mel.MT3_MEL)
        assert ours_mel.dtype == np.float64
        ours = np.asarray(ours_mel)
    ref = _tf_mt3_log_mel(audio)
    assert np.max(np.abs(ours - ref)) <= 1e-4
    assert np.max(np.abs(ours - ref)) <= 1e-9  # in fact, float64 round-off only
    # x64 is scoped: the default path is still float32.
    assert mel.log_mel(audio[:1, :4096], mel.MT3_MEL).dtype == np.float32


def test_mt3_filters_without_fft_bins_stay_at_log_floor():
    ours = np.asarray(mel.log_mel(_audio(32768)[None], mel.MT3_MEL))[0]
    # tf.signal's matrix gives filters 1 and 10 no FFT bin (reference, mt3.md section 3).
    np.testing.assert_allclose(ours[:, [1, 10]], np.log(1e-5), rtol=1e-6)


def test_onsets_frames_mel_matches_librosa():
    audio = _audio(16000 * 2, 3)
    ours = np.asarray(mel.log_mel(audio[None], mel.ONSETS_FRAMES_MEL))[0]
    spec = librosa.feature.melspectrogram(
        y=audio.astype(np.float64),
        sr=16000,
        n_fft=2048,
        hop_length=512,
        n_mels=229,
        fmin=30.0,
        htk=True,
    )
    ref = librosa.power_to_db(spec).T  # ref 1.0, amin 1e-10, top_db 80
    assert ours.shape == ref.shape
    assert np.max(np.abs(ours - ref)) <= 1e-3  # dB


@pytest.mark.parametrize("config", [mel.MT3_MEL, mel.ONSETS_FRAMES_MEL], ids=["mt3", "of"])
def test_chunked_log_mel_equals_single_call(config):
    audio = _audio(16000 * 3 + 77, 4)
    whole = np.asarray(mel.log_mel(audio[None], config))[0]
    chunked = mel.log_mel_chunked(audio, config, chunk_frames=40)
    assert chunked.shape == whole.shape
    np.testing.assert_allclose(chunked, whole, atol=2e-4)


def test_frame_counts():
    assert mel.MT3_MEL.num_frames(32768) == 256
    assert mel.MT3_MEL.num_frames(32769) == 257
    assert mel.ONSETS_FRAMES_MEL.num_frames(16000) == 32


def test_packaged_mt3_filterbank_is_tf_signals_matrix_bit_for_bit():
    """The stored matrix (so transcription skips TensorFlow) is tf.signal's, unchanged."""
    config = mel.MT3_MEL
    assert mel.packaged_filterbank_path(config).exists()
    reference = mel.tf_signal_filterbank(config)
    np.testing.assert_array_equal(mel._packaged_filterbank(config), reference)
    np.testing.assert_array_equal(mel.mel_filterbank(config), reference.astype(np.float32))
    # Other configs have no stored matrix and go to tf.signal itself.
    other = dataclasses.replace(config, n_mels=80, fmin=125.0)
    assert mel._packaged_filterbank(other) is None
    np.testing.assert_array_equal(
        mel.mel_filterbank(other),
        tf.signal.linear_to_mel_weight_matrix(80, 1025, 16000, 125.0, 7600.0, tf.float64)
        .numpy()
        .astype(np.float32),
    )


def test_mt3_log_mel_does_not_import_tensorflow():
    code = (
        "import sys, numpy as np\n"
        "from amt_jax.audio import mel\n"
        "out = mel.log_mel(np.zeros((1, 4096), np.float32), mel.MT3_MEL)\n"
        "assert out.shape == (1, 32, 512), out.shape\n"
        "print('tensorflow' in sys.modules)\n"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "False"

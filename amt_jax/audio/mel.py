"""Jitted (log-)mel spectrograms for MT3 and Onsets and Frames.

The filterbank matrices come from the libraries that define them (``tf.signal`` for MT3,
librosa for Onsets and Frames) and are computed once per configuration on the host; the
STFT, magnitude, mel projection and log run in JAX so they sit inside the model's jitted
step. The mel projection is block-banded: the filterbank is > 99 % zeros, so each block
of mel rows only multiplies the FFT bins it touches.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class MelConfig:
    """A mel-spectrogram definition.

    filterbank: ``"tf"`` = ``tf.signal.linear_to_mel_weight_matrix`` (HTK, unnormalised,
      DC row zeroed; MT3), ``"librosa"`` = ``librosa.filters.mel(htk=..., norm=...)``.
    center: librosa-style centred frames (``pad_mode`` padding of n_fft // 2 both sides,
      ``1 + n // hop`` frames); otherwise tf.signal's ``pad_end=True`` framing
      (``ceil(n / hop)`` frames, frame i covers samples ``[hop * i, hop * i + n_fft)``).
    power: 1 for magnitude, 2 for power.
    log: ``"safe_log"`` = natural log with values <= 0 replaced by 1e-5 (MT3),
      ``"power_to_db"`` = librosa ``power_to_db(ref=1, amin, top_db)`` per example, or
      ``"none"``.
    """

    sample_rate: int = 16000
    n_fft: int = 2048
    hop_length: int = 128
    n_mels: int = 512
    fmin: float = 20.0
    fmax: float = 7600.0
    filterbank: str = "tf"
    htk: bool = True
    norm: str | None = None
    center: bool = False
    pad_mode: str = "constant"
    power: float = 1.0
    log: str = "safe_log"
    amin: float = 1e-10
    top_db: float | None = 80.0

    def num_frames(self, num_samples: int) -> int:
        if self.center:
            return 1 + num_samples // self.hop_length
        return -(-num_samples // self.hop_length)


#: MT3: 16 kHz, FFT 2048, hop 128, magnitude, 512 HTK bins 20-7600 Hz (tf.signal), safe log.
MT3_MEL = MelConfig()

#: Onsets and Frames (MAESTRO paper): librosa melspectrogram, 229 HTK bins 30-8000 Hz,
#: hop 512, power 2, centred, then ``power_to_db`` (ref 1, amin 1e-10, top_db 80).
ONSETS_FRAMES_MEL = MelConfig(
    sample_rate=16000,
    n_fft=2048,
    hop_length=512,
    n_mels=229,
    fmin=30.0,
    fmax=8000.0,
    filterbank="librosa",
    htk=True,
    norm="slaney",
    center=True,
    pad_mode="constant",
    power=2.0,
    log="power_to_db",
)


def mel_filterbank(config: MelConfig, dtype: np.dtype = np.float32) -> np.ndarray:
    """The [n_fft // 2 + 1, n_mels] filterbank the config names (float32 by default)."""
    return np.ascontiguousarray(_mel_filterbank_float64(config), dtype=dtype)


@functools.lru_cache(maxsize=16)
def _mel_filterbank_float64(config: MelConfig) -> np.ndarray:
    if config.filterbank == "tf":
        matrix = _packaged_filterbank(config)
        if matrix is None:
            matrix = tf_signal_filterbank(config)
    elif config.filterbank == "librosa":
        import librosa

        matrix = librosa.filters.mel(
            sr=config.sample_rate,
            n_fft=config.n_fft,
            n_mels=config.n_mels,
            fmin=config.fmin,
            fmax=config.fmax,
            htk=config.htk,
            norm=config.norm,
            dtype=np.float64,
        ).T
    else:
        raise ValueError(f"Unknown mel filterbank {config.filterbank!r}; use 'tf' or 'librosa'")
    matrix = np.ascontiguousarray(matrix, dtype=np.float64)
    matrix.setflags(write=False)
    return matrix


def tf_signal_filterbank(config: MelConfig) -> np.ndarray:
    """``tf.signal.linear_to_mel_weight_matrix`` in float64 (imports TensorFlow)."""
    import tensorflow as tf  # only for its filterbank definition

    return tf.signal.linear_to_mel_weight_matrix(
        num_mel_bins=config.n_mels,
        num_spectrogram_bins=config.n_fft // 2 + 1,
        sample_rate=config.sample_rate,
        lower_edge_hertz=config.fmin,
        upper_edge_hertz=config.fmax,
        dtype=tf.float64,
    ).numpy()


def packaged_filterbank_path(config: MelConfig) -> pathlib.Path:
    """Where tf.signal's float64 matrix for a config is stored in the package."""
    name = (
        f"tf_mel_{config.n_mels}x{config.n_fft // 2 + 1}_sr{config.sample_rate}"
        f"_{config.fmin:g}-{config.fmax:g}hz.npz"
    )
    return pathlib.Path(__file__).parent / "filterbanks" / name


def _packaged_filterbank(config: MelConfig) -> np.ndarray | None:
    """tf.signal's float64 matrix saved in the package (MT3's), so inference skips TensorFlow."""
    path = packaged_filterbank_path(config)
    if not path.exists():
        return None
    with np.load(path) as stored:
        matrix = np.zeros(tuple(stored["shape"]), np.float64)
        matrix[stored["rows"], stored["cols"]] = stored["values"]
    return matrix


@functools.lru_cache(maxsize=16)
def _mel_blocks(config: MelConfig, block_size: int = 32) -> tuple[tuple[int, int, int, int], ...]:
    """(mel_start, mel_stop, fft_start, fft_stop) per block of mel rows with non-zero weights."""
    matrix = _mel_filterbank_float64(config)
    blocks = []
    for start in range(0, config.n_mels, block_size):
        stop = min(start + block_size, config.n_mels)
        rows = np.nonzero(np.any(matrix[:, start:stop] != 0, axis=1))[0]
        if rows.size == 0:
            blocks.append((start, stop, 0, 0))
        else:
            blocks.append((start, stop, int(rows[0]), int(rows[-1]) + 1))
    return tuple(blocks)


def _compute_dtype(audio_bs) -> jnp.dtype:
    """float32, or float64 for float64 input when x64 is enabled (reference-precision runs)."""
    dtype = jnp.promote_types(getattr(audio_bs, "dtype", np.float32), jnp.float32)
    return jax.dtypes.canonicalize_dtype(dtype)


def _hann(n: int, dtype) -> np.ndarray:
    """Periodic Hann window (tf.signal.hann_window / scipy ``sym=False``)."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(dtype)


def _center_pad(audio_bs: jax.Array, config: MelConfig) -> jax.Array:
    """librosa-style centring: ``pad_mode`` padding of n_fft // 2 on both sides."""
    if not config.center:
        return audio_bs
    pad = config.n_fft // 2
    mode = {"constant": "constant", "reflect": "reflect", "edge": "edge"}[config.pad_mode]
    return jnp.pad(audio_bs, ((0, 0), (pad, pad)), mode=mode)


def _frame(audio_bs: jax.Array, config: MelConfig) -> jax.Array:
    """[batch, samples] -> [batch, frames, n_fft] (frame t starts at sample t * hop)."""
    num_samples = audio_bs.shape[-1]
    n_fft, hop = config.n_fft, config.hop_length
    num_frames = config.num_frames(num_samples)
    audio_bs = _center_pad(audio_bs, config)
    needed = (num_frames - 1) * hop + n_fft
    if audio_bs.shape[-1] < needed:
        audio_bs = jnp.pad(audio_bs, ((0, 0), (0, needed - audio_bs.shape[-1])))
    audio_bs = audio_bs[:, :needed]
    starts = jnp.arange(num_frames, dtype=jnp.int32) * hop
    # One contiguous window copy per frame (cheaper on XLA:CPU than a scalar gather).
    take = jax.vmap(lambda start: jax.lax.dynamic_slice_in_dim(audio_bs, start, n_fft, 1), 0, 1)
    return take(starts)


def spectrogram(audio_bs: jax.Array, config: MelConfig) -> jax.Array:
    """|STFT|**power with a periodic Hann window: [batch, samples] -> [batch, frames, freqs]."""
    dtype = _compute_dtype(audio_bs)
    frames_btn = _frame(jnp.asarray(audio_bs, dtype), config)
    window = _hann(config.n_fft, dtype)
    spec_btf = jnp.abs(jnp.fft.rfft(frames_btn * window, axis=-1))
    if config.power == 2:
        spec_btf = spec_btf * spec_btf
    elif config.power != 1:
        spec_btf = spec_btf**config.power
    return spec_btf


def _mel_project(spec_btf: jax.Array, config: MelConfig) -> jax.Array:
    """Block-banded mel projection: each block of mel rows multiplies only its FFT bins."""
    matrix = mel_filterbank(config, spec_btf.dtype)
    outputs = []
    for mel_start, mel_stop, fft_start, fft_stop in _mel_blocks(config):
        if fft_stop == fft_start:
            outputs.append(jnp.zeros(spec_btf.shape[:2] + (mel_stop - mel_start,), spec_btf.dtype))
            continue
        weights = jnp.asarray(matrix[fft_start:fft_stop, mel_start:mel_stop])
        outputs.append(
            jnp.einsum(
                "btf,fm->btm",
                spec_btf[:, :, fft_start:fft_stop],
                weights,
                precision=jax.lax.Precision.HIGHEST,
            )
        )
    return jnp.concatenate(outputs, axis=-1)


def mel_spectrogram(
    audio_bs: jax.Array, config: MelConfig = MT3_MEL, chunk_frames: int = 256
) -> jax.Array:
    """Mel spectrogram (before the log): [batch, samples] -> [batch, frames, n_mels].

    Long inputs are processed ``chunk_frames`` frames at a time inside one ``lax.map``, so
    the framed signal and its spectrum stay cache-sized instead of being materialised for
    the whole input (3x less time on a 60 s file here; the values are identical).
    The computation is float32; float64 input with x64 enabled runs it in float64.
    """
    audio_bs = jnp.asarray(audio_bs, _compute_dtype(audio_bs))
    batch, num_samples = audio_bs.shape
    n_fft, hop = config.n_fft, config.hop_length
    num_frames = config.num_frames(num_samples)
    audio_bs = _center_pad(audio_bs, config)
    chunk = min(chunk_frames, num_frames)
    num_chunks = -(-num_frames // chunk)
    chunk_samples = (chunk - 1) * hop + n_fft
    needed = (num_chunks * chunk - 1) * hop + n_fft
    if audio_bs.shape[1] < needed:
        audio_bs = jnp.pad(audio_bs, ((0, 0), (0, needed - audio_bs.shape[1])))
    window = _hann(n_fft, audio_bs.dtype)
    starts = jnp.arange(chunk, dtype=jnp.int32) * hop

    def one_chunk(index):
        segment = jax.lax.dynamic_slice_in_dim(audio_bs, index * chunk * hop, chunk_samples, 1)
        frames = jax.vmap(
            lambda start: jax.lax.dynamic_slice_in_dim(segment, start, n_fft, 1), 0, 1
        )(starts)
        spec = jnp.abs(jnp.fft.rfft(frames * window, axis=-1))
        if config.power == 2:
            spec = spec * spec
        elif config.power != 1:
            spec = spec**config.power
        return _mel_project(spec, config)

    if num_chunks == 1:
        out = one_chunk(0)
    else:
        out = jax.lax.map(one_chunk, jnp.arange(num_chunks))  # [chunks, batch, chunk, mels]
        out = jnp.moveaxis(out, 0, 1).reshape(batch, num_chunks * chunk, config.n_mels)
    return out[:, :num_frames]


def apply_log(mel_btm: jax.Array, config: MelConfig) -> jax.Array:
    if config.log == "safe_log":
        return jnp.log(jnp.where(mel_btm > 0, mel_btm, 1e-5))
    if config.log == "power_to_db":
        db = 10.0 * jnp.log10(jnp.maximum(mel_btm, config.amin))
        if config.top_db is not None:
            peak = jnp.max(db, axis=tuple(range(1, db.ndim)), keepdims=True)
            db = jnp.maximum(db, peak - config.top_db)
        return db
    if config.log == "none":
        return mel_btm
    raise ValueError(f"Unknown log mode {config.log!r}")


def log_mel(audio_bs: jax.Array, config: MelConfig = MT3_MEL) -> jax.Array:
    """Log-mel spectrogram, jittable: [batch, samples] -> [batch, frames, n_mels].

    For MT3 a 2.048 s segment (32768 samples at 16 kHz) gives exactly 256 frames.
    """
    return apply_log(mel_spectrogram(audio_bs, config), config)


def log_mel_chunked(
    audio_s: np.ndarray, config: MelConfig = MT3_MEL, chunk_frames: int = 2048
) -> np.ndarray:
    """Log-mel of a long 1-D signal in bounded memory: ``chunk_frames`` frames per call.

    Frames are computed from the samples they cover, so the result equals one
    :func:`log_mel` call (except ``power_to_db``'s ``top_db`` clip, which is applied over
    the whole signal at the end, as for a single call).
    """
    audio_s = np.asarray(audio_s, np.float32)
    if audio_s.ndim != 1:
        raise ValueError(f"log_mel_chunked expects mono [samples], got shape {audio_s.shape}")
    num_frames = config.num_frames(audio_s.shape[0])
    hop, n_fft = config.hop_length, config.n_fft
    lead = n_fft // 2 if config.center else 0
    if lead:
        mode = {"constant": "constant", "reflect": "reflect", "edge": "edge"}[config.pad_mode]
        audio_s = np.pad(audio_s, (lead, lead), mode=mode)
    padded = np.pad(audio_s, (0, (num_frames - 1) * hop + n_fft))
    # Per-chunk: mel + element-wise log; the only global step (power_to_db's top_db clip)
    # is applied in place at the end, so no full-size temporaries are made.
    per_chunk = dataclasses.replace(config, center=False, top_db=None)
    chunk_samples = (chunk_frames - 1) * hop + n_fft
    fn = jax.jit(functools.partial(log_mel, config=per_chunk))
    out = np.empty((num_frames, config.n_mels), np.float32)
    for first in range(0, num_frames, chunk_frames):
        count = min(chunk_frames, num_frames - first)
        piece = padded[first * hop : first * hop + chunk_samples]
        if piece.shape[0] < chunk_samples:
            piece = np.pad(piece, (0, chunk_samples - piece.shape[0]))
        # Pad-end framing of chunk_samples samples yields ceil(chunk_samples / hop) frames;
        # the first ``count`` of them are exactly the frames we need.
        out[first : first + count] = np.asarray(fn(piece[None]))[0, :count]
    if config.log == "power_to_db" and config.top_db is not None:
        np.maximum(out, out.max() - config.top_db, out=out)
    return out


def frames_per_second(config: MelConfig) -> float:
    return config.sample_rate / config.hop_length


__all__ = [
    "MT3_MEL",
    "ONSETS_FRAMES_MEL",
    "MelConfig",
    "apply_log",
    "frames_per_second",
    "log_mel",
    "log_mel_chunked",
    "mel_filterbank",
    "mel_spectrogram",
    "packaged_filterbank_path",
    "spectrogram",
    "tf_signal_filterbank",
]

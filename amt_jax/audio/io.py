"""Loading and validating audio at the edge of the system.

Everything that enters amt_jax as audio passes through :func:`load_audio` or
:func:`validate_audio`, so inner code can assume finite float32 mono samples at a known
rate. Errors name the file and say what is wrong.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator

import numpy as np
import soundfile as sf
import soxr

#: Shortest audio accepted: anything shorter cannot hold a single analysis frame.
MIN_SAMPLES = 1
#: Extensions we try to open when walking directories.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".m4a", ".opus")


class AudioError(ValueError):
    """Audio that cannot be used; the message names the source and the problem."""


def _describe(source: str | None) -> str:
    return f"'{source}'" if source else "audio array"


def validate_audio(
    samples: np.ndarray, sample_rate: int, source: str | None = None, allow_silence: bool = True
) -> np.ndarray:
    """Check samples are finite, non-empty, float, and return them as float32.

    Accepts [samples] or [samples, channels]/[channels, samples] (mixed to mono by the
    caller via :func:`to_mono`).
    """
    where = _describe(source)
    samples = np.asarray(samples)
    if samples.size == 0:
        raise AudioError(f"{where} contains no audio samples (empty file or zero duration)")
    if not np.issubdtype(samples.dtype, np.floating):
        if np.issubdtype(samples.dtype, np.integer):
            info = np.iinfo(samples.dtype)
            samples = samples.astype(np.float32) / float(max(abs(info.min), info.max))
        else:
            raise AudioError(f"{where} has unsupported sample type {samples.dtype}")
    if not np.all(np.isfinite(samples)):
        bad = np.flatnonzero(~np.isfinite(samples.reshape(-1)))
        raise AudioError(
            f"{where} contains {bad.size} NaN/inf samples (first at flat index {bad[0]}); "
            "repair or re-export the file"
        )
    if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise AudioError(f"{where} has an invalid sample rate {sample_rate!r}")
    if not allow_silence and not np.any(samples):
        raise AudioError(f"{where} is entirely silent")
    return samples.astype(np.float32, copy=False)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average channels: [samples, channels] (soundfile layout) -> [samples]."""
    samples = np.asarray(samples)
    if samples.ndim == 1:
        return samples
    if samples.ndim != 2:
        raise AudioError(f"expected [samples] or [samples, channels] audio, got {samples.shape}")
    return samples.mean(axis=1, dtype=np.float32)


def resample(samples: np.ndarray, orig_sr: int, target_sr: int, quality: str = "HQ") -> np.ndarray:
    """Band-limited resampling with soxr (the resampler librosa uses by default)."""
    if orig_sr == target_sr:
        return np.asarray(samples, np.float32)
    return soxr.resample(np.asarray(samples, np.float32), orig_sr, target_sr, quality=quality)


def check_wav_complete(path: str | os.PathLike) -> None:
    """Raise :class:`AudioError` if a RIFF/WAVE file's data stops short of its header.

    libsndfile silently reads what is there, so a cut-off download would otherwise pass
    as a shorter (or empty) recording. Non-WAV files and streaming headers that leave
    the size unset (0 or 0xFFFFFFFF) are not checked.
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        header = f.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return
        position = 12
        while position + 8 <= size:
            f.seek(position)
            chunk = f.read(8)
            chunk_id, chunk_size = chunk[:4], int.from_bytes(chunk[4:8], "little")
            if chunk_id == b"data":
                available = size - position - 8
                if chunk_size not in (0, 0xFFFFFFFF) and chunk_size > available:
                    raise AudioError(
                        f"'{path}' is truncated: its header declares {chunk_size} bytes of "
                        f"audio data but the file holds only {available} "
                        f"({100 * available / chunk_size:.1f} %); re-download or re-export it"
                    )
                return
            position += 8 + chunk_size + (chunk_size & 1)
    raise AudioError(
        f"'{path}' could not be decoded: a WAV file without a data chunk (corrupt or truncated)"
    )


def _read_with_soundfile(path: str) -> tuple[np.ndarray, int]:
    check_wav_complete(path)
    samples, sr = sf.read(path, dtype="float32", always_2d=True)
    return samples, int(sr)


def _read_with_librosa(path: str) -> tuple[np.ndarray, int]:
    import librosa  # audioread fallback for formats libsndfile cannot open (e.g. some mp3/m4a)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        samples, sr = librosa.load(path, sr=None, mono=False)
    samples = np.asarray(samples, np.float32)
    if samples.ndim == 2:  # librosa: [channels, samples]
        samples = samples.T
    else:
        samples = samples[:, None]
    return samples, int(sr)


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read a file as float32 [samples, channels] at its own rate, with clear errors."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioError(f"'{path}' does not exist")
    if os.path.isdir(path):
        raise AudioError(f"'{path}' is a directory, not an audio file")
    if os.path.getsize(path) == 0:
        raise AudioError(f"'{path}' is an empty file (0 bytes)")
    errors = []
    for reader in (_read_with_soundfile, _read_with_librosa):
        try:
            samples, sr = reader(path)
            break
        except AudioError:
            raise
        except Exception as exc:  # noqa: BLE001 - every backend failure is reported below
            errors.append(f"{reader.__name__.removeprefix('_read_with_')}: {exc}")
    else:
        ext = os.path.splitext(path)[1] or "(no extension)"
        raise AudioError(
            f"'{path}' could not be decoded as audio ({ext}); it may be corrupt, truncated, "
            f"or in an unsupported format. Decoders said: {'; '.join(errors)}"
        )
    if samples.shape[0] < MIN_SAMPLES:
        raise AudioError(f"'{path}' contains no audio samples (zero duration)")
    return samples, sr


def load_audio(
    path: str | os.PathLike,
    sample_rate: int | None = None,
    mono: bool = True,
    allow_silence: bool = True,
) -> tuple[np.ndarray, int]:
    """Load an audio file as validated float32, mixed to mono and resampled (soxr HQ).

    Returns ``(samples, sample_rate)``; samples are [samples] when ``mono`` else
    [samples, channels]. Raises :class:`AudioError` naming the file for missing, empty,
    corrupt or undecodable files and for NaN/inf samples.
    """
    path = os.fspath(path)
    samples, sr = read_audio(path)
    samples = validate_audio(samples, sr, source=path, allow_silence=allow_silence)
    if mono:
        samples = to_mono(samples)
    if sample_rate is not None and sample_rate != sr:
        if sample_rate <= 0:
            raise AudioError(f"requested sample rate must be positive, got {sample_rate}")
        if mono:
            samples = resample(samples, sr, sample_rate)
        else:
            samples = np.stack(
                [resample(samples[:, c], sr, sample_rate) for c in range(samples.shape[1])], 1
            )
        sr = sample_rate
    return np.ascontiguousarray(samples, np.float32), sr


def prepare_audio(
    samples: np.ndarray, sample_rate: int, target_rate: int, source: str | None = None
) -> np.ndarray:
    """Validate an in-memory array ([samples] or [samples, channels]) -> mono at target_rate."""
    samples = validate_audio(samples, sample_rate, source=source)
    samples = to_mono(samples)
    return resample(samples, sample_rate, target_rate)


def iter_audio_files(path: str | os.PathLike) -> Iterator[str]:
    """A file itself, or every audio file under a directory (sorted, recursive)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        for root, _, files in sorted(os.walk(path)):
            for name in sorted(files):
                if name.lower().endswith(AUDIO_EXTENSIONS):
                    yield os.path.join(root, name)
    else:
        yield path


def write_audio(path: str | os.PathLike, samples: np.ndarray, sample_rate: int) -> None:
    """Write float audio as 16-bit PCM (wav/flac by extension)."""
    sf.write(os.fspath(path), np.asarray(samples, np.float32), sample_rate, subtype="PCM_16")

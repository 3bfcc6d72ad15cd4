"""Basic Pitch's windowing and stitching (``run_inference`` / ``unwrap_output`` of 0.4.0).

Long audio is cut into overlapping 43844-sample windows exactly where basic-pitch cuts
them, and the per-window posteriors are stitched back: 15 frames dropped at each window
edge, the rest concatenated and trimmed to basic-pitch's frame count. Host-side numpy;
:class:`amt_jax.models.nmp.NMP`'s ``segment`` and ``stitch`` use it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from amt_jax.audio.basic_pitch_constants import (
    ANNOTATIONS_FPS,
    FRAMES_PER_WINDOW,
    OVERLAP_FRAMES,
    OVERLAP_SAMPLES,
    SAMPLE_RATE,
    WINDOW_HOP_SAMPLES,
    WINDOW_SAMPLES,
)


def num_windows(num_samples: int) -> int:
    """Windows basic-pitch cuts from ``num_samples`` (after prepending half an overlap)."""
    return max(1, math.ceil((num_samples + OVERLAP_SAMPLES // 2) / WINDOW_HOP_SAMPLES))


def window_audio(audio_s: np.ndarray) -> np.ndarray:
    """Mono 22.05 kHz audio → [n_windows, 43844] windows exactly as basic-pitch cuts them.

    3840 zeros are prepended, windows start every 36164 samples while the start lies inside
    the padded signal, and the last window is zero-padded at the end.
    """
    audio_s = np.asarray(audio_s, np.float32)
    if audio_s.ndim != 1:
        raise ValueError(f"window_audio expects mono audio [samples], got shape {audio_s.shape}")
    padded = np.concatenate([np.zeros(OVERLAP_SAMPLES // 2, np.float32), audio_s])
    count = num_windows(audio_s.shape[0])
    total = (count - 1) * WINDOW_HOP_SAMPLES + WINDOW_SAMPLES
    padded = np.pad(padded, (0, max(0, total - padded.shape[0])))
    starts = np.arange(count) * WINDOW_HOP_SAMPLES
    return np.stack([padded[s : s + WINDOW_SAMPLES] for s in starts])


def num_output_frames(num_samples: int, trim: str = "0.4.0") -> int:
    """Frames kept after stitching: basic-pitch 0.4.0 or HEAD (after PR #179) rule."""
    if trim == "0.4.0":
        return int(np.floor(num_samples * (ANNOTATIONS_FPS / SAMPLE_RATE)))
    if trim == "head":
        kept = FRAMES_PER_WINDOW - OVERLAP_FRAMES
        return int(num_samples / WINDOW_HOP_SAMPLES * kept)
    raise ValueError(f"trim must be '0.4.0' or 'head', got {trim!r}")


def unwrap_outputs(
    outputs: dict[str, Any], num_samples: int, trim: str = "0.4.0"
) -> dict[str, np.ndarray]:
    """Per-window posteriors [n_windows, 172, bins] → stitched [frames, bins] per head.

    15 frames are dropped at each window edge, the rest concatenated, and the result cut
    to :func:`num_output_frames` (0.4.0 and HEAD differ: 782 vs 787 frames for 9.1 s).
    """
    keep = num_output_frames(num_samples, trim)
    half = OVERLAP_FRAMES // 2
    stitched = {}
    for name, value in outputs.items():
        value = np.asarray(value)
        if value.ndim != 3:
            raise ValueError(f"{name!r} must be [windows, frames, bins], got {value.shape}")
        inner = value[:, half:-half] if half else value
        stitched[name] = inner.reshape(-1, value.shape[-1])[:keep]
    return stitched


__all__ = ["num_output_frames", "num_windows", "unwrap_outputs", "window_audio"]

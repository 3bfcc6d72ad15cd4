"""Basic Pitch's pitch bends: each note's per-frame offset read from the contour posterior.

The contour has 3 bins per semitone; a note's bend at a frame is the argmax of the contour
around the note's centre bin, weighted by a Gaussian (std 5 bins), in 1/3 semitones.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from amt_jax.audio.basic_pitch_constants import BINS_PER_SEMITONE, MIDI_OFFSET


def _gaussian_window(length: int, std: float) -> np.ndarray:
    n = np.arange(length) - (length - 1) / 2.0
    return np.exp(-0.5 * (n / std) ** 2)


def pitch_bends_from_contour(
    contour_tf: np.ndarray, start: int, end: int, pitch: int, tolerance_bins: int = 25
) -> list[int]:
    """Per-frame bend of one note in 1/3 semitones: Gaussian-weighted contour argmax.

    The contour window of ±``tolerance_bins`` around the note's centre bin (cropped at the
    edges) is weighted by a Gaussian (std 5 bins) before the argmax.
    """
    centre = BINS_PER_SEMITONE * (pitch - MIDI_OFFSET)
    n_bins = contour_tf.shape[1]
    window = _gaussian_window(2 * tolerance_bins + 1, 5.0)
    low = max(centre - tolerance_bins, 0)
    high = min(n_bins, centre + tolerance_bins + 1)
    crop_low = max(0, tolerance_bins - centre)
    crop_high = max(0, centre - (n_bins - tolerance_bins - 1))
    weighted = contour_tf[start:end, low:high] * window[crop_low : len(window) - crop_high]
    shift = tolerance_bins - crop_low
    return [int(b) for b in np.argmax(weighted, axis=1) - shift]


def pitch_bends_of_notes(
    contour_tf: np.ndarray,
    frame_events: Sequence[tuple],
    tolerance_bins: int = 25,
    frames_per_chunk: int = 1 << 16,
) -> list[list[int]]:
    """:func:`pitch_bends_from_contour` of every note (one gather and argmax per chunk).

    Bins outside the contour are padded with -inf, below any weighted contour value,
    so the argmax and its tie order are those of the cropped window. Notes are taken in
    chunks of about ``frames_per_chunk`` note frames so the gathered windows stay small
    (~27 MB) however many notes a long file has.
    """
    if not frame_events:
        return []
    starts = np.array([e[0] for e in frame_events])
    ends = np.array([e[1] for e in frame_events])
    centres = BINS_PER_SEMITONE * (np.array([e[2] for e in frame_events]) - MIDI_OFFSET)
    lengths = np.maximum(ends - starts, 0)
    contour_tf = np.asarray(contour_tf)
    width = 2 * tolerance_bins + 1
    # float32 like the contour: the weighted product below is float64 either way.
    padded = np.full((contour_tf.shape[0], contour_tf.shape[1] + width - 1), -np.inf, np.float32)
    padded[:, tolerance_bins : tolerance_bins + contour_tf.shape[1]] = contour_tf
    flat = padded.reshape(-1)
    gaussian = _gaussian_window(width, 5.0)
    offsets = np.arange(width)[None, :]
    bends: list[list[int]] = []
    note_ends = np.cumsum(lengths)
    first_note = 0
    while first_note < len(frame_events):
        # Notes [first_note, last_note) hold at most frames_per_chunk frames (at least one note).
        done = note_ends[first_note - 1] if first_note else 0
        last_note = int(np.searchsorted(note_ends, done + frames_per_chunk, side="right"))
        last_note = max(last_note, first_note + 1)
        chunk = slice(first_note, last_note)
        chunk_lengths = lengths[chunk]
        frames = np.repeat(
            starts[chunk] - np.cumsum(chunk_lengths) + chunk_lengths, chunk_lengths
        ) + np.arange(chunk_lengths.sum())
        first = frames * padded.shape[1] + np.repeat(centres[chunk], chunk_lengths)
        window = np.take(flat, first[:, None] + offsets)
        chunk_bends = np.argmax(window * gaussian, axis=1) - tolerance_bins
        bends.extend(part.tolist() for part in np.split(chunk_bends, np.cumsum(chunk_lengths)[:-1]))
        first_note = last_note
    return bends


__all__ = ["pitch_bends_from_contour", "pitch_bends_of_notes"]

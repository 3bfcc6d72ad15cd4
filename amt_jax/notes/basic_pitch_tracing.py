"""Basic Pitch's note tracing: onset and note posteriors -> notes in frames.

basic-pitch 0.4.0's ``output_to_notes_polyphonic``: onset peak picking (onsets strengthened
by rises of the note posterior), forward tracing through the note posterior with an
energy tolerance, then the "melodia trick" for notes without an onset. The note list,
order included, is basic-pitch's; only the loops are vectorised.
"""

from __future__ import annotations

import numpy as np

from amt_jax.audio.basic_pitch_constants import MIDI_OFFSET


def _hz_to_midi(hz: float) -> float:
    return 12.0 * (np.log2(hz) - np.log2(440.0)) + 69.0


def _constrain_frequency(
    onset_tp: np.ndarray, note_tp: np.ndarray, min_freq: float | None, max_freq: float | None
) -> None:
    """Zero pitches outside ``[min_freq, max_freq)`` in place (basic-pitch rounds the edges)."""
    if max_freq is not None:
        top = int(np.round(_hz_to_midi(max_freq) - MIDI_OFFSET))
        onset_tp[:, max(top, 0) :] = 0
        note_tp[:, max(top, 0) :] = 0
    if min_freq is not None:
        bottom = int(np.round(_hz_to_midi(min_freq) - MIDI_OFFSET))
        onset_tp[:, : max(bottom, 0)] = 0
        note_tp[:, : max(bottom, 0)] = 0


def infer_onsets(onset_tp: np.ndarray, note_tp: np.ndarray, n_diff: int = 2) -> np.ndarray:
    """Onsets strengthened by sharp rises of the note posterior.

    The rise is the minimum over lags 1..n_diff of ``note[t] - note[t-lag]`` (zeros before
    the start), clipped at 0, blanked on the first ``n_diff`` frames and rescaled so its
    peak equals the peak onset; the result is the elementwise max with the onsets.
    """
    # float64 throughout, as basic-pitch (its zero padding is float64).
    note_tp = np.asarray(note_tp, np.float64)
    rise_tp = None
    for lag in range(1, n_diff + 1):
        diff_tp = np.empty_like(note_tp)
        diff_tp[:lag] = note_tp[:lag]  # minus the zero padding
        np.subtract(note_tp[lag:], note_tp[:-lag], out=diff_tp[lag:])
        rise_tp = diff_tp if rise_tp is None else np.minimum(rise_tp, diff_tp, out=rise_tp)
    np.maximum(rise_tp, 0, out=rise_tp)
    rise_tp[:n_diff] = 0
    peak = np.max(rise_tp)
    # basic-pitch divides unguarded (NaN on a flat posterior); a flat posterior adds nothing.
    rise_tp = np.max(onset_tp) * rise_tp / peak if peak > 0 else rise_tp
    return np.maximum(onset_tp, rise_tp)


def _strict_time_peaks(x_tp: np.ndarray) -> np.ndarray:
    """Boolean mask of strict local maxima along time; the first and last frame never peak."""
    peaks = np.zeros(x_tp.shape, dtype=bool)
    if x_tp.shape[0] >= 3:
        middle = x_tp[1:-1]
        peaks[1:-1] = (middle > x_tp[:-2]) & (middle > x_tp[2:])
    return peaks


def _trace_end(below_t: bytes, tolerance: int) -> tuple[int, int]:
    """basic-pitch's trace loop over the frames it may visit, in visiting order.

    ``below_t``: one byte per frame, 1 where the energy is under the frame threshold. The
    loop visits frames until ``tolerance`` consecutive ones are below or the frames run
    out; returns (frames visited, trailing below count). A substring search finds the
    first run, so no Python loop runs per frame.
    """
    if tolerance <= 0:
        return 0, 0
    run = below_t.find(b"\x01" * tolerance)
    if run >= 0:
        return run + tolerance, tolerance
    return len(below_t), len(below_t) - 1 - below_t.rfind(b"\x00")


def note_events_in_frames(
    note_tp: np.ndarray,
    onset_tp: np.ndarray,
    *,
    onset_threshold: float = 0.5,
    frame_threshold: float = 0.3,
    min_note_frames: int = 11,
    use_inferred_onsets: bool = True,
    min_freq: float | None = None,
    max_freq: float | None = None,
    melodia_trick: bool = True,
    energy_tolerance: int = 11,
) -> list[tuple[int, int, int, float]]:
    """basic-pitch's ``output_to_notes_polyphonic``: (start_frame, end_frame, pitch, amplitude).

    Notes from onset peaks come first (latest onset first, higher pitch first within a
    frame), then melodia-trick notes in order of decreasing peak energy. A note is kept only
    when ``end - start > min_note_frames``.

    Same notes, in the same order, as the frame-by-frame loops of basic-pitch, computed
    faster: each trace is one vectorised scan of a pitch's column (the loop only reads the
    column it walks, and its zeroing never touches a frame it reads later), and the melodia
    trick's repeated global argmax is one sort of the remaining energy (values only ever
    drop to zero, so the next argmax is the next entry of the sorted list not yet zeroed;
    ties in flat index order, as ``np.argmax``).
    """
    note_tp = np.array(note_tp, copy=True)
    onset_tp = np.array(onset_tp, copy=True)
    if note_tp.shape != onset_tp.shape or note_tp.ndim != 2:
        raise ValueError(
            f"note and onset posteriors must both be [frames, pitches], got {note_tp.shape} "
            f"and {onset_tp.shape}"
        )
    if melodia_trick and not frame_threshold >= 0:
        # basic-pitch's melodia loop never ends for a negative threshold (zeroed cells stay
        # above it); refuse instead of hanging.
        raise ValueError(f"frame_threshold must be >= 0, got {frame_threshold}")
    n_frames, n_pitches = note_tp.shape
    _constrain_frequency(onset_tp, note_tp, min_freq, max_freq)
    if use_inferred_onsets:
        onset_tp = infer_onsets(onset_tp, note_tp)

    peak_tp = np.where(_strict_time_peaks(onset_tp), onset_tp, 0.0)
    onset_times, onset_pitches = np.nonzero(peak_tp >= onset_threshold)
    # Energy not yet claimed by a note, pitch-major so a pitch's frames are contiguous, and
    # whether each cell is under the frame threshold (kept in step when cells are zeroed).
    remaining_pt = note_tp.T.copy(order="C")  # a copy even where .T is contiguous
    below_pt = (remaining_pt < frame_threshold).astype(np.uint8)
    # (compared as the posteriors are: a float32 array against a Python float is float32)
    zero_is_below = np.uint8(np.zeros((), remaining_pt.dtype) < frame_threshold)

    def clear(first: int, stop: int, pitch: int) -> None:
        remaining_pt[max(pitch - 1, 0) : pitch + 2, first:stop] = 0
        below_pt[max(pitch - 1, 0) : pitch + 2, first:stop] = zero_is_below

    events: list[tuple[int, int, int, float]] = []
    for start, pitch in zip(onset_times[::-1].tolist(), onset_pitches[::-1].tolist()):
        if start >= n_frames - 1:
            continue
        # frames start+1 .. n-2 may be visited; the note ends before the trailing run
        visited, below = _trace_end(
            below_pt[pitch, start + 1 : n_frames - 1].tobytes(), energy_tolerance
        )
        end = start + 1 + visited - below
        if end - start <= min_note_frames:
            continue
        clear(start, end, pitch)
        events.append((start, end, pitch + MIDI_OFFSET, note_tp[start:end, pitch].mean()))

    if not melodia_trick:
        return events
    flat = remaining_pt.T.reshape(-1)  # time-major copy: np.argmax's tie order
    candidates = np.flatnonzero(flat > frame_threshold)
    order = candidates[np.argsort(-flat[candidates], kind="stable")]
    for index in order.tolist():
        middle, pitch = divmod(index, n_pitches)
        if not remaining_pt[pitch, middle] > frame_threshold:
            continue  # claimed since the sort (values only drop to 0)
        remaining_pt[pitch, middle] = 0
        below_pt[pitch, middle] = zero_is_below
        if middle + 1 < n_frames - 1:
            visited, below = _trace_end(
                below_pt[pitch, middle + 1 : n_frames - 1].tobytes(), energy_tolerance
            )
            clear(middle + 1, middle + 1 + visited, pitch)
            end = middle + visited - below
        else:
            end = middle
        if middle > 1:
            backward = below_pt[pitch, middle - 1 : 0 : -1]  # frames middle-1 .. 1
            visited, below = _trace_end(backward.tobytes(), energy_tolerance)
            clear(middle - visited, middle, pitch)
            start = middle - visited + below
        else:
            start = middle
        if end - start <= min_note_frames:
            continue
        events.append((start, end, pitch + MIDI_OFFSET, note_tp[start:end, pitch].mean()))
    return events


__all__ = ["infer_onsets", "note_events_in_frames"]

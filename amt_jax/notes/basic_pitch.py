"""Basic Pitch / NMP note creation: posteriors → notes (basic-pitch 0.4.0 behaviour).

Onset peak picking with onsets inferred from the note posterior, forward tracing through
the note posterior with an 11-frame energy tolerance, the "melodia trick" for notes
without an onset, frame → time conversion *including* basic-pitch's window-drift
correction, and pitch bends read from the contour posterior. Reproducing basic-pitch's
note list exactly is what lets users switch without their MIDI changing, so every quirk
(tie orders, the magic 1.8 ms offset, in-place frequency limits) is kept.

Returns a ``note_seq`` ``NoteSequence`` and the raw note-event list (the same tuples
basic-pitch returns) for golden comparisons and CSV.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from note_seq.protobuf import music_pb2

# --- Basic Pitch constants (basic_pitch/constants.py facts) ---------------------------------
BASIC_PITCH_SAMPLE_RATE = 22050
BASIC_PITCH_HOP = 256
BASIC_PITCH_WINDOW_SAMPLES = 2 * BASIC_PITCH_SAMPLE_RATE - BASIC_PITCH_HOP  # 43844
BASIC_PITCH_WINDOW_FRAMES = 172  # ANNOT_N_FRAMES = 86 fps * 2 s
MIDI_OFFSET = 21  # pitch index 0 is A0
N_PITCHES = 88
CONTOUR_BINS_PER_SEMITONE = 3
N_CONTOUR_BINS = N_PITCHES * CONTOUR_BINS_PER_SEMITONE
#: constant basic-pitch adds to its per-window time correction ("needed to align properly")
MAGIC_ALIGNMENT_OFFSET = 0.0018
#: General MIDI program of "Electric Piano 1" (0-based), basic-pitch's output instrument
ELECTRIC_PIANO_1 = 4
PITCH_BEND_LIMIT = 8192


class NoteEvent(NamedTuple):
    """One decoded note, as basic-pitch's ``note_events`` tuples.

    ``start`` / ``end`` are seconds (frame indices before :func:`model_frames_to_time`),
    ``pitch_bends`` are per-frame offsets in 1/3 semitones (or ``None``).
    """

    start: float
    end: float
    pitch: int
    amplitude: float
    pitch_bends: list[int] | None


def model_frames_to_time(n_frames: int) -> np.ndarray:
    """Seconds of each stitched output frame, exactly as basic-pitch computes them.

    Frame i is nominally at ``i * 256 / 22050`` s, but each 172-frame block of stitched
    output is pulled earlier by ``(256/22050) * (172 - 43844/256) + 0.0018`` s. This only
    approximates the real window drift (issue #190), and is copied so note times match.
    """
    frames = np.arange(n_frames)
    nominal_s = frames * BASIC_PITCH_HOP / BASIC_PITCH_SAMPLE_RATE
    window_index = np.floor(frames / BASIC_PITCH_WINDOW_FRAMES)
    per_window_s = (BASIC_PITCH_HOP / BASIC_PITCH_SAMPLE_RATE) * (
        BASIC_PITCH_WINDOW_FRAMES - BASIC_PITCH_WINDOW_SAMPLES / BASIC_PITCH_HOP
    ) + MAGIC_ALIGNMENT_OFFSET
    return nominal_s - per_window_s * window_index


def minimum_note_frames(minimum_note_length_ms: float = 127.7) -> int:
    """basic-pitch's ms → frames conversion for ``minimum_note_length`` (127.7 ms → 11)."""
    return int(round(minimum_note_length_ms / 1000 * (BASIC_PITCH_SAMPLE_RATE / BASIC_PITCH_HOP)))


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
    centre = CONTOUR_BINS_PER_SEMITONE * (pitch - MIDI_OFFSET)
    n_bins = contour_tf.shape[1]
    window = _gaussian_window(2 * tolerance_bins + 1, 5.0)
    low = max(centre - tolerance_bins, 0)
    high = min(n_bins, centre + tolerance_bins + 1)
    crop_low = max(0, tolerance_bins - centre)
    crop_high = max(0, centre - (n_bins - tolerance_bins - 1))
    weighted = contour_tf[start:end, low:high] * window[crop_low : len(window) - crop_high]
    shift = tolerance_bins - crop_low
    return [int(b) for b in np.argmax(weighted, axis=1) - shift]


def basic_pitch_note_events(
    outputs: dict[str, np.ndarray],
    *,
    onset_threshold: float = 0.5,
    frame_threshold: float = 0.3,
    minimum_note_length_ms: float = 127.7,
    use_inferred_onsets: bool = True,
    min_freq: float | None = None,
    max_freq: float | None = None,
    melodia_trick: bool = True,
    include_pitch_bends: bool = True,
    energy_tolerance: int = 11,
) -> list[NoteEvent]:
    """Stitched NMP posteriors (``note``, ``onset``: [T, 88], ``contour``: [T, 264]) → events.

    Defaults are those of basic-pitch's ``predict()``; times in seconds via
    :func:`model_frames_to_time`, in basic-pitch's (unsorted) order.
    """
    for key in ("note", "onset", "contour"):
        if key not in outputs:
            raise ValueError(f"NMP outputs need a {key!r} posterior; got keys {sorted(outputs)}")
    contour_tf = np.asarray(outputs["contour"])
    frame_events = note_events_in_frames(
        np.asarray(outputs["note"]),
        np.asarray(outputs["onset"]),
        onset_threshold=onset_threshold,
        frame_threshold=frame_threshold,
        min_note_frames=minimum_note_frames(minimum_note_length_ms),
        use_inferred_onsets=use_inferred_onsets,
        min_freq=min_freq,
        max_freq=max_freq,
        melodia_trick=melodia_trick,
        energy_tolerance=energy_tolerance,
    )
    times_s = model_frames_to_time(contour_tf.shape[0])
    bends = (
        _pitch_bends_of_notes(contour_tf, frame_events)
        if include_pitch_bends
        else [None] * len(frame_events)
    )
    return [
        NoteEvent(times_s[start], times_s[end], pitch, amplitude, note_bends)
        for (start, end, pitch, amplitude), note_bends in zip(frame_events, bends)
    ]


def _pitch_bends_of_notes(
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
    centres = CONTOUR_BINS_PER_SEMITONE * (np.array([e[2] for e in frame_events]) - MIDI_OFFSET)
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


def _drop_overlapping_bends(events: Sequence[NoteEvent]) -> list[NoteEvent]:
    """Sorted events with bends removed from every note that overlaps another in time.

    MIDI bends apply to a whole channel, so they are only kept on notes sounding alone.
    """
    ordered = sorted(events, key=lambda e: (e.start, e.end, e.pitch, e.amplitude))
    overlapping = [False] * len(ordered)
    for i in range(len(ordered) - 1):
        for j in range(i + 1, len(ordered)):
            if ordered[j].start >= ordered[i].end:
                break
            overlapping[i] = overlapping[j] = True
    return [e._replace(pitch_bends=None) if o else e for e, o in zip(ordered, overlapping)]


def note_events_to_sequence(
    events: Sequence[NoteEvent],
    *,
    multiple_pitch_bends: bool = False,
    qpm: float = 120.0,
    program: int = ELECTRIC_PIANO_1,
) -> music_pb2.NoteSequence:
    """Basic Pitch note events → NoteSequence (what basic-pitch writes as MIDI).

    Velocity = round(127 · amplitude). Bends (1/3 semitone units) become MIDI bend values
    ``round(bend · 4096 / 3)`` clipped to ±2 semitones and spread evenly over the note.
    Without ``multiple_pitch_bends`` all notes share instrument 0 and overlapping notes lose
    their bends; with it each pitch gets its own instrument so bends never collide.
    """
    sequence = music_pb2.NoteSequence()
    sequence.tempos.add(qpm=qpm)
    sequence.ticks_per_quarter = 220
    chosen = list(events) if multiple_pitch_bends else _drop_overlapping_bends(events)
    instrument_of_pitch: dict[int, int] = {}
    for event in chosen:
        if multiple_pitch_bends:
            instrument = instrument_of_pitch.setdefault(event.pitch, len(instrument_of_pitch))
        else:
            instrument = 0
        sequence.notes.add(
            pitch=int(event.pitch),
            velocity=int(np.round(127 * event.amplitude)),
            start_time=float(event.start),
            end_time=float(event.end),
            instrument=instrument,
            program=program,
        )
        if not event.pitch_bends:
            continue
        times = np.linspace(event.start, event.end, len(event.pitch_bends))
        values = np.round(np.asarray(event.pitch_bends) * 4096 / CONTOUR_BINS_PER_SEMITONE)
        values = np.clip(values.astype(int), -PITCH_BEND_LIMIT, PITCH_BEND_LIMIT - 1)
        for time_s, value in zip(times, values):
            sequence.pitch_bends.add(
                time=float(time_s), bend=int(value), instrument=instrument, program=program
            )
    sequence.total_time = max((n.end_time for n in sequence.notes), default=0.0)
    return sequence


def basic_pitch_outputs_to_sequence(
    outputs: dict[str, np.ndarray], *, multiple_pitch_bends: bool = False, **options
) -> tuple[music_pb2.NoteSequence, list[NoteEvent]]:
    """Stitched NMP posteriors → (NoteSequence, raw note events); options as basic-pitch."""
    events = basic_pitch_note_events(outputs, **options)
    return note_events_to_sequence(events, multiple_pitch_bends=multiple_pitch_bends), events


__all__ = [
    "NoteEvent",
    "basic_pitch_note_events",
    "basic_pitch_outputs_to_sequence",
    "infer_onsets",
    "minimum_note_frames",
    "model_frames_to_time",
    "note_events_in_frames",
    "note_events_to_sequence",
    "pitch_bends_from_contour",
]

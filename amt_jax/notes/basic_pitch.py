"""Basic Pitch / NMP note creation: posteriors → notes (basic-pitch 0.4.0 behaviour).

The pipeline: note tracing in frames (:mod:`amt_jax.notes.basic_pitch_tracing`: onset
peak picking with onsets inferred from the note posterior, forward tracing with an
11-frame energy tolerance, the "melodia trick" for notes without an onset), frame → time
conversion *including* basic-pitch's window-drift correction (here), pitch bends read from
the contour posterior (:mod:`amt_jax.notes.basic_pitch_bends`), and the NoteSequence
basic-pitch would write as MIDI (here). Reproducing basic-pitch's note list exactly is
what lets users switch without their MIDI changing, so every quirk (tie orders, the magic
1.8 ms offset, in-place frequency limits) is kept.

Returns a ``note_seq`` ``NoteSequence`` and the raw note-event list (the same tuples
basic-pitch returns) for golden comparisons and CSV.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from note_seq.protobuf import music_pb2

from amt_jax.audio import basic_pitch_constants as bp
from amt_jax.notes.basic_pitch_bends import pitch_bends_from_contour, pitch_bends_of_notes
from amt_jax.notes.basic_pitch_tracing import infer_onsets, note_events_in_frames
from amt_jax.notes.sequences import notes_to_sequence

#: the bends of every note at once (kept under its old name for tools/bench_transcribe.py)
_pitch_bends_of_notes = pitch_bends_of_notes

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
    nominal_s = frames * bp.HOP_SAMPLES / bp.SAMPLE_RATE
    window_index = np.floor(frames / bp.FRAMES_PER_WINDOW)
    per_window_s = (bp.HOP_SAMPLES / bp.SAMPLE_RATE) * (
        bp.FRAMES_PER_WINDOW - bp.WINDOW_SAMPLES / bp.HOP_SAMPLES
    ) + MAGIC_ALIGNMENT_OFFSET
    return nominal_s - per_window_s * window_index


def minimum_note_frames(minimum_note_length_ms: float = 127.7) -> int:
    """basic-pitch's ms → frames conversion for ``minimum_note_length`` (127.7 ms → 11)."""
    return int(round(minimum_note_length_ms / 1000 * bp.FRAMES_PER_SECOND))


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
        pitch_bends_of_notes(contour_tf, frame_events)
        if include_pitch_bends
        else [None] * len(frame_events)
    )
    return [
        NoteEvent(times_s[start], times_s[end], pitch, amplitude, note_bends)
        for (start, end, pitch, amplitude), note_bends in zip(frame_events, bends)
    ]


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
    chosen = list(events) if multiple_pitch_bends else _drop_overlapping_bends(events)
    if multiple_pitch_bends:
        instrument_of_pitch: dict[int, int] = {}
        instruments = [
            instrument_of_pitch.setdefault(e.pitch, len(instrument_of_pitch)) for e in chosen
        ]
    else:
        instruments = [0] * len(chosen)
    sequence = notes_to_sequence(
        [e.start for e in chosen],
        [e.end for e in chosen],
        [e.pitch for e in chosen],
        [np.round(127 * e.amplitude) for e in chosen],
        instruments=instruments,
        program=program,
        qpm=qpm,
    )
    for event, instrument in zip(chosen, instruments):
        if not event.pitch_bends:
            continue
        times = np.linspace(event.start, event.end, len(event.pitch_bends))
        values = np.round(np.asarray(event.pitch_bends) * 4096 / bp.BINS_PER_SEMITONE)
        values = np.clip(values.astype(int), -PITCH_BEND_LIMIT, PITCH_BEND_LIMIT - 1)
        for time_s, value in zip(times, values):
            sequence.pitch_bends.add(
                time=float(time_s), bend=int(value), instrument=instrument, program=program
            )
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

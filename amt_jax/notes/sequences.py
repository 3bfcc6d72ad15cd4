"""Decoded notes -> ``NoteSequence``: the one place the frame decoders build their output."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from note_seq.protobuf import music_pb2


def notes_to_sequence(
    start_times: Sequence[float],
    end_times: Sequence[float],
    pitches: Sequence[int],
    velocities: Sequence[int],
    *,
    instruments: int | Sequence[int] = 0,
    program: int = 0,
    qpm: float = 120.0,
    total_time: float | None = None,
) -> music_pb2.NoteSequence:
    """A NoteSequence with one note per entry (in the given order), a ``qpm`` tempo and
    220 ticks per quarter (note_seq's MIDI default).

    Times are seconds. ``instruments``: one for every note, or one per note.
    ``total_time`` defaults to the latest note end (0 without notes).
    """
    count = len(start_times)
    if not len(end_times) == len(pitches) == len(velocities) == count:
        raise ValueError(
            f"notes_to_sequence: {count} starts, {len(end_times)} ends, {len(pitches)} pitches "
            f"and {len(velocities)} velocities"
        )
    if isinstance(instruments, (int, np.integer)):
        instruments = [int(instruments)] * count
    elif len(instruments) != count:
        raise ValueError(f"notes_to_sequence: {len(instruments)} instruments for {count} notes")
    sequence = music_pb2.NoteSequence()
    sequence.tempos.add(qpm=qpm)
    sequence.ticks_per_quarter = 220
    for start, end, pitch, velocity, instrument in zip(
        start_times, end_times, pitches, velocities, instruments
    ):
        sequence.notes.add(
            pitch=int(pitch),
            velocity=int(velocity),
            start_time=float(start),
            end_time=float(end),
            instrument=int(instrument),
            program=program,
        )
    if total_time is None:
        total_time = max((note.end_time for note in sequence.notes), default=0.0)
    sequence.total_time = total_time
    return sequence


__all__ = ["notes_to_sequence"]

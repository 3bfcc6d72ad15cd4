"""NoteSequence -> frame-level piano rolls (training targets for Onsets and Frames / NMP).

Frame ``t`` of a roll stands for time ``start_seconds + t / fps``. Two labelling rules:

- ``"magenta"`` (Onsets and Frames; note_seq ``sequence_to_pianoroll`` with
  ``onset_mode='length_ms'``): frame ``t`` covers ``[t / fps, (t + 1) / fps)``.
  A note sounds from ``floor(t_on * fps)`` up to (excluding) ``ceil(t_off * fps)``; its
  onset covers ``[t_on, min(t_off, t_on + onset_length))`` and its offset
  ``[t_off, t_off + offset_length)``, each turned into frames the same way. With 32 ms at
  31.25 fps almost every onset spans 2 frames, a frame-aligned one 1. Every span keeps
  at least one frame.
- ``"nearest"`` (Basic Pitch, whose labels come from mirdata's ``to_sparse_index``):
  frame ``t`` is centred on ``t / fps``; a note's onset is the nearest frame
  ``round(t_on * fps)`` and it sounds from there through ``round(t_off * fps)``
  inclusive. Onset and offset are one frame each.

Velocities (``velocity / max_velocity``; pass the whole track's maximum, as magenta does)
are written on the onset frames. Times are first shifted by ``start_seconds`` and every
span is then clipped to ``[0, num_frames)``, so a window's roll is what labelling the
whole track on the window's frame grid would give: a note begun long before the window
has frames but no onset, a note going on past the window has no offset. Times within
1e-9 frames of a frame boundary count as on it (float noise, e.g. 0.7 * 10).

Public API: ``PianoRoll``, ``LABEL_RULES``, ``notes_to_roll(ns, frames_per_second, ...)``,
``max_velocity(ns)``.
"""

from __future__ import annotations

import dataclasses

import note_seq
import numpy as np

LABEL_RULES = ("magenta", "nearest")
DEFAULT_ONSET_LENGTH_MS = 32.0  # O&F MAESTRO config: onset_length = offset_length = 32 ms
DEFAULT_OFFSET_LENGTH_MS = 32.0
_EPS = 1e-9


@dataclasses.dataclass
class PianoRoll:
    frames_tp: np.ndarray  # float32 [T, P] 1 while a note sounds
    onsets_tp: np.ndarray  # float32 [T, P]
    offsets_tp: np.ndarray  # float32 [T, P]
    velocities_tp: np.ndarray  # float32 [T, P] velocity / max_velocity on onset frames
    min_pitch: int
    frames_per_second: float
    notes_skipped: int  # reach into the roll but out of the pitch range, or undrawn drums
    notes_outside: int = 0  # no label frame inside the roll


def _floor(x: np.ndarray) -> np.ndarray:
    return np.floor(x + _EPS).astype(np.int64)


def _ceil(x: np.ndarray) -> np.ndarray:
    return np.ceil(x - _EPS).astype(np.int64)


def _nearest(x: np.ndarray) -> np.ndarray:
    return np.floor(x + 0.5 + _EPS).astype(np.int64)


def _label_spans(start_f, end_f, rule, onset_length_f, offset_length_f):
    """[lo, hi) frame spans of frames, onsets and offsets (times already in frames)."""
    if rule == "magenta":
        frame_lo = _floor(start_f)
        frame_hi = np.maximum(_ceil(end_f), frame_lo + 1)
        onset_end_f = np.minimum(end_f, start_f + onset_length_f)
        onset_hi = np.maximum(_ceil(onset_end_f), frame_lo + 1)
        offset_lo = _floor(end_f)
        offset_hi = np.maximum(_ceil(end_f + offset_length_f), offset_lo + 1)
        return (frame_lo, frame_hi), (frame_lo, onset_hi), (offset_lo, offset_hi)
    frame_lo = _nearest(start_f)
    frame_hi = np.maximum(_nearest(end_f), frame_lo) + 1
    offset_lo = _nearest(end_f)
    return (frame_lo, frame_hi), (frame_lo, frame_lo + 1), (offset_lo, offset_lo + 1)


def notes_to_roll(
    ns: note_seq.NoteSequence,
    frames_per_second: float,
    *,
    num_frames: int | None = None,
    start_seconds: float = 0.0,
    min_pitch: int = 21,
    max_pitch: int = 108,
    include_drums: bool = False,
    rule: str = "magenta",
    onset_length_ms: float | None = None,
    offset_length_ms: float | None = None,
    max_velocity: float | None = 127.0,
) -> PianoRoll:
    """Rasterise notes onto a [num_frames, max_pitch - min_pitch + 1] grid (see module doc).

    ``num_frames`` defaults to the last label frame of the sequence. ``onset_length_ms`` /
    ``offset_length_ms`` (rule ``"magenta"`` only) default to 32 ms. ``max_velocity=None``
    scales velocities by the loudest note of ``ns`` (O&F: the whole track's maximum).
    """
    if frames_per_second <= 0:
        raise ValueError(f"frames_per_second must be > 0, got {frames_per_second}")
    if not 0 <= min_pitch <= max_pitch <= 127:
        raise ValueError(f"need 0 <= min_pitch <= max_pitch <= 127, got {min_pitch}, {max_pitch}")
    if rule not in LABEL_RULES:
        raise ValueError(f"unknown label rule {rule!r}; choose one of {LABEL_RULES}")
    if rule == "nearest" and (onset_length_ms or offset_length_ms):
        raise ValueError("rule 'nearest' labels one onset / offset frame; lengths must be 0")
    if max_velocity is not None and max_velocity <= 0:
        raise ValueError(f"max_velocity must be > 0, got {max_velocity}")
    onset_ms = DEFAULT_ONSET_LENGTH_MS if onset_length_ms is None else onset_length_ms
    offset_ms = DEFAULT_OFFSET_LENGTH_MS if offset_length_ms is None else offset_length_ms

    notes = ns.notes
    fps = frames_per_second
    # protobuf field reads dominate on long tracks: times of every note, the rest only for
    # the notes that reach into the roll
    starts = np.fromiter((n.start_time for n in notes), np.float64, len(notes))
    ends = np.fromiter((n.end_time for n in notes), np.float64, len(notes))
    if max_velocity is None:
        max_velocity = float(max((n.velocity for n in notes), default=1) or 1)
    (frame_lo, frame_hi), (onset_lo, onset_hi), (offset_lo, offset_hi) = _label_spans(
        (starts - start_seconds) * fps,
        (ends - start_seconds) * fps,
        rule,
        onset_ms / 1000 * fps,
        offset_ms / 1000 * fps,
    )
    if num_frames is None:
        num_frames = max(1, int(max(frame_hi.max(initial=0), offset_hi.max(initial=0))))
    touching = ((frame_hi > 0) & (frame_lo < num_frames)) | (
        (offset_hi > 0) & (offset_lo < num_frames)
    )
    shape = (num_frames, max_pitch - min_pitch + 1)
    frames, onsets = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    offsets, velocities = np.zeros(shape, np.float32), np.zeros(shape, np.float32)

    def clip(lo, hi):
        return max(int(lo), 0), min(int(hi), num_frames)

    skipped = 0
    for i in np.flatnonzero(touching).tolist():
        note = notes[i]
        if not min_pitch <= note.pitch <= max_pitch or (note.is_drum and not include_drums):
            skipped += 1
            continue
        p = note.pitch - min_pitch
        lo, hi = clip(offset_lo[i], offset_hi[i])
        offsets[lo:hi, p] = 1.0  # the tail can reach in although the note's frames do not
        lo, hi = clip(frame_lo[i], frame_hi[i])
        if hi <= lo:
            continue
        frames[lo:hi, p] = 1.0
        lo, hi = clip(onset_lo[i], onset_hi[i])
        if hi > lo:
            onsets[lo:hi, p] = 1.0
            velocity = note.velocity / max_velocity
            velocities[lo:hi, p] = np.maximum(velocities[lo:hi, p], velocity)
    return PianoRoll(
        frames,
        onsets,
        offsets,
        velocities,
        min_pitch,
        frames_per_second,
        notes_skipped=skipped,
        notes_outside=int((~touching).sum()),
    )


def max_velocity(ns: note_seq.NoteSequence) -> float:
    """Largest note velocity of a sequence (1 if it has none): O&F's velocity scale."""
    return float(max((n.velocity for n in ns.notes), default=1) or 1)

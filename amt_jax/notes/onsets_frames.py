"""Onsets and Frames onset-gated decoding (magenta ``pianoroll_to_note_sequence``).

A note may only start on a predicted onset, a new onset rising edge re-articulates, and
the note ends at the first frame that is off.
"""

from __future__ import annotations

import numpy as np
from note_seq.protobuf import music_pb2

from amt_jax.notes.sequences import notes_to_sequence

MIDI_OFFSET = 21  # pitch index 0 is A0


def onsets_frames_to_sequence(
    frame_probs_tp: np.ndarray,
    onset_probs_tp: np.ndarray,
    velocity_tp: np.ndarray | None = None,
    *,
    frames_per_second: float = 16000 / 512,
    frame_threshold: float = 0.5,
    onset_threshold: float = 0.5,
    offset_probs_tp: np.ndarray | None = None,
    offset_threshold: float | None = None,
    min_duration_ms: float = 0.0,
    min_midi_pitch: int = MIDI_OFFSET,
    default_velocity: int = 70,
    velocity_scale: float = 80.0,
    velocity_bias: float = 10.0,
    qpm: float = 120.0,
) -> music_pb2.NoteSequence:
    """Onset-gated decoding of O&F posteriors (magenta ``pianoroll_to_note_sequence``).

    * frames := (frame > threshold) OR (onset > threshold);
    * an inactive pitch starts a note only on a frame with a predicted onset;
    * an active pitch is re-articulated at a new onset rising edge;
    * a note ends at the first inactive frame; times are ``frame / fps``;
    * velocity = int(clip(v, 0, 1) · 80 + 10) read at the onset frame;
    * offsets, when given with a threshold, switch frames off (off by default, as O&F).
    Notes shorter than ``min_duration_ms`` are dropped.
    """
    frames_tp = np.asarray(frame_probs_tp) > frame_threshold
    onsets_tp = np.asarray(onset_probs_tp) > onset_threshold
    if frames_tp.shape != onsets_tp.shape or frames_tp.ndim != 2:
        raise ValueError(
            f"frame and onset posteriors must both be [frames, pitches], got {frames_tp.shape} "
            f"and {onsets_tp.shape}"
        )
    n_frames, n_pitches = frames_tp.shape
    silent = np.zeros((1, n_pitches), dtype=bool)
    # A trailing silent frame ends every note that is still sounding.
    frames_tp = np.concatenate([frames_tp, silent]) | np.concatenate([onsets_tp, silent])
    onsets_tp = np.concatenate([onsets_tp, silent])
    if offset_probs_tp is not None and offset_threshold is not None:
        offsets_tp = np.concatenate([np.asarray(offset_probs_tp) > offset_threshold, silent])
        frames_tp &= ~offsets_tp
    if velocity_tp is None:
        velocity_tp = np.full((n_frames, n_pitches), np.nan)
    velocity_tp = np.asarray(velocity_tp)

    def midi_velocity(frame: int, pitch: int) -> int:
        value = velocity_tp[frame, pitch]
        if np.isnan(value):
            return default_velocity
        return int(min(max(float(value), 0.0), 1.0) * velocity_scale + velocity_bias)

    frame_seconds = 1.0 / frames_per_second
    start_of: dict[int, tuple[int, int]] = {}  # pitch -> (start frame, velocity)
    notes: list[tuple[float, float, int, int]] = []  # (start s, end s, pitch, velocity)

    def end_note(pitch: int, frame: int) -> None:
        start, velocity = start_of.pop(pitch)
        start_s, end_s = start * frame_seconds, frame * frame_seconds
        if (end_s - start_s) * 1000 >= min_duration_ms:
            notes.append((start_s, end_s, pitch + min_midi_pitch, velocity))

    for i in range(n_frames + 1):
        for pitch in range(n_pitches):
            if not frames_tp[i, pitch]:
                if pitch in start_of:
                    end_note(pitch, i)
                continue
            if pitch not in start_of:
                if onsets_tp[i, pitch]:
                    start_of[pitch] = (i, midi_velocity(i, pitch))
            elif onsets_tp[i, pitch] and not onsets_tp[i - 1, pitch]:
                end_note(pitch, i)
                start_of[pitch] = (i, midi_velocity(i, pitch))
    starts, ends, pitches, velocities = zip(*notes) if notes else ((), (), (), ())
    return notes_to_sequence(
        starts,
        ends,
        pitches,
        velocities,
        qpm=qpm,
        total_time=(n_frames + 1) * frame_seconds,
    )


__all__ = ["onsets_frames_to_sequence"]

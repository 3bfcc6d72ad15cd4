"""NoteSequence <-> per-segment token ids (MT3 note encoding with tie sections).

Encoding (``encode_note_sequence``) produces MT3's targets token for token. Per track:
1. sustain pedal applied (note_seq), programs mapped to the layout's granularity;
2. overlaps trimmed in seconds as MT3's ``trim_overlapping_notes`` does: per channel
   ((program, pitch); drums: (their program, pitch)) in order of start time, a note still
   sounding when the next one starts ends there, and a note left without length (the
   next starts at the very same time) is dropped. So of two onsets in one step the
   earlier note ends at the later onset and the later note keeps its own end;
3. times quantised to steps with ``round(t * sps)``;
4. events in MT3's order: every pitched offset, then every onset, each part sorted by
   ``(is_drum, program, pitch)``, then a stable sort by exact time. Inside a 10 ms step,
   events at different times come in time order (an onset at 1.001 s before an offset
   at 1.004 s) and only events at the same time are offsets first, then by key.
   Non-drum: ``[program] [velocity bin | 0 for off] [pitch]``; drum: ``[velocity] [drum]``
   (no program, no offset); no program tokens at ``flat`` granularity;
5. per segment ``[start, start + segment_seconds)``: the tie section (``[program] pitch``
   for every note sounding at the segment's first step, sorted by (program, pitch), then
   ``tie``), the segment's events with shifts absolute from the segment's first step,
   redundant velocity/program tokens removed, ids = index + 3, EOS appended.

Where MT3 is wrong or stops, amt_jax differs on purpose (docs/vocabulary.md):
- a zero-length note lasts one step (MT3's ``validate_note_sequence`` rejects it) and a
  track without notes gives ``[tie, EOS]`` segments (MT3 finds no state events to slice
  a tie section from);
- a segment after the last event lists the notes sounding at its start; MT3 reuses the
  state from before the last event's step, so it re-declares (ties) a note that ended on
  the track's last step in every trailing segment;
- segment edges and the decoder's cap compare integer steps; MT3's decoder compares
  seconds (``start + shift / 100 > next start``), and float error drops an event that
  lands exactly on the next segment's start (e.g. at 12.28 s, after 10.24 s + 2.04 s);
- at ``midi_class``/``flat`` granularity overlaps are trimmed per mapped program (MT3
  maps the finished tokens, which can leave two sounding notes on one token channel);
  the order inside a step and in tie sections still uses the notes' own programs, as MT3.

Decoding (``decode_segments``) keeps one state across all segments of a track, as MT3:
undeclared active notes end at the tie token (= segment start), a note-on for an active
pitch closes it, drums last 10 ms, notes never turned off end at the last event time
(at least 10 ms after their onset). Bad tokens never raise: they are counted in
``DecodeStats`` (``invalid_events`` by reason, ``dropped_events`` past the next segment's
start, ``segments_without_tie``: MT3 then reads every pitch of that segment as a tie
declaration, so the segment yields no pitched notes).

Public API: ``encode_note_sequence``, ``TrackEncoder`` (prepare once, slice many crops),
``decode_segments``, ``EncodeStats``,
``DecodeStats``, ``segment_start_times``, ``prepare_notes``.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence

import note_seq
import numpy as np

from amt_jax.music.programs import map_programs
from amt_jax.music.sequences import (
    NoteArrays,
    apply_sustain,
    assign_instruments,
    note_arrays,
    validate_notes,
)
from amt_jax.vocab import run_length
from amt_jax.vocab.layouts import (
    EOS_ID,
    NUM_SPECIAL_TOKENS,
    VocabularyConfig,
    bin_to_velocity,
    build_codec,
    velocity_to_bin,
)

DEFAULT_SEGMENT_SECONDS = 2.048  # 256 frames of 128 samples at 16 kHz
DEFAULT_VELOCITY = 100  # decoder's velocity before any velocity token, as MT3
MIN_NOTE_DURATION = 0.01  # seconds; decoded notes are never shorter
DRUM_DURATION = 0.01  # seconds; drums have no offset token


@dataclasses.dataclass
class EncodeStats:
    """What the encoder had to change to make the notes representable (nothing is hidden)."""

    num_notes: int = 0
    num_drum_notes: int = 0
    lengthened_to_one_step: int = 0  # non-drum notes of zero length or inside one step
    merged_same_onset: int = 0  # notes dropped: the next of their channel starts with them
    trimmed_overlaps: int = 0  # non-drum notes ended early at the next same-channel onset
    zero_velocity_notes: int = 0  # velocity 0 (would read as note-off), encoded as bin 1
    events_outside_segments: int = 0  # events after the last requested segment


@dataclasses.dataclass
class DecodeStats:
    """Counts of everything the decoder could not use; never an exception."""

    num_segments: int = 0
    invalid_events: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    dropped_events: int = 0  # tokens after a shift past the next segment's start
    segments_without_tie: list[int] = dataclasses.field(default_factory=list)
    segments_without_eos: int = 0
    notes_ended_by_tie: int = 0  # active notes not declared in a tie section
    flushed_notes: int = 0  # notes never turned off, ended at the end of decoding

    @property
    def num_invalid_events(self) -> int:
        return sum(self.invalid_events.values())

    @property
    def num_segments_without_tie(self) -> int:
        return len(self.segments_without_tie)

    def as_dict(self) -> dict[str, int]:
        """Flat integer counts, e.g. for metric summaries (``invalid/<reason>`` per reason)."""
        counts = {
            "segments": self.num_segments,
            "invalid_events": self.num_invalid_events,
            "dropped_events": self.dropped_events,
            "segments_without_tie": self.num_segments_without_tie,
            "segments_without_eos": self.segments_without_eos,
            "notes_ended_by_tie": self.notes_ended_by_tie,
            "flushed_notes": self.flushed_notes,
        }
        counts.update({f"invalid/{k}": v for k, v in sorted(self.invalid_events.items())})
        return counts


@dataclasses.dataclass
class PreparedNotes:
    """Trimmed notes in steps, plus the exact times and programs that order a step's events."""

    onset_step: np.ndarray
    offset_step: np.ndarray  # ignored for drums
    pitch: np.ndarray
    velocity_bin: np.ndarray
    program: np.ndarray  # as tokenised: mapped to the granularity, 0 for drums
    is_drum: np.ndarray
    onset_time: np.ndarray  # seconds; orders events inside a step, as MT3
    offset_time: np.ndarray  # seconds, after trimming (zero-length: the next step's time)
    order_program: np.ndarray  # the note's own program; MT3 sorts by it before mapping


def segment_start_times(
    num_segments: int, segment_seconds: float = DEFAULT_SEGMENT_SECONDS
) -> np.ndarray:
    """Start times of back-to-back segments: ``k * segment_seconds``."""
    return np.arange(num_segments, dtype=np.float64) * segment_seconds


def prepare_notes(
    ns: note_seq.NoteSequence,
    config: VocabularyConfig,
    *,
    apply_sustain_pedal: bool = True,
    trim_overlaps: bool = True,
    stats: EncodeStats | None = None,
) -> PreparedNotes:
    """Steps 1-3 of the encoding: sustain, program map, trim, quantise (see module doc)."""
    stats = stats if stats is not None else EncodeStats()
    validate_notes(ns, where="encode_note_sequence")
    if apply_sustain_pedal:
        ns = apply_sustain(ns)
    notes: NoteArrays = note_arrays(ns)
    sps = config.steps_per_second
    is_drum = notes.is_drum
    program = np.where(is_drum, 0, map_programs(notes.program, config.program_granularity))
    start = np.asarray(notes.start, dtype=np.float64)
    # A zero-length note ends on the step after its onset step (MT3 would reject it).
    zero_length = notes.end <= start
    one_step_end = (np.rint(start * sps) + 1) / sps
    end = np.where(zero_length, one_step_end, np.asarray(notes.end, dtype=np.float64))
    stats.zero_velocity_notes += int((notes.velocity == 0).sum())
    velocity_bin = velocity_to_bin(np.maximum(notes.velocity, 1), config.num_velocity_bins)
    velocity_bin = np.asarray(velocity_bin, dtype=np.int64).reshape(-1)
    stats.num_notes += len(notes)
    stats.num_drum_notes += int(is_drum.sum())

    keep = np.ones(len(notes), bool)
    if trim_overlaps:
        # Drums trim within their own program, as MT3's (pitch, program, is_drum) channels.
        channel_program = np.where(is_drum, notes.program, program)
        channel = (is_drum * 128 + channel_program) * 128 + notes.pitch
        end, keep = _trim_overlaps_in_seconds(start, end, channel, is_drum, stats)
    onset_step = np.rint(start * sps).astype(np.int64)
    offset_step = np.rint(end * sps).astype(np.int64)
    within_one_step = keep & ~is_drum & (zero_length | (offset_step <= onset_step))
    stats.lengthened_to_one_step += int(within_one_step.sum())
    return PreparedNotes(
        onset_step[keep],
        offset_step[keep],
        notes.pitch[keep],
        velocity_bin[keep],
        program[keep],
        is_drum[keep],
        start[keep],
        end[keep],
        notes.program[keep],
    )


def _trim_overlaps_in_seconds(
    start: np.ndarray, end: np.ndarray, channel: np.ndarray, is_drum: np.ndarray, stats
) -> tuple[np.ndarray, np.ndarray]:
    """MT3's ``trim_overlapping_notes``: (new ends, notes kept).

    Per channel, in order of start time (ties in track order), a note that is still
    sounding when the next one starts ends there; a note left without length (its
    successor starts at the very same time) is dropped. So of two onsets in one step the
    earlier note ends at the later onset and the later keeps its own end.
    """
    order = np.lexsort((start, channel))
    channel_o, start_o, end_o = channel[order], start[order], end[order].copy()
    cut_o = np.zeros(len(order), bool)
    cut_o[:-1] = (channel_o[1:] == channel_o[:-1]) & (end_o[:-1] > start_o[1:])
    end_o[:-1] = np.where(cut_o[:-1], start_o[1:], end_o[:-1])
    emptied_o = cut_o & (end_o <= start_o)
    stats.merged_same_onset += int(emptied_o.sum())
    stats.trimmed_overlaps += int((cut_o & ~emptied_o & ~is_drum[order]).sum())
    new_end = np.empty_like(end)
    new_end[order] = end_o
    keep = np.empty(len(order), bool)
    keep[order] = ~emptied_o
    return new_end, keep


def _timed_events(
    notes: PreparedNotes, config: VocabularyConfig, codec
) -> tuple[run_length.TimedEvents, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Events in MT3's order + per-event (is_onset, is_drum, key, tie-order key).

    MT3's order: every pitched offset, then every onset, each part sorted by (is_drum,
    program, pitch), then a stable sort by exact time. Equal times therefore keep
    offsets first; different times inside one 10 ms step stay in time order.
    """
    pitched = ~notes.is_drum
    n_off = int(pitched.sum())
    step = np.concatenate([notes.offset_step[pitched], notes.onset_step])
    time = np.concatenate([notes.offset_time[pitched], notes.onset_time])
    is_onset = np.concatenate([np.zeros(n_off, bool), np.ones(len(notes.onset_step), bool)])
    is_drum = np.concatenate([np.zeros(n_off, bool), notes.is_drum])
    program = np.concatenate([notes.program[pitched], notes.program])
    order_program = np.concatenate([notes.order_program[pitched], notes.order_program])
    pitch = np.concatenate([notes.pitch[pitched], notes.pitch])
    velocity_bin = np.concatenate([np.zeros(n_off, np.int64), notes.velocity_bin])
    # Step first only guards against float ties: a step is round(time * sps), monotonic.
    order = np.lexsort((pitch, order_program, is_drum, is_onset, time, step))
    step, is_onset, is_drum = step[order], is_onset[order], is_drum[order]
    program, pitch, velocity_bin = program[order], pitch[order], velocity_bin[order]
    order_program = order_program[order]

    program_lo, _ = codec.event_type_range("program")
    velocity_lo, _ = codec.event_type_range("velocity")
    pitch_lo, _ = codec.event_type_range("pitch")
    drum_lo, _ = codec.event_type_range("drum")
    token_mat = np.full((len(step), 3), -1, np.int64)
    if config.uses_program_tokens:
        token_mat[:, 0] = np.where(is_drum, -1, program_lo + program)
    token_mat[:, 1] = velocity_lo + velocity_bin
    token_mat[:, 2] = np.where(is_drum, drum_lo + pitch, pitch_lo + pitch)
    present = token_mat >= 0
    token_starts = np.concatenate([[0], np.cumsum(present.sum(axis=1))]).astype(np.int64)
    events = run_length.TimedEvents(step, token_starts, token_mat[present])
    key = program * 128 + pitch
    tie_order = order_program * 128 + pitch
    return events, is_onset, is_drum, key, tie_order


def _tie_sections(
    events: run_length.TimedEvents,
    is_onset: np.ndarray,
    is_drum: np.ndarray,
    key: np.ndarray,
    tie_order: np.ndarray,
    segment_start_steps: np.ndarray,
    config: VocabularyConfig,
    codec,
) -> list[list[int]]:
    """Codec indices ``[program] pitch ... tie`` of the notes sounding at each segment start.

    A note counts as sounding at step s when the events before s left it on (MT3 dumps
    the encoding state before the events of the segment's first step). The notes are
    listed by (program, pitch) of the note's own program, as MT3 sorts before mapping.
    """
    program_lo, _ = codec.event_type_range("program")
    pitch_lo, _ = codec.event_type_range("pitch")
    tie = codec.encode("tie", 0)
    use_programs = config.uses_program_tokens
    steps = events.steps.tolist()
    onsets = is_onset.tolist()
    drums = is_drum.tolist()
    keys = key.tolist()
    orders = tie_order.tolist()
    active: dict[int, int] = {}  # key (program * 128 + pitch) -> tie-order key
    sections: list[list[int] | None] = [None] * len(segment_start_steps)
    pos = 0
    for seg in np.argsort(segment_start_steps, kind="stable").tolist():
        start = int(segment_start_steps[seg])
        while pos < len(steps) and steps[pos] < start:
            if not drums[pos]:
                if onsets[pos]:
                    active[keys[pos]] = orders[pos]
                else:
                    active.pop(keys[pos], None)
            pos += 1
        section: list[int] = []
        for k in sorted(active, key=lambda k: (active[k], k)):
            if use_programs:
                section.append(program_lo + k // 128)
            section.append(pitch_lo + k % 128)
        section.append(tie)
        sections[seg] = section
    return sections  # type: ignore[return-value]


class TrackEncoder:
    """One track prepared once (sustain, trim, quantise, sort), then sliced many times.

    Why: a data pipeline takes many random crops of the same track; preparing the notes
    is the expensive part, slicing a segment is cheap. ``encode_note_sequence`` is the
    one-shot form.
    """

    def __init__(
        self,
        ns: note_seq.NoteSequence,
        config: VocabularyConfig | None = None,
        *,
        apply_sustain_pedal: bool = True,
        trim_overlaps: bool = True,
    ):
        self.config = config if config is not None else VocabularyConfig()
        self.codec = build_codec(self.config)
        self.stats = EncodeStats()
        notes = prepare_notes(
            ns,
            self.config,
            apply_sustain_pedal=apply_sustain_pedal,
            trim_overlaps=trim_overlaps,
            stats=self.stats,
        )
        (self._events, self._is_onset, self._is_drum, self._key, self._tie_order) = _timed_events(
            notes, self.config, self.codec
        )

    @property
    def last_event_step(self) -> int:
        """Step of the last event (-1 for an empty track)."""
        return int(self._events.steps[-1]) if len(self._events) else -1

    def num_segments(self, segment_seconds: float = DEFAULT_SEGMENT_SECONDS) -> int:
        """Back-to-back segments needed to hold every event."""
        return run_length.num_segments_to_cover(
            self.last_event_step, segment_seconds, self.config.steps_per_second
        )

    def segments(
        self,
        segment_seconds: float = DEFAULT_SEGMENT_SECONDS,
        *,
        num_segments: int | None = None,
        start_times: Sequence[float] | None = None,
    ) -> tuple[list[np.ndarray], int]:
        """(int32 id arrays ending in EOS, number of events outside all segments)."""
        config = self.config
        config.check_segment_seconds(segment_seconds)
        sps = config.steps_per_second
        events = self._events
        if start_times is not None:
            starts_s = np.asarray(start_times, dtype=np.float64).reshape(-1)
            if len(starts_s) == 0 or np.any(starts_s < 0) or not np.all(np.isfinite(starts_s)):
                raise ValueError(f"start_times must be finite, >= 0 and non-empty, got {starts_s}")
            start_steps = np.atleast_1d(run_length.seconds_to_step_floor(starts_s, sps))
            end_steps = np.atleast_1d(
                run_length.seconds_to_step_floor(starts_s + segment_seconds, sps)
            )
        else:
            if num_segments is None:
                num_segments = self.num_segments(segment_seconds)
            if num_segments < 1:
                raise ValueError(f"num_segments must be >= 1, got {num_segments}")
            _, start_steps, end_steps = run_length.segment_grid(num_segments, segment_seconds, sps)
        outside = 0
        if len(events):
            if start_times is None:
                outside = int((events.steps >= end_steps[-1]).sum())
            else:
                covered = np.zeros(len(events), bool)
                for lo_step, hi_step in zip(start_steps.tolist(), end_steps.tolist()):
                    covered |= (events.steps >= lo_step) & (events.steps < hi_step)
                outside = int((~covered).sum())

        prefixes = None
        if config.include_ties:
            prefixes = _tie_sections(
                events,
                self._is_onset,
                self._is_drum,
                self._key,
                self._tie_order,
                start_steps,
                config,
                self.codec,
            )
        indices = run_length.encode_segments(events, start_steps, end_steps, self.codec, prefixes)
        segments = [
            np.concatenate([seg + NUM_SPECIAL_TOKENS, [EOS_ID]]).astype(np.int32) for seg in indices
        ]
        return segments, outside


def encode_note_sequence(
    ns: note_seq.NoteSequence,
    config: VocabularyConfig | None = None,
    segment_seconds: float = DEFAULT_SEGMENT_SECONDS,
    *,
    num_segments: int | None = None,
    start_times: Sequence[float] | None = None,
    apply_sustain_pedal: bool = True,
    trim_overlaps: bool = True,
    return_stats: bool = False,
):
    """NoteSequence -> list of int32 token-id arrays, one per segment, each ending in EOS.

    Args:
      ns: the track's notes (all instruments, drums included).
      config: token layout; default ``VocabularyConfig()`` (``seed``).
      segment_seconds: length of every segment.
      num_segments: back-to-back segments starting at 0; default: enough to hold every
        event. Ignored if ``start_times`` is given.
      start_times: explicit segment start times (e.g. random crops); each segment covers
        ``[t, t + segment_seconds)``.
      apply_sustain_pedal, trim_overlaps: see module doc.
      return_stats: also return an ``EncodeStats``.

    Returns:
      ``segments`` or ``(segments, stats)``. Decode with
      ``decode_segments(segments, start_times or segment_start_times(len(segments), ...))``.
    """
    config = config if config is not None else VocabularyConfig()
    config.check_segment_seconds(segment_seconds)
    encoder = TrackEncoder(
        ns, config, apply_sustain_pedal=apply_sustain_pedal, trim_overlaps=trim_overlaps
    )
    segments, outside = encoder.segments(
        segment_seconds, num_segments=num_segments, start_times=start_times
    )
    stats = dataclasses.replace(encoder.stats, events_outside_segments=outside)
    return (segments, stats) if return_stats else segments


# ----------------------------------------------------------------------------- decoding


@dataclasses.dataclass
class NoteDecodingState:
    """Decoder state that persists across the segments of one track (times in steps)."""

    steps_per_second: int
    num_velocity_bins: int
    current_step: int = 0
    current_velocity: int = DEFAULT_VELOCITY
    current_program: int = 0
    active: dict = dataclasses.field(default_factory=dict)  # (pitch, program) -> (step, vel)
    tied: set = dataclasses.field(default_factory=set)
    is_tie_section: bool = False
    notes: list = dataclasses.field(default_factory=list)
    notes_ended_by_tie: int = 0

    def add_note(self, start_step, end_time, pitch, velocity, program, is_drum=False):
        start_time = start_step / self.steps_per_second
        end_time = max(end_time, start_time + MIN_NOTE_DURATION)
        self.notes.append((start_time, end_time, pitch, velocity, program, is_drum))


def _decode_note_event(state: NoteDecodingState, step: int, event_type: str, value: int):
    """One event -> state update; returns a reason string if the event is invalid."""
    if step < state.current_step:
        return "time_went_backwards"
    state.current_step = step
    sps = state.steps_per_second
    if event_type == "pitch":
        note_key = (value, state.current_program)
        if state.is_tie_section:
            if note_key not in state.active:
                return "tie_for_inactive_note"
            if note_key in state.tied:
                return "note_tied_twice"
            state.tied.add(note_key)
        elif state.current_velocity == 0:
            if note_key not in state.active:
                return "offset_for_inactive_note"
            onset_step, velocity = state.active.pop(note_key)
            state.add_note(onset_step, step / sps, value, velocity, state.current_program)
        else:
            if note_key in state.active:  # re-onset: close the sounding note here
                onset_step, velocity = state.active.pop(note_key)
                state.add_note(onset_step, step / sps, value, velocity, state.current_program)
            state.active[note_key] = (step, state.current_velocity)
    elif event_type == "drum":
        if state.current_velocity == 0:
            return "drum_with_velocity_zero"
        state.add_note(step, step / sps + DRUM_DURATION, value, state.current_velocity, 0, True)
    elif event_type == "velocity":
        state.current_velocity = bin_to_velocity(value, state.num_velocity_bins)
    elif event_type == "program":
        state.current_program = value
    elif event_type == "tie":
        if not state.is_tie_section:
            return "tie_outside_tie_section"
        for note_key in [k for k in state.active if k not in state.tied]:
            onset_step, velocity = state.active.pop(note_key)
            state.add_note(onset_step, step / sps, note_key[0], velocity, note_key[1])
            state.notes_ended_by_tie += 1
        state.is_tie_section = False
    else:
        return f"unexpected_{event_type}"
    return None


def _ids_to_codec_indices(ids: np.ndarray, num_classes: int) -> tuple[np.ndarray, bool]:
    """Trim at the first EOS; PAD/UNK/extra/out-of-range ids become -2 (counted invalid)."""
    ids = np.asarray(ids).astype(np.int64).reshape(-1)
    eos = np.flatnonzero(ids == EOS_ID)
    has_eos = len(eos) > 0
    if has_eos:
        ids = ids[: eos[0]]
    indices = ids - NUM_SPECIAL_TOKENS
    indices = np.where((indices >= 0) & (indices < num_classes), indices, -2)
    return indices, has_eos


def decode_segments(
    segments: Sequence[np.ndarray],
    start_times: Sequence[float],
    config: VocabularyConfig | None = None,
) -> tuple[note_seq.NoteSequence, DecodeStats]:
    """Token ids of all segments of one track -> (NoteSequence, DecodeStats).

    Segments are decoded in order of start time (start floored to the step grid); the
    next segment's start caps each segment's events. Accepts numpy or jax arrays.
    """
    config = config if config is not None else VocabularyConfig()
    codec = build_codec(config)
    sps = config.steps_per_second
    if len(segments) != len(start_times):
        raise ValueError(
            f"decode_segments: {len(segments)} token arrays but {len(start_times)} start times"
        )
    stats = DecodeStats(num_segments=len(segments))
    if not len(segments):
        return note_seq.NoteSequence(ticks_per_quarter=220), stats
    start_steps = np.atleast_1d(run_length.seconds_to_step_floor(np.asarray(start_times), sps))
    order = np.argsort(start_steps, kind="stable").tolist()
    state = NoteDecodingState(steps_per_second=sps, num_velocity_bins=config.num_velocity_bins)
    for rank, seg in enumerate(order):
        start_step = int(start_steps[seg])
        max_step = int(start_steps[order[rank + 1]]) if rank + 1 < len(order) else None
        indices, has_eos = _ids_to_codec_indices(np.asarray(segments[seg]), codec.num_classes)
        stats.segments_without_eos += int(not has_eos)
        if config.include_ties:
            state.tied = set()
            state.is_tie_section = True
        result = run_length.decode_events(
            state, indices, start_step, max_step, codec, _decode_note_event
        )
        stats.invalid_events.update(result.invalid_reasons)
        stats.dropped_events += result.dropped_events
        if config.include_ties and state.is_tie_section:
            stats.segments_without_tie.append(seg)

    # Flush: notes never turned off end at the last event time, >= 10 ms after onset.
    end_time = state.current_step / sps
    for onset_step, _ in state.active.values():
        end_time = max(end_time, onset_step / sps + MIN_NOTE_DURATION)
    for (pitch, program), (onset_step, velocity) in list(state.active.items()):
        state.add_note(onset_step, end_time, pitch, velocity, program)
        stats.flushed_notes += 1
    state.active.clear()
    stats.notes_ended_by_tie = state.notes_ended_by_tie

    ns = note_seq.NoteSequence(ticks_per_quarter=220)
    for start, end, pitch, velocity, program, is_drum in state.notes:
        ns.notes.add(
            start_time=start,
            end_time=end,
            pitch=pitch,
            velocity=velocity,
            program=program,
            is_drum=is_drum,
        )
        ns.total_time = max(ns.total_time, end)
    assign_instruments(ns)
    return ns, stats

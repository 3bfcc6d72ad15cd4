"""Targets token for token as MT3 tokenizes them, checked against MT3's rule written out here.

Why: a released MT3 checkpoint is fine-tuned on what MT3's own pipeline produced. The
reference below restates that pipeline in plain Python and never calls amt_jax's
encoder: per track, a list of every pitched note's offset followed by every note's onset,
each part sorted by (is_drum, program, pitch), is stable-sorted by the exact event time
and quantised with ``round(t * 100)`` (``note_sequence_to_onsets_and_offsets_and_programs``
+ ``encode_and_index_events``); each segment is the tie section (the notes still sounding
at its first step, sorted by (program, pitch), then ``tie``) followed by its events with
shifts absolute from the segment's first step and repeated velocity/program tokens
removed (``run_length_encode_shifts_fn``), ids = index + 3, then EOS. Ids are written
from MT3's published id tables, not from amt_jax's codec.
"""

from __future__ import annotations

import dataclasses
import math

import note_seq
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amt_jax.vocab.layouts import VocabularyConfig
from amt_jax.vocab.note_events import decode_segments, encode_note_sequence, segment_start_times
from amt_jax.vocab.token_masks import last_shift_values, next_token_mask

EOS = 1
SEGMENT_MILLIS = 2048  # 2.048 s segments: segment k starts at step floor(k * 204.8)


@dataclasses.dataclass(frozen=True)
class Mt3Ids:
    """First model id of each MT3 block (codec index + 3) and the layout's switches."""

    name: str
    shift: int
    pitch: int
    velocity: int
    tie: int
    program: int
    drum: int
    velocity_bins: int
    ties: bool
    program_tokens: bool


MT3_IDS = Mt3Ids("mt3", 3, 1004, 1132, 1134, 1135, 1263, 1, True, True)
ISMIR2021_IDS = Mt3Ids("ismir2021", 3, 1004, 1132, 1260, 1261, 1389, 127, False, False)


@dataclasses.dataclass(frozen=True)
class Note:
    start: float
    end: float
    pitch: int
    velocity: int
    program: int
    is_drum: bool


def _velocity_bin(velocity: int, bins: int) -> int:
    return 0 if velocity == 0 else math.ceil(bins * velocity / 127)


def _segment_start_step(k: int) -> int:
    return k * SEGMENT_MILLIS // 10  # exact integer floor of k * 2.048 s * 100


def _event_tokens(ids: Mt3Ids, note: Note, is_onset: bool) -> list[int]:
    velocity_bin = _velocity_bin(note.velocity, ids.velocity_bins) if is_onset else 0
    if note.is_drum:
        return [ids.velocity + velocity_bin, ids.drum + note.pitch]
    program = [ids.program + note.program] if ids.program_tokens else []
    return program + [ids.velocity + velocity_bin, ids.pitch + note.pitch]


def _is_state_token(ids: Mt3Ids, token: int) -> str | None:
    if ids.velocity <= token <= ids.velocity + ids.velocity_bins:
        return "velocity"
    if ids.program_tokens and ids.program <= token < ids.program + 128:
        return "program"
    return None


def mt3_reference_segments(notes: list[Note], ids: Mt3Ids) -> list[list[int]]:
    """MT3's tokenization of one track into back-to-back 2.048 s segments (see module doc)."""
    by_key = sorted(notes, key=lambda n: (n.is_drum, n.program, n.pitch))
    entries = [(n.end, False, n) for n in by_key if not n.is_drum]
    entries += [(n.start, True, n) for n in by_key]
    order = np.argsort(np.array([t for t, _, _ in entries], dtype=np.float64), kind="stable")
    events = [(round(entries[i][0] * 100), entries[i][1], entries[i][2]) for i in order]
    last_step = events[-1][0] if events else -1
    num_segments = 1
    while _segment_start_step(num_segments) <= last_step:
        num_segments += 1

    segments = []
    for k in range(num_segments):
        start, end = _segment_start_step(k), _segment_start_step(k + 1)
        sounding: dict[tuple[int, int], int] = {}  # (pitch, program) -> velocity bin
        for step, is_onset, note in events:
            if step < start and not note.is_drum:
                bin_ = _velocity_bin(note.velocity, ids.velocity_bins) if is_onset else 0
                sounding[(note.pitch, note.program)] = bin_
        tokens: list[tuple[int, int]] = []  # (step, id) before redundancy removal
        if ids.ties:
            for pitch, program in sorted(sounding, key=lambda key: (key[1], key[0])):
                if sounding[(pitch, program)]:
                    if ids.program_tokens:
                        tokens.append((start, ids.program + program))
                    tokens.append((start, ids.pitch + pitch))
            tokens.append((start, ids.tie))
        for step, is_onset, note in events:
            if start <= step < end:
                tokens += [(step, token) for token in _event_tokens(ids, note, is_onset)]

        out: list[int] = []
        state: dict[str, int] = {}
        emitted_step = start
        for step, token in tokens:
            kind = _is_state_token(ids, token)
            if kind is not None:
                if state.get(kind) == token:
                    continue
                state[kind] = token
            if step != emitted_step:
                out.append(ids.shift + step - start)
                emitted_step = step
            out.append(token)
        segments.append(out + [EOS])
    return segments


def _config(ids: Mt3Ids) -> VocabularyConfig:
    return VocabularyConfig.named(ids.name)


def _note_sequence(notes: list[Note]) -> note_seq.NoteSequence:
    ns = note_seq.NoteSequence(ticks_per_quarter=220)
    for n in notes:
        ns.notes.add(
            start_time=n.start,
            end_time=n.end,
            pitch=n.pitch,
            velocity=n.velocity,
            program=n.program,
            is_drum=n.is_drum,
        )
    ns.total_time = max((n.end for n in notes), default=0.0)
    return ns


def _without_same_step_collisions(notes: list[Note], ids: Mt3Ids) -> list[Note]:
    """Keep notes whose events never share a step with another event of their own channel.

    A channel is (program as tokenised, pitch) for pitched notes and the drum pitch for
    drums. A pitched note must also start and end in different steps.
    """
    kept: list[Note] = []
    last_step: dict[tuple, int] = {}
    for note in sorted(notes, key=lambda n: n.start):
        on, off = round(note.start * 100), round(note.end * 100)
        if note.is_drum:
            channel, off = ("drum", note.pitch), on
        else:
            channel = (note.program if ids.program_tokens else 0, note.pitch)
            if off <= on:
                continue
        if channel in last_step and on <= last_step[channel]:
            continue
        last_step[channel] = off
        kept.append(note)
    return kept


PITCHES = (36, 38, 42, 60, 62, 64, 67)
PROGRAMS = (0, 1, 24, 33, 40, 127)


@st.composite
def crowded_tracks(draw) -> list[Note]:
    """Many instruments whose events crowd a few 10 ms steps, at 1 ms resolution."""
    anchors = draw(st.lists(st.integers(0, 560), min_size=1, max_size=12))
    notes = []
    for _ in range(draw(st.integers(1, 40))):
        start_ms = 10 * draw(st.sampled_from(anchors)) + draw(st.integers(-6, 6))
        if draw(st.booleans()):
            end_ms = 10 * draw(st.sampled_from(anchors)) + draw(st.integers(-6, 6))
        else:
            end_ms = start_ms + draw(st.integers(1, 2500))
        start_ms = max(start_ms, 0)
        if end_ms <= start_ms:
            continue
        notes.append(
            Note(
                start=start_ms / 1000,
                end=end_ms / 1000,
                pitch=draw(st.sampled_from(PITCHES)),
                velocity=draw(st.integers(1, 127)),
                program=draw(st.sampled_from(PROGRAMS)),
                is_drum=draw(st.integers(0, 4)) == 0,
            )
        )
    return notes


VOCAB_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


def _identity_counts(ids: Mt3Ids) -> tuple[int, int, list]:
    identical, total, mismatches = 0, 0, []

    @VOCAB_SETTINGS
    @given(notes=crowded_tracks())
    def compare(notes):
        nonlocal identical, total
        notes = _without_same_step_collisions(notes, ids)
        expected = mt3_reference_segments(notes, ids)
        got = encode_note_sequence(_note_sequence(notes), _config(ids), num_segments=len(expected))
        for k, (want, have) in enumerate(zip(expected, got)):
            total += 1
            if have.tolist() == want:
                identical += 1
            else:
                mismatches.append((notes, k, want, have.tolist()))

    compare()
    return identical, total, mismatches


def test_segments_are_token_identical_to_mt3_ordering_rule():
    for ids in (MT3_IDS, ISMIR2021_IDS):
        identical, total, mismatches = _identity_counts(ids)
        rate = identical / total
        assert rate >= 0.99, (ids.name, rate, mismatches[:1])


def test_reference_reproduces_mt3_time_order_within_a_step():
    # An onset at 1.001 s precedes an offset at 1.004 s of another note in the same step.
    notes = [
        Note(0.5, 1.004, 64, 100, 1, False),
        Note(1.001, 1.5, 60, 100, 0, False),
    ]
    step_100 = [1135, 1064, 1136, 1132, 1068]  # prog 0 on 60 (velocity kept), prog 1 off 64
    segment = mt3_reference_segments(notes, MT3_IDS)[0]
    assert segment == [1134, 53, 1136, 1133, 1068, 103, *step_100, 153, 1135, 1064, 1]
    assert encode_note_sequence(_note_sequence(notes), _config(MT3_IDS))[0].tolist() == segment


def test_two_onsets_of_one_pitch_in_a_step_end_the_first_at_the_second():
    # MT3 (trim_overlapping_notes): the earlier note ends where the later one starts, the
    # later note keeps its own end; a note trimmed to zero length disappears.
    config = _config(MT3_IDS)
    earlier, later = Note(1.000, 1.5, 60, 100, 0, False), Note(1.004, 1.2, 60, 100, 0, False)
    for notes in ([earlier, later], [later, earlier]):
        segments, stats = encode_note_sequence(_note_sequence(notes), config, return_stats=True)
        step_100 = [1135, 1133, 1064, 1132, 1064, 1133, 1064]  # on, off (1.004), on (1.004)
        assert segments[0].tolist() == [1134, 103, *step_100, 123, 1132, 1064, 1]
        assert stats.trimmed_overlaps == 1 and stats.merged_same_onset == 0
        decoded, _ = decode_segments(segments, segment_start_times(len(segments)), config)
        got = sorted((round(n.start_time, 3), round(n.end_time, 3)) for n in decoded.notes)
        assert got == [(1.0, 1.01), (1.0, 1.2)]

    # Exactly equal onsets: the note listed first is trimmed to nothing.
    for first, second in ((1.5, 1.2), (1.2, 1.5)):
        notes = [Note(1.0, first, 60, 100, 0, False), Note(1.0, second, 60, 100, 0, False)]
        segments, stats = encode_note_sequence(_note_sequence(notes), config, return_stats=True)
        assert stats.merged_same_onset == 1
        assert segments[0].tolist() == mt3_reference_segments(notes[1:], MT3_IDS)[0]
        decoded, _ = decode_segments(segments, segment_start_times(len(segments)), config)
        assert [(n.start_time, round(n.end_time, 3)) for n in decoded.notes] == [(1.0, second)]


def _assert_mask_accepts(segments: list[list[int]], config: VocabularyConfig) -> None:
    for segment in segments:
        targets = np.array(segment, np.int32)
        inputs = np.concatenate([[0], targets[:-1]])  # decoder inputs start with PAD
        last_shift = np.concatenate([[0], last_shift_values(targets, config)[:-1]])
        mask = next_token_mask(inputs, config, last_shift, max_shift=204)
        allowed = mask[np.arange(len(targets)), targets]
        assert allowed.all(), [(int(inputs[i]), int(targets[i])) for i in np.flatnonzero(~allowed)]


def test_mask_accepts_drum_to_program_and_drum_to_pitch():
    # All in step 100: 1.000 drum, 1.001 piano onset (program token), 1.002 drum, 1.003
    # piano onset with program and velocity unchanged (its pitch right after the drum).
    notes = [
        Note(1.000, 1.1, 36, 100, 0, True),
        Note(1.001, 1.5, 60, 100, 0, False),
        Note(1.002, 1.1, 38, 100, 0, True),
        Note(1.003, 1.5, 62, 100, 0, False),
    ]
    segments = mt3_reference_segments(notes, MT3_IDS)
    assert segments[0][:8] == [1134, 103, 1133, 1299, 1135, 1064, 1301, 1066]
    _assert_mask_accepts(segments, _config(MT3_IDS))


@VOCAB_SETTINGS
@given(notes=crowded_tracks())
def test_mask_accepts_every_mt3_stream(notes):
    for ids in (MT3_IDS, ISMIR2021_IDS):
        _assert_mask_accepts(mt3_reference_segments(notes, ids), _config(ids))


def test_where_amt_jax_departs_from_mt3_on_purpose():
    config = _config(MT3_IDS)
    # A note ending on the track's last step: a trailing segment has nothing to tie (MT3
    # would declare the ended note again, which its own decoder counts as invalid).
    notes = [Note(1.0, 2.1, 60, 100, 0, False)]
    segments = encode_note_sequence(_note_sequence(notes), config, num_segments=3)
    assert segments[1].tolist()[:3] == [1135, 1064, 1134] and segments[2].tolist() == [1134, 1]
    # Zero-length notes and empty tracks encode (MT3 rejects them).
    segments = encode_note_sequence(_note_sequence([Note(0.5, 0.5, 60, 100, 0, False)]), config)
    decoded, stats = decode_segments(segments, [0.0], config)
    assert [(n.start_time, n.end_time) for n in decoded.notes] == [(0.5, 0.51)]
    assert stats.num_invalid_events == 0
    assert [s.tolist() for s in encode_note_sequence(_note_sequence([]), config)] == [[1134, 1]]
    # An event exactly on the next segment's start is kept: steps, not float seconds
    # (MT3 drops it, since 10.24 + 2.04 > 12.28 in floating point).
    segment_5 = [1134, 3 + 204, 1135, 1133, 1064, 1]  # onset at step 1228 = 12.28 s
    segment_6 = [1135, 1064, 1134, 3 + 10, 1132, 1064, 1]
    decoded, stats = decode_segments([segment_5, segment_6], [10.24, 12.288], config)
    assert [(n.start_time, round(n.end_time, 2)) for n in decoded.notes] == [(12.28, 12.38)]
    assert stats.dropped_events == 0 and stats.num_invalid_events == 0

import collections

import note_seq
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amt_jax.vocab.note_events import (
    TrackEncoder,
    decode_segments,
    encode_note_sequence,
    segment_start_times,
)
from amt_jax.vocab.vocabularies import (
    VocabularyConfig,
    bin_to_velocity,
    build_codec,
    token_id,
    velocity_to_bin,
)

MT3 = VocabularyConfig.named("mt3")
SEG = 2.048
PROGRAMS = (0, 1, 7, 33, 40, 127)
# Times on and right around segment boundaries (k * 2.048 s and their 10 ms grid steps).
EDGE_TIMES = sorted(
    {round(k * SEG + d, 4) for k in range(1, 6) for d in (-0.01, -0.005, 0.0, 0.004, 0.008, 0.01)}
)

settings.register_profile("vocab", deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _ns(notes):
    ns = note_seq.NoteSequence(ticks_per_quarter=220)
    for start, end, pitch, velocity, program, is_drum in notes:
        ns.notes.add(
            start_time=start,
            end_time=end,
            pitch=pitch,
            velocity=velocity,
            program=program,
            is_drum=is_drum,
        )
    ns.total_time = max((n[1] for n in notes), default=0.0)
    return ns


def _ids(config, *events):
    codec = build_codec(config)
    return [token_id(codec, t, v) for t, v in events]


def _encode_decode(ns, config, segment_seconds=SEG):
    segments = encode_note_sequence(ns, config, segment_seconds)
    starts = segment_start_times(len(segments), segment_seconds)
    decoded, stats = decode_segments(segments, starts, config)
    assert stats.num_invalid_events == 0 and stats.dropped_events == 0
    assert stats.segments_without_tie == [] and stats.segments_without_eos == 0
    return decoded, stats, segments


def _program(program, granularity):
    return {"flat": 0, "midi_class": 8 * (program // 8), "full": program}[granularity]


def _expected_notes(notes, config):
    """Independent model of what survives a round trip: (on, off, pitch, vel, program, drum)
    in 10 ms steps; drums keep only their onset. Same-channel notes are trimmed in seconds
    as MT3 trims them: in order of start time (ties in list order) a note ends where the
    next one starts, and a note left without length is dropped. A zero-length note ends on
    the step after its onset; a note inside one step decodes one step long."""
    out = []
    channels = collections.defaultdict(list)
    for start, end, pitch, velocity, program, is_drum in notes:
        velocity_out = bin_to_velocity(
            velocity_to_bin(velocity, config.num_velocity_bins), config.num_velocity_bins
        )
        if is_drum:
            channel = ("drum", program, pitch)
        else:
            channel = ("pitched", _program(program, config.program_granularity), pitch)
        if end <= start:  # zero length: ends on the step after the onset's step
            end = (np.rint(start * 100) + 1) / 100
        channels[channel].append([start, end, velocity_out])
    for (kind, program, pitch), items in channels.items():
        items.sort(key=lambda item: item[0])
        for note, following in zip(items, items[1:]):
            note[1] = min(note[1], following[0])
        for start, end, velocity_out in items:
            if end <= start:
                continue
            on = int(np.rint(start * 100))
            if kind == "drum":
                out.append((on, on + 1, pitch, velocity_out, 0, True))
            else:
                off = max(int(np.rint(end * 100)), on + 1)
                out.append((on, off, pitch, velocity_out, program, False))
    return sorted(out)


def _decoded_notes(ns):
    return sorted(
        (
            int(round(n.start_time * 100)),
            int(round(n.end_time * 100)),
            n.pitch,
            n.velocity,
            n.program,
            n.is_drum,
        )
        for n in ns.notes
    )


def test_reference_example_encodes_exactly():
    ns = _ns([(0.5, 1.0, 60, 100, 0, False)])
    segments = encode_note_sequence(ns, MT3)
    assert [s.tolist() for s in segments] == [[1134, 53, 1135, 1133, 1064, 103, 1132, 1064, 1]]
    decoded, stats = decode_segments(segments, [0.0], MT3)
    assert _decoded_notes(decoded) == [(50, 100, 60, 127, 0, False)]
    assert stats.num_invalid_events == 0


def test_tie_sections_drums_and_event_order_golden():
    # Piano 60 from 1.0 to 3.0 s crosses the 2.048 s boundary; program 33 note and a drum
    # start at 1.0 too; program 33 note ends at 1.5 where a new piano note starts.
    ns = _ns(
        [
            (1.0, 3.0, 60, 90, 0, False),
            (1.0, 1.5, 40, 90, 33, False),
            (1.0, 1.2, 36, 90, 5, True),
            (1.5, 1.7, 64, 90, 0, False),
        ]
    )
    segments = encode_note_sequence(ns, MT3)
    expected0 = _ids(
        MT3,
        ("tie", 0),
        ("shift", 100),
        ("program", 0), ("velocity", 1), ("pitch", 60),
        ("program", 33), ("pitch", 40),
        ("drum", 36),
        ("shift", 150),
        ("velocity", 0), ("pitch", 40),
        ("program", 0), ("velocity", 1), ("pitch", 64),
        ("shift", 170),
        ("velocity", 0), ("pitch", 64),
    ) + [1]  # fmt: skip
    # Segment 1 starts at step 204; piano 60 is tied and ends at step 300.
    expected1 = _ids(
        MT3,
        ("program", 0), ("pitch", 60), ("tie", 0),
        ("shift", 96), ("velocity", 0), ("pitch", 60),
    ) + [1]  # fmt: skip
    assert [s.tolist() for s in segments] == [expected0, expected1]
    decoded, stats, _ = _encode_decode(ns, MT3)
    assert _decoded_notes(decoded) == [
        (100, 101, 36, 127, 0, True),
        (100, 150, 40, 127, 33, False),
        (100, 300, 60, 127, 0, False),
        (150, 170, 64, 127, 0, False),
    ]


def test_empty_and_silent_segments_are_tie_eos():
    segments = encode_note_sequence(_ns([]), MT3, num_segments=2)
    assert [s.tolist() for s in segments] == [[1134, 1], [1134, 1]]
    ns = _ns([(0.1, 0.2, 60, 100, 0, False)])
    segments = encode_note_sequence(ns, MT3, num_segments=3)
    assert [s.tolist() for s in segments[1:]] == [[1134, 1], [1134, 1]]


def test_offset_on_first_step_of_segment_is_tied_then_ended():
    ns = _ns([(1.0, 2.04, 60, 100, 0, False)])  # ends exactly at segment 1's first step
    segments = encode_note_sequence(ns, MT3)
    assert segments[1].tolist() == _ids(
        MT3, ("program", 0), ("pitch", 60), ("tie", 0), ("velocity", 0), ("pitch", 60)
    ) + [1]
    decoded, _, _ = _encode_decode(ns, MT3)
    assert _decoded_notes(decoded) == [(100, 204, 60, 127, 0, False)]


def test_layout_without_ties_and_flat_programs():
    config = VocabularyConfig.named("ismir2021")
    ns = _ns([(1.0, 3.0, 60, 64, 33, False)])
    segments = encode_note_sequence(ns, config)
    assert segments[0].tolist() == _ids(config, ("shift", 100), ("velocity", 64), ("pitch", 60)) + [
        1
    ]
    assert segments[1].tolist() == _ids(config, ("shift", 96), ("velocity", 0), ("pitch", 60)) + [1]
    decoded, _, _ = _encode_decode(ns, config)
    assert _decoded_notes(decoded) == [(100, 300, 60, 64, 0, False)]


def test_sustain_pedal_is_applied_first():
    ns = _ns([(0.5, 1.0, 60, 100, 0, False)])
    ns.control_changes.add(time=0.2, control_number=64, control_value=127)
    ns.control_changes.add(time=1.5, control_number=64, control_value=0)
    decoded, _, _ = _encode_decode(ns, MT3)
    assert _decoded_notes(decoded) == [(50, 150, 60, 127, 0, False)]
    segments = encode_note_sequence(ns, MT3, apply_sustain_pedal=False)
    decoded, _ = decode_segments(segments, [0.0], MT3)
    assert _decoded_notes(decoded) == [(50, 100, 60, 127, 0, False)]


def test_encode_stats_report_every_change():
    ns = _ns(
        [
            (0.100, 0.101, 60, 100, 0, False),  # shorter than a step -> decodes one step long
            (1.0, 2.0, 62, 100, 0, False),  # cut at 1.5 by the next note
            (1.5, 2.5, 62, 100, 0, False),
            (3.0, 3.5, 64, 100, 0, False),  # cut at 3.001 by the next onset, in one step
            (3.001, 3.8, 64, 0, 0, False),  # zero velocity
            (4.0, 4.5, 65, 100, 0, False),  # the next note starts at the same time -> dropped
            (4.0, 4.2, 65, 100, 0, False),
        ]
    )
    segments, stats = encode_note_sequence(ns, MT3, num_segments=1, return_stats=True)
    assert stats.num_notes == 7 and stats.num_drum_notes == 0
    assert stats.lengthened_to_one_step == 2  # 60 and the cut 64
    assert stats.trimmed_overlaps == 2
    assert stats.merged_same_onset == 1
    assert stats.zero_velocity_notes == 1
    assert stats.events_outside_segments == 7  # the offset at 2.5, two notes 64, one 65
    _, stats = encode_note_sequence(ns, MT3, start_times=[0.0, 3.0], return_stats=True)
    assert stats.events_outside_segments == 1  # the offset at 2.5 s


def test_invalid_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="end time .* before start time"):
        encode_note_sequence(_ns([(1.0, 0.5, 60, 100, 0, False)]), MT3)
    with pytest.raises(ValueError, match="max_shift_steps=204"):
        encode_note_sequence(_ns([]), VocabularyConfig(), segment_seconds=4.096)
    with pytest.raises(ValueError, match="2 token arrays but 1 start times"):
        decode_segments([np.array([1134, 1])] * 2, [0.0], MT3)


# ----------------------------------------------------------------- property tests


@st.composite
def note_lists(draw, max_notes=30, same_channel_overlaps=True):
    notes = []
    n = draw(st.integers(0, max_notes))
    for _ in range(n):
        is_drum = draw(st.booleans()) and draw(st.booleans())
        if draw(st.integers(0, 3)) == 0:
            start = draw(st.sampled_from(EDGE_TIMES))
        else:
            start = draw(st.integers(0, 10_000)) / 1000
        if draw(st.integers(0, 4)) == 0:
            end = start + draw(st.integers(2048, 8000)) / 1000  # spans several segments
        elif draw(st.integers(0, 3)) == 0:
            end = max(draw(st.sampled_from(EDGE_TIMES)), start)
        else:
            end = start + draw(st.integers(0, 1500)) / 1000
        pitch = draw(st.integers(0, 127) if is_drum else st.sampled_from((40, 41, 60, 61, 62)))
        notes.append(
            (start, end, pitch, draw(st.integers(1, 127)), draw(st.sampled_from(PROGRAMS)), is_drum)
        )
    if not same_channel_overlaps:
        notes = _separate_channels(notes)
    return notes


def _separate_channels(notes):
    """Drop notes so same-(program, pitch) notes never overlap and start >= 20 ms apart."""
    kept, last_end = [], {}
    for note in sorted(notes):
        start, end, pitch, _, program, is_drum = note
        if is_drum:
            kept.append(note)
            continue
        previous = last_end.get((program, pitch))
        if previous is not None and start < max(previous[1], previous[0] + 0.02):
            continue
        last_end[(program, pitch)] = (start, end)
        kept.append(note)
    return kept


CONFIGS = [
    MT3,
    VocabularyConfig(),
    VocabularyConfig.named("ismir2021"),
    VocabularyConfig.named("mt3", program_granularity="midi_class", num_velocity_bins=127),
    VocabularyConfig.named("mt3", include_ties=False),
    VocabularyConfig.named("seed", program_granularity="flat"),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.layout}-{c.program_granularity}")
@settings(settings.get_profile("vocab"), max_examples=20)
@given(notes=note_lists())
def test_round_trip_matches_independent_model(config, notes):
    decoded, _, _ = _encode_decode(_ns(notes), config)
    assert _decoded_notes(decoded) == _expected_notes(notes, config)


@settings(settings.get_profile("vocab"), max_examples=30)
@given(notes=note_lists(max_notes=40, same_channel_overlaps=False))
def test_every_note_preserved_to_10ms(notes):
    # Notes of at least ~10 ms (shorter ones are lengthened to one step by design).
    notes = [n for n in notes if n[5] or n[1] - n[0] >= 0.0099]
    decoded, _, _ = _encode_decode(_ns(notes), MT3)
    assert len(decoded.notes) == len(notes)
    remaining = list(decoded.notes)
    for start, end, pitch, _, program, is_drum in sorted(notes):
        match = [
            n
            for n in remaining
            if n.pitch == pitch
            and n.is_drum == is_drum
            and (is_drum or n.program == program)
            and abs(n.start_time - start) <= 0.005 + 1e-9
        ]
        assert match, (start, end, pitch, program, is_drum)
        best = min(match, key=lambda n: abs(n.end_time - end))
        if not is_drum:
            assert abs(best.end_time - end) <= 0.01 + 1e-9
        assert best.velocity == 127
        remaining.remove(best)


@settings(settings.get_profile("vocab"), max_examples=25)
@given(notes=note_lists(max_notes=20), segment_seconds=st.sampled_from([0.5, 1.0, 0.37]))
def test_round_trip_with_short_segments(notes, segment_seconds):
    decoded, _, segments = _encode_decode(_ns(notes), MT3, segment_seconds)
    assert _decoded_notes(decoded) == _expected_notes(notes, MT3)
    assert all(s[-1] == 1 and 1 not in s[:-1].tolist() for s in segments)


# ----------------------------------------------------------------- robustness


@settings(settings.get_profile("vocab"), max_examples=30)
@given(notes=note_lists(max_notes=15), data=st.data())
def test_corrupted_streams_never_raise(notes, data):
    segments = encode_note_sequence(_ns(notes), MT3)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    mode = data.draw(st.sampled_from(["shuffle", "truncate", "random", "drop_eos"]))
    corrupted = []
    for seg in segments:
        seg = seg.copy()
        if mode == "shuffle":
            rng.shuffle(seg)
        elif mode == "truncate":
            seg = seg[: rng.integers(0, len(seg) + 1)]
        elif mode == "random":
            seg = rng.integers(0, MT3.num_embeddings, size=rng.integers(0, 60))
        else:
            seg = seg[:-1]
        corrupted.append(seg)
    starts = segment_start_times(len(corrupted))
    decoded, stats = decode_segments(corrupted, starts, MT3)
    for note in decoded.notes:
        assert note.end_time >= note.start_time + 0.01 - 1e-9
    assert stats.num_segments == len(segments)
    assert 0 <= stats.num_segments_without_tie <= len(segments)


def test_invalid_and_dropped_counts_on_hand_made_stream():
    seg0 = _ids(
        MT3,
        ("tie", 0),
        ("shift", 10), ("program", 0), ("velocity", 1), ("pitch", 60),
        ("shift", 20), ("velocity", 0), ("pitch", 61),  # offset of an inactive note
        ("tie", 0),  # tie outside the tie section
        ("shift", 15), ("pitch", 60),  # time went backwards (15 < 20)
        ("velocity", 1), ("drum", 36),  # also earlier than 20: three in all
        ("shift", 30), ("velocity", 0), ("drum", 36),  # drum with velocity 0
        ("shift", 40), ("pitch", 60),  # valid offset at 0.40 s
        ("shift", 250), ("velocity", 1), ("pitch", 62), ("pitch", 63),  # past segment 1 start
    )  # fmt: skip
    seg0 = np.array(seg0[:6] + [0, 2, 1500] + seg0[6:] + [1, 5, 5])  # PAD, UNK, extra id
    seg1 = np.array(_ids(MT3, ("tie", 0)) + [1])
    decoded, stats = decode_segments([seg0, seg1], [0.0, 2.048], MT3)
    assert stats.invalid_events == {
        "invalid_id": 3,
        "offset_for_inactive_note": 1,
        "tie_outside_tie_section": 1,
        "time_went_backwards": 3,
        "drum_with_velocity_zero": 1,
    }
    assert stats.num_invalid_events == 9
    assert stats.dropped_events == 4  # the shift past 2.04 s and the three tokens after it
    assert _decoded_notes(decoded) == [(10, 40, 60, 127, 0, False)]


def test_missing_tie_is_flagged_and_handled_as_mt3():
    seg0 = _ids(MT3, ("tie", 0), ("shift", 100), ("program", 0), ("velocity", 1), ("pitch", 60))
    # Segment 1 forgets its tie token: every pitch is read as a tie declaration.
    seg1 = _ids(
        MT3, ("program", 0), ("pitch", 60), ("shift", 50), ("velocity", 1), ("pitch", 62),
        ("shift", 80), ("velocity", 0), ("pitch", 60),
    )  # fmt: skip
    seg2 = _ids(MT3, ("tie", 0), ("shift", 10), ("velocity", 1), ("pitch", 64))
    segments = [np.array(s + [1]) for s in (seg0, seg1, seg2)]
    decoded, stats = decode_segments(segments, segment_start_times(3), MT3)
    assert stats.segments_without_tie == [1]
    # 62 was never active, 60 cannot be tied twice.
    assert stats.invalid_events == {"tie_for_inactive_note": 1, "note_tied_twice": 1}
    # Note 60 survives segment 1 (no tie ever ended it) and ends at segment 2's tie (4.09 s);
    # segment 1 produces no notes; 64 is flushed 10 ms after its onset.
    assert _decoded_notes(decoded) == [
        (100, 409, 60, 127, 0, False),
        (419, 420, 64, 127, 0, False),
    ]
    assert stats.notes_ended_by_tie == 1 and stats.flushed_notes == 1
    counts = stats.as_dict()
    assert counts["segments_without_tie"] == 1 and counts["invalid/note_tied_twice"] == 1
    assert counts["invalid_events"] == 2 and counts["segments"] == 3


def test_reonset_and_flush_follow_mt3():
    seg = _ids(
        MT3,
        ("tie", 0),
        ("shift", 10), ("program", 0), ("velocity", 1), ("pitch", 60),
        ("shift", 30), ("pitch", 60),  # re-onset closes the first note
        ("shift", 50), ("pitch", 61),
    )  # fmt: skip
    decoded, stats = decode_segments([np.array(seg + [1])], [0.0], MT3)
    # Hanging notes all end at max(last event time, latest onset + 10 ms) = 0.51 s.
    assert _decoded_notes(decoded) == [
        (10, 30, 60, 127, 0, False),
        (30, 51, 60, 127, 0, False),
        (50, 51, 61, 127, 0, False),
    ]
    assert stats.flushed_notes == 2


def test_track_encoder_crops_match_one_shot_encoding():
    ns = _ns([(0.3, 5.0, 60, 100, 0, False), (2.5, 2.6, 36, 100, 0, True)])
    encoder = TrackEncoder(ns, MT3)
    assert encoder.num_segments() == 3 and encoder.last_event_step == 500
    crops, outside = encoder.segments(start_times=[1.0, 2.3])
    assert outside == 2  # the onset at 0.3 s and the offset at 5.0 s lie in no crop
    one_shot = encode_note_sequence(ns, MT3, start_times=[1.0, 2.3])
    assert [c.tolist() for c in crops] == [c.tolist() for c in one_shot]
    # Crop [1.0, 3.048): note 60 is already sounding (tied); the drum is 150 steps in.
    assert crops[0].tolist() == _ids(
        MT3, ("program", 0), ("pitch", 60), ("tie", 0), ("shift", 150), ("velocity", 1),
        ("drum", 36),
    ) + [1]  # fmt: skip
    assert crops[1].tolist() == _ids(
        MT3, ("program", 0), ("pitch", 60), ("tie", 0), ("shift", 20), ("velocity", 1),
        ("drum", 36),
    ) + [1]  # fmt: skip

"""Rolls → notes: Basic Pitch note creation (golden) and O&F onset-gated decoding."""

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from amt_jax.notes import basic_pitch as pp
from amt_jax.notes import onsets_frames as of_notes


@pytest.fixture(scope="module")
def vocadito(shared_dir):
    folder = os.path.join(shared_dir, "fixtures", "basic_pitch", "vocadito_10")
    outputs = np.load(os.path.join(folder, "model_output.npz"), allow_pickle=True)["arr_0"].item()
    events = np.load(os.path.join(folder, "note_events.npz"), allow_pickle=True)["arr_0"]
    return outputs, events


def test_basic_pitch_note_creation_matches_golden_events(vocadito):
    outputs, expected = vocadito
    events = pp.basic_pitch_note_events(outputs)
    assert len(events) == len(expected) == 28
    for got, want in zip(events, expected):
        # Same order, same frames (hence identical times), same pitch and bends.
        assert got.start == pytest.approx(want[0], abs=1e-9)
        assert got.end == pytest.approx(want[1], abs=1e-9)
        assert got.pitch == want[2]
        # The golden events came from a separate model run; basic-pitch's own test: 1e-4.
        assert got.amplitude == pytest.approx(want[3], abs=1e-4)
        assert got.pitch_bends == [int(b) for b in want[4]]


def test_note_creation_does_not_modify_inputs(vocadito):
    outputs, _ = vocadito
    copies = {k: v.copy() for k, v in outputs.items()}
    pp.basic_pitch_note_events(outputs, min_freq=100.0, max_freq=300.0)
    for key in copies:
        np.testing.assert_array_equal(outputs[key], copies[key])


def test_frequency_limits_keep_only_the_band(vocadito):
    outputs, _ = vocadito
    events = pp.basic_pitch_note_events(outputs, min_freq=110.0, max_freq=155.0)
    # MIDI 45 (110 Hz) inclusive .. round(hz_to_midi(155) - 21) = 30 -> pitches < 51.
    assert events and all(45 <= e.pitch < 51 for e in events)
    full = pp.basic_pitch_note_events(outputs)
    assert len(events) < len(full)


def _loop_note_events(note, onset, onset_threshold, frame_threshold, min_frames, tolerance):
    """basic-pitch's trace and melodia loops written frame by frame (the reference that the
    vectorised decoder must match note for note, in order)."""
    n_frames, n_pitches = note.shape
    onset = pp.infer_onsets(onset, note)
    peaks = np.zeros(onset.shape, bool)
    peaks[1:-1] = (onset[1:-1] > onset[:-2]) & (onset[1:-1] > onset[2:])
    times, pitches = np.nonzero(np.where(peaks, onset, 0) >= onset_threshold)
    remaining = note.copy()

    def zero(rows, pitch):
        remaining[rows, max(pitch - 1, 0) : pitch + 2] = 0

    events = []
    for start, pitch in zip(times[::-1], pitches[::-1]):
        if start >= n_frames - 1:
            continue
        i, below = start + 1, 0
        while i < n_frames - 1 and below < tolerance:
            below = below + 1 if remaining[i, pitch] < frame_threshold else 0
            i += 1
        end = i - below
        if end - start > min_frames:
            zero(slice(start, end), pitch)
            events.append((start, end, pitch + 21, note[start:end, pitch].mean()))
    while np.max(remaining) > frame_threshold:
        middle, pitch = np.unravel_index(np.argmax(remaining), remaining.shape)
        remaining[middle, pitch] = 0
        i, below = middle + 1, 0
        while i < n_frames - 1 and below < tolerance:
            below = below + 1 if remaining[i, pitch] < frame_threshold else 0
            zero(i, pitch)
            i += 1
        end = i - 1 - below
        i, below = middle - 1, 0
        while i > 0 and below < tolerance:
            below = below + 1 if remaining[i, pitch] < frame_threshold else 0
            zero(i, pitch)
            i -= 1
        start = i + 1 + below
        if end - start > min_frames:
            events.append((start, end, pitch + 21, note[start:end, pitch].mean()))
    return events


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 40), st.integers(1, 6)),
    seed=st.integers(0, 2**16),
    levels=st.sampled_from([0, 3]),  # 3: values on a coarse grid, so argmax ties happen
    onset_threshold=st.floats(0.2, 0.8),
    frame_threshold=st.floats(0.0, 0.7),
    min_frames=st.integers(0, 4),
    tolerance=st.integers(0, 5),
)
def test_vectorised_note_creation_equals_the_frame_loops(
    shape, seed, levels, onset_threshold, frame_threshold, min_frames, tolerance
):
    rng = np.random.default_rng(seed)
    note = rng.random(shape).astype(np.float32) ** 2
    if levels:
        note = np.round(note * levels) / levels
    onset = rng.random(shape).astype(np.float32) ** 3
    got = pp.note_events_in_frames(
        note,
        onset,
        onset_threshold=onset_threshold,
        frame_threshold=frame_threshold,
        min_note_frames=min_frames,
        energy_tolerance=tolerance,
    )
    want = _loop_note_events(note, onset, onset_threshold, frame_threshold, min_frames, tolerance)
    assert [tuple(map(int, e[:3])) for e in got] == [tuple(map(int, e[:3])) for e in want]
    assert [e[3] for e in got] == [e[3] for e in want]


def test_batched_pitch_bends_equal_per_note_bends(vocadito):
    outputs, _ = vocadito
    contour = outputs["contour"]
    rng = np.random.default_rng(0)
    notes = [(0, 5, 21, 0.5), (10, 40, 108, 0.5), (3, 4, 60, 0.5), (7, 7, 30, 0.5)]
    notes += [(s, s + int(rng.integers(1, 30)), int(rng.integers(21, 109)), 0.5) for s in range(50)]
    batched = pp._pitch_bends_of_notes(contour, notes)
    assert batched == [pp.pitch_bends_from_contour(contour, s, e, p) for s, e, p, _ in notes]
    # Chunked over notes (bounded memory on long files): same bends for any chunk size.
    for frames_per_chunk in (1, 7, 64):
        assert (
            pp._pitch_bends_of_notes(contour, notes, frames_per_chunk=frames_per_chunk) == batched
        )


def test_negative_frame_threshold_is_refused_not_an_endless_loop():
    with pytest.raises(ValueError, match="frame_threshold"):
        pp.note_events_in_frames(np.ones((5, 3)), np.ones((5, 3)), frame_threshold=-0.1)


def test_model_frames_to_time_applies_per_window_correction():
    times = pp.model_frames_to_time(400)
    hop_s = 256 / 22050
    np.testing.assert_allclose(times[:172], np.arange(172) * hop_s)
    shift = hop_s * (172 - 43844 / 256) + 0.0018
    assert times[172] == pytest.approx(172 * hop_s - shift)
    assert times[399] == pytest.approx(399 * hop_s - 2 * shift)


def test_minimum_note_length_in_frames():
    assert pp.minimum_note_frames(127.7) == 11
    assert pp.minimum_note_frames(58) == 5


def _single_note_posteriors(n_frames=60, start=10, stop=40, pitch=40, onset=0.9):
    note = np.zeros((n_frames, 88), np.float32)
    note[start:stop, pitch] = 0.8
    onset_tp = np.zeros_like(note)
    onset_tp[start, pitch] = onset
    contour = np.zeros((n_frames, 264), np.float32)
    contour[start:stop, 3 * pitch + 1] = 0.9  # a third of a semitone sharp
    return {"note": note, "onset": onset_tp, "contour": contour}


def test_single_synthetic_note_with_bend_and_sequence():
    outputs = _single_note_posteriors()
    sequence, events = pp.basic_pitch_outputs_to_sequence(outputs)
    assert len(events) == 1
    event = events[0]
    times = pp.model_frames_to_time(60)
    assert (event.start, event.end, event.pitch) == (times[10], times[40], 61)
    assert event.amplitude == pytest.approx(0.8)
    assert event.pitch_bends == [1] * 30
    (note,) = sequence.notes
    assert (note.pitch, note.velocity, note.program) == (61, round(127 * 0.8), 4)
    assert len(sequence.pitch_bends) == 30
    assert {b.bend for b in sequence.pitch_bends} == {round(4096 / 3)}
    assert sequence.pitch_bends[0].time == pytest.approx(note.start_time)
    assert sequence.pitch_bends[-1].time == pytest.approx(note.end_time)


def test_melodia_trick_recovers_note_without_onset():
    outputs = _single_note_posteriors(onset=0.0)
    with_trick = pp.basic_pitch_note_events(outputs, use_inferred_onsets=False)
    without = pp.basic_pitch_note_events(outputs, use_inferred_onsets=False, melodia_trick=False)
    assert without == []
    assert len(with_trick) == 1 and with_trick[0].pitch == 61


def test_overlapping_notes_lose_bends_unless_multiple_pitch_bends():
    a = pp.NoteEvent(0.0, 1.0, 60, 0.5, [3, 3])
    b = pp.NoteEvent(0.5, 1.5, 64, 0.5, [-30, -30])  # -10 semitones: clipped at -8192
    c = pp.NoteEvent(2.0, 3.0, 67, 0.5, [0, 1])
    merged = pp.note_events_to_sequence([c, a, b])
    assert [n.pitch for n in merged.notes] == [60, 64, 67]
    assert len(merged.pitch_bends) == 2 and {n.instrument for n in merged.notes} == {0}
    separate = pp.note_events_to_sequence([a, b, c], multiple_pitch_bends=True)
    assert [n.instrument for n in separate.notes] == [0, 1, 2]
    bends_b = [p.bend for p in separate.pitch_bends if p.instrument == 1]
    assert bends_b == [-8192, -8192]
    assert [p.bend for p in separate.pitch_bends if p.instrument == 0] == [4096, 4096]


# --- Onsets and Frames onset-gated decoding ------------------------------------------------


def _roll(n_frames=12):
    return np.zeros((n_frames, 88), np.float32), np.zeros((n_frames, 88), np.float32)


def _notes(sequence):
    return [(n.pitch, n.start_time, n.end_time, n.velocity) for n in sequence.notes]


def test_frames_without_onset_are_ignored():
    frames, onsets = _roll()
    frames[2:6, 10] = 0.9  # no onset anywhere
    assert _notes(of_notes.onsets_frames_to_sequence(frames, onsets)) == []


def test_onset_starts_note_and_first_off_frame_ends_it():
    frames, onsets = _roll()
    frames[3:7, 10] = 0.9
    onsets[3, 10] = 0.8
    velocity = np.zeros_like(frames)
    velocity[3, 10] = 0.5
    fps = 31.25
    notes = _notes(of_notes.onsets_frames_to_sequence(frames, onsets, velocity))
    assert notes == [(31, 3 / fps, 7 / fps, int(0.5 * 80 + 10))]


def test_onset_counts_as_active_frame_and_threshold_is_strict():
    frames, onsets = _roll()
    onsets[4, 20] = 0.7  # frame below threshold, onset above: one-frame note
    frames[8, 30] = 0.5  # exactly at threshold: not active
    onsets[8, 30] = 0.5
    notes = _notes(of_notes.onsets_frames_to_sequence(frames, onsets))
    assert [(p, s, e) for p, s, e, _ in notes] == [(41, 4 / 31.25, 5 / 31.25)]


def test_new_onset_rising_edge_rearticulates():
    frames, onsets = _roll()
    frames[1:9, 0] = 0.9
    onsets[1:3, 0] = 0.9  # two-frame onset: one note start
    onsets[5, 0] = 0.9  # rising edge while on: new note
    velocity = np.zeros_like(frames)
    velocity[1, 0], velocity[5, 0] = 1.5, -1.0  # clipped to [0, 1]
    notes = _notes(
        of_notes.onsets_frames_to_sequence(frames, onsets, velocity, frames_per_second=10)
    )
    assert notes == [(21, 1 * 0.1, 5 * 0.1, 90), (21, 5 * 0.1, 9 * 0.1, 10)]


def test_note_running_to_the_end_is_closed_and_min_duration_filters():
    frames, onsets = _roll(6)
    frames[4:, 87] = 0.9
    onsets[4, 87] = 0.9
    frames[1:2, 5] = 0.9
    onsets[1, 5] = 0.9
    sequence = of_notes.onsets_frames_to_sequence(frames, onsets, frames_per_second=10)
    assert sorted(_notes(sequence)) == [(26, 0.1, 0.2, 70), (108, 0.4, 6 * 0.1, 70)]
    assert sequence.total_time == pytest.approx(0.7)
    short_dropped = of_notes.onsets_frames_to_sequence(
        frames, onsets, frames_per_second=10, min_duration_ms=150
    )
    assert [n.pitch for n in short_dropped.notes] == [108]


def test_offsets_end_notes_when_enabled():
    frames, onsets = _roll()
    frames[2:10, 50] = 0.9
    onsets[2, 50] = 0.9
    offsets = np.zeros_like(frames)
    offsets[6, 50] = 0.9
    default = _notes(of_notes.onsets_frames_to_sequence(frames, onsets, offset_probs_tp=offsets))
    assert [(s, e) for _, s, e, _ in default] == [(2 / 31.25, 10 / 31.25)]
    gated = _notes(
        of_notes.onsets_frames_to_sequence(
            frames, onsets, offset_probs_tp=offsets, offset_threshold=0.5
        )
    )
    assert [(s, e) for _, s, e, _ in gated] == [(2 / 31.25, 6 / 31.25)]


def test_mismatched_rolls_raise():
    with pytest.raises(ValueError, match="frames, pitches"):
        of_notes.onsets_frames_to_sequence(np.zeros((5, 88)), np.zeros((6, 88)))


@settings(max_examples=40, deadline=None)
@given(
    frames=hnp.arrays(np.bool_, (12, 3)),
    onsets=hnp.arrays(np.bool_, (12, 3)),
)
def test_onset_gated_notes_respect_the_gating_rules(frames, onsets):
    """Every note starts on an onset, covers only active frames and ends where it must."""
    sequence = of_notes.onsets_frames_to_sequence(
        frames.astype(np.float32), onsets.astype(np.float32), frames_per_second=1.0
    )
    active = frames | onsets
    covered = np.zeros_like(active)
    for note in sequence.notes:
        pitch, start, end = note.pitch - 21, round(note.start_time), round(note.end_time)
        assert onsets[start, pitch] and end > start
        assert active[start:end, pitch].all()
        assert not covered[start:end, pitch].any()  # same-pitch notes never overlap
        covered[start:end, pitch] = True
        ends_on_silence = end == len(active) or not active[end, pitch]
        rearticulated = end < len(active) and onsets[end, pitch] and not onsets[end - 1, pitch]
        assert ends_on_silence or rearticulated
    # Exactly the onset rising edges start notes: none is lost, none is invented.
    rising = onsets & ~np.vstack([np.zeros((1, 3), bool), onsets[:-1]])
    starts = {(round(n.start_time), n.pitch - 21) for n in sequence.notes}
    assert starts == {(int(t), int(p)) for t, p in np.argwhere(rising)}

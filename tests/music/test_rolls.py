import note_seq
import numpy as np
import pytest
from note_seq import sequences_lib

from amt_jax.music.rolls import max_velocity, notes_to_roll

FPS = 31.25  # O&F: 16 kHz, hop 512


def sequence(*notes):
    """notes: (pitch, start, end[, velocity[, is_drum]])."""
    ns = note_seq.NoteSequence()
    for pitch, start, end, *rest in notes:
        velocity, is_drum = (list(rest) + [100, False][len(rest) :])[:2]
        ns.notes.add(
            pitch=pitch, start_time=start, end_time=end, velocity=velocity, is_drum=is_drum
        )
    ns.total_time = max((n.end_time for n in ns.notes), default=0.0)
    return ns


def test_magenta_rule_32_ms_onsets_and_offsets():
    # onset 0.1 s: frames int(3.125) = 3 .. ceil(0.132 * 31.25 = 4.125) = 5 -> 2 frames
    # offset 0.5 s: int(15.625) = 15 .. ceil(0.532 * 31.25 = 16.625) = 17 -> 2 frames
    # note: int(3.125) = 3 .. ceil(15.625) = 16
    roll = notes_to_roll(sequence((60, 0.1, 0.5, 64)), FPS, num_frames=20, max_velocity=64)
    p = 60 - 21
    np.testing.assert_array_equal(np.flatnonzero(roll.onsets_tp[:, p]), [3, 4])
    np.testing.assert_array_equal(np.flatnonzero(roll.offsets_tp[:, p]), [15, 16])
    np.testing.assert_array_equal(np.flatnonzero(roll.frames_tp[:, p]), range(3, 16))
    np.testing.assert_array_equal(np.flatnonzero(roll.velocities_tp[:, p]), [3, 4])
    np.testing.assert_allclose(roll.velocities_tp[[3, 4], p], 1.0)  # 64 / max 64


def test_magenta_rule_frame_aligned_onset_spans_one_frame():
    # 0.064 s * 31.25 = 2 exactly: [2, ceil(0.096 * 31.25 = 3)) = frame 2 only
    roll = notes_to_roll(sequence((60, 0.064, 0.5)), FPS, num_frames=20)
    np.testing.assert_array_equal(np.flatnonzero(roll.onsets_tp[:, 60 - 21]), [2])
    # a 10 ms note: the onset stops at the note end, still one frame
    short = notes_to_roll(sequence((60, 0.1, 0.11)), FPS, num_frames=20)
    np.testing.assert_array_equal(np.flatnonzero(short.onsets_tp[:, 60 - 21]), [3])
    np.testing.assert_array_equal(np.flatnonzero(short.frames_tp[:, 60 - 21]), [3])


def test_onset_and_offset_lengths_are_parameters():
    roll = notes_to_roll(
        sequence((60, 0.1, 0.5)), FPS, num_frames=20, onset_length_ms=96, offset_length_ms=0
    )
    # onset [3, ceil(0.196 * 31.25 = 6.125) = 7); offset of length 0 keeps one frame
    np.testing.assert_array_equal(np.flatnonzero(roll.onsets_tp[:, 60 - 21]), [3, 4, 5, 6])
    np.testing.assert_array_equal(np.flatnonzero(roll.offsets_tp[:, 60 - 21]), [15])


def random_sequence(rng, n, duration=6.0):
    """Distinct pitches (so magenta's last-note-wins velocity equals ours)."""
    pitches = rng.choice(np.arange(21, 109), size=n, replace=False)
    notes = []
    for pitch in pitches:
        start = float(rng.uniform(0, duration))
        notes.append(
            (int(pitch), start, start + float(rng.uniform(0.005, 1.5)), int(rng.integers(1, 128)))
        )
    return sequence(*notes)


@pytest.mark.parametrize("seed", range(3))
def test_magenta_rule_equals_note_seq_sequence_to_pianoroll(seed):
    ns = random_sequence(np.random.default_rng(seed), 60)
    ns.total_time += 1.0  # keep clear of magenta's end-of-sequence offset shift
    top = max_velocity(ns)
    expected = sequences_lib.sequence_to_pianoroll(
        ns,
        FPS,
        21,
        108,
        max_velocity=top,
        onset_mode="length_ms",
        onset_length_ms=32,
        offset_length_ms=32,
    )
    roll = notes_to_roll(ns, FPS, num_frames=len(expected.active), max_velocity=top)
    np.testing.assert_array_equal(roll.frames_tp, expected.active)
    np.testing.assert_array_equal(roll.onsets_tp, expected.onsets)
    np.testing.assert_array_equal(roll.offsets_tp, expected.offsets)
    np.testing.assert_allclose(roll.velocities_tp, expected.onset_velocities, rtol=1e-6)


def test_nearest_rule_rounds_to_centred_frames():
    fps = 10.0
    # onset 0.34 s -> 3.4 -> frame 3; 0.36 s -> 3.6 -> frame 4; end 0.76 -> 7.6 -> frame 8
    roll = notes_to_roll(
        sequence((60, 0.34, 0.76), (62, 0.36, 0.44)),
        fps,
        num_frames=10,
        rule="nearest",
        onset_length_ms=0,
        offset_length_ms=0,
    )
    np.testing.assert_array_equal(np.flatnonzero(roll.onsets_tp[:, 60 - 21]), [3])
    np.testing.assert_array_equal(np.flatnonzero(roll.frames_tp[:, 60 - 21]), range(3, 9))
    np.testing.assert_array_equal(np.flatnonzero(roll.offsets_tp[:, 60 - 21]), [8])
    np.testing.assert_array_equal(np.flatnonzero(roll.onsets_tp[:, 62 - 21]), [4])
    np.testing.assert_array_equal(np.flatnonzero(roll.frames_tp[:, 62 - 21]), [4])


@pytest.mark.parametrize("rule", ["magenta", "nearest"])
def test_window_roll_is_the_slice_of_the_whole_track_roll(rule):
    ns = random_sequence(np.random.default_rng(11), 70)
    fps = 22050 / 256 if rule == "nearest" else FPS
    lengths = {} if rule == "magenta" else {"onset_length_ms": 0, "offset_length_ms": 0}
    whole = notes_to_roll(ns, fps, num_frames=800, rule=rule, **lengths)
    first, count = 97, 172
    window = notes_to_roll(
        ns, fps, num_frames=count, start_seconds=first / fps, rule=rule, **lengths
    )
    for name in ("frames_tp", "onsets_tp", "offsets_tp", "velocities_tp"):
        np.testing.assert_array_equal(
            getattr(window, name), getattr(whole, name)[first : first + count], err_msg=name
        )
    assert window.onsets_tp.sum() < window.frames_tp.sum()  # notes begun earlier: no onset


def test_skipped_notes_drums_and_default_length():
    ns = sequence(
        (60, 0.10, 0.35, 127),
        (36, 0.0, 0.2, 100, True),  # drum
        (10, 0.0, 0.2, 100),  # below min_pitch
    )
    roll = notes_to_roll(ns, 10)
    # frames [1, 4); offset [3, ceil(3.82) = 4) -> the default length ends at frame 4
    assert roll.frames_tp.shape == (4, 88) and roll.notes_skipped == 2
    with_drums = notes_to_roll(ns, 10, include_drums=True)
    np.testing.assert_array_equal(with_drums.frames_tp[:, 36 - 21], [1, 1, 0, 0])
    outside = notes_to_roll(ns, 10, start_seconds=5.0, num_frames=3)
    assert outside.frames_tp.sum() == 0 and outside.notes_outside == 3


def test_max_velocity_and_bad_arguments():
    assert max_velocity(sequence((60, 0, 1, 40), (62, 0, 1, 90))) == 90
    assert max_velocity(note_seq.NoteSequence()) == 1
    ns = sequence((60, 0.1, 0.5))
    with pytest.raises(ValueError, match="label rule"):
        notes_to_roll(ns, 10, rule="floor")
    with pytest.raises(ValueError, match="nearest"):
        notes_to_roll(ns, 10, rule="nearest", onset_length_ms=32)

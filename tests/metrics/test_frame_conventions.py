"""Frame F1 under each family's paper convention."""

import pytest
from note_seq.protobuf import music_pb2

from amt_jax.metrics import transcription


def _sequence(velocities):
    sequence = music_pb2.NoteSequence()
    for i, velocity in enumerate(velocities):
        sequence.notes.add(
            pitch=40 + i % 40, velocity=velocity, start_time=0.1 * i, end_time=0.1 * i + 0.4
        )
    return sequence


def test_identical_estimate_scores_one_without_a_velocity_threshold():
    reference = _sequence(range(15, 110))  # velocities 15-109
    for name in ("onsets_frames", "basic_pitch"):
        metrics = transcription.track_metrics(reference, reference, frame_convention=name)
        assert metrics["Frame F1"] == pytest.approx(1.0)
    # MT3 counts only reference cells above velocity 30, so quiet notes become "false alarms"
    mt3 = transcription.track_metrics(reference, reference, frame_convention="mt3")
    assert mt3["Frame F1"] < 0.99


def test_unknown_convention_names_the_choices():
    with pytest.raises(ValueError, match="mt3, onsets_frames, basic_pitch"):
        transcription.track_metrics(_sequence([80]), _sequence([80]), frame_convention="x")


def test_mt3_quiet_reference_cells_count_as_false_alarms():
    # MT3's documented behaviour: the reference keeps cells with velocity > 30 only, so
    # the identical estimate's cells of notes with velocity 15..30 are false positives.
    reference = _sequence(range(15, 110))
    fps = 62.5

    def cells(notes):
        return sum(int(n.end_time * fps) - int(n.start_time * fps) for n in notes)

    loud = cells(n for n in reference.notes if n.velocity > 30)
    precision = loud / cells(reference.notes)
    metrics = transcription.track_metrics(reference, reference, frame_convention="mt3")
    assert metrics["Frame precision"] == pytest.approx(precision)
    assert metrics["Frame recall"] == pytest.approx(1.0)
    assert metrics["Frame F1"] == pytest.approx(2 * precision / (1 + precision))
    assert metrics["Frame F1"] == pytest.approx(0.908, abs=1e-3)


def _notes(notes):
    sequence = music_pb2.NoteSequence()
    for pitch, start, end in notes:
        sequence.notes.add(pitch=pitch, velocity=80, start_time=start, end_time=end)
    return sequence


def test_each_convention_draws_frames_by_its_own_rule():
    reference, estimate = _notes([(60, 0.1, 0.2)]), _notes([(60, 0.1, 0.13)])
    # onsets_frames (31.25 fps, magenta): ref [3, ceil(6.25)) = 4 cells, est [3, 5) = 2
    # basic_pitch (100 fps, nearest): ref 10..20 = 11 cells, est 10..13 = 4
    # mt3 (62.5 fps, pretty_midi, >= 50 ms): ref [6, 12) = 6, est [6, int(9.375)) = 3
    for name, recall in [("onsets_frames", 2 / 4), ("basic_pitch", 4 / 11), ("mt3", 3 / 6)]:
        metrics = transcription.track_metrics(reference, estimate, frame_convention=name)
        assert metrics["Frame precision"] == pytest.approx(1.0), name
        assert metrics["Frame recall"] == pytest.approx(recall), name


def test_onsets_frames_scores_the_88_piano_keys_only():
    reference = _notes([(60, 0.0, 1.0)])
    estimate = _notes([(60, 0.0, 1.0), (10, 0.0, 1.0), (120, 0.0, 1.0)])
    onsets_frames = transcription.track_metrics(
        reference, estimate, frame_convention="onsets_frames"
    )
    assert onsets_frames["Frame F1"] == pytest.approx(1.0)
    basic_pitch = transcription.track_metrics(reference, estimate, frame_convention="basic_pitch")
    assert basic_pitch["Frame precision"] == pytest.approx(1 / 3)
    # pitches above 5 kHz (MIDI > 111) are scored, not rejected as mir_eval.multipitch does
    mt3 = transcription.track_metrics(reference, estimate, frame_convention="mt3")
    assert mt3["Frame precision"] == pytest.approx(1 / 3)


def test_a_convention_object_can_be_passed_directly():
    custom = transcription.FrameConvention(10.0, frame_rule="magenta")
    assert transcription.get_frame_convention(custom) is custom
    reference, estimate = _notes([(60, 0.0, 1.0)]), _notes([(60, 0.0, 0.5)])
    precision, recall, _ = transcription.frame_scores(
        transcription.note_arrays(reference),
        transcription.note_arrays(estimate),
        frame_convention=custom,
    )
    assert (precision, recall) == (pytest.approx(1.0), pytest.approx(0.5))
    with pytest.raises(ValueError, match="choose one of mt3, onsets_frames, basic_pitch"):
        transcription.frame_scores(
            transcription.note_arrays(reference),
            transcription.note_arrays(estimate),
            frame_convention="magenta",
        )

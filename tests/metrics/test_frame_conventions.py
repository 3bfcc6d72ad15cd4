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

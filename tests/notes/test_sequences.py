"""The NoteSequence builder shared by the frame decoders."""

import pytest

from amt_jax.notes.sequences import notes_to_sequence


def test_notes_keep_their_order_and_fields():
    sequence = notes_to_sequence(
        [0.5, 0.1], [0.9, 2.0], [64, 60], [90, 30], instruments=[1, 0], program=4, qpm=100.0
    )
    got = [
        (n.start_time, n.end_time, n.pitch, n.velocity, n.instrument, n.program)
        for n in sequence.notes
    ]
    assert got == [(0.5, 0.9, 64, 90, 1, 4), (0.1, 2.0, 60, 30, 0, 4)]
    assert [t.qpm for t in sequence.tempos] == [100.0]
    assert sequence.ticks_per_quarter == 220
    assert sequence.total_time == 2.0  # the latest end, not the last note's


def test_total_time_given_or_empty():
    assert notes_to_sequence([], [], [], []).total_time == 0.0
    assert notes_to_sequence([0.0], [1.0], [60], [80], total_time=3.5).total_time == 3.5


def test_mismatched_columns_raise():
    with pytest.raises(ValueError, match="2 starts"):
        notes_to_sequence([0.0, 1.0], [1.0], [60], [80])
    with pytest.raises(ValueError, match="instruments"):
        notes_to_sequence([0.0], [1.0], [60], [80], instruments=[0, 1])

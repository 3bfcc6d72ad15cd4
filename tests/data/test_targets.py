"""Per-family targets on hand-made tracks: O&F and NMP label rules, MT3 over-long targets."""

import dataclasses
import logging

import note_seq
import numpy as np
import pytest

from amt_jax.data import preprocessors
from amt_jax.vocab import note_events
from amt_jax.vocab.layouts import EOS_ID, PAD_ID, VocabularyConfig


def track(*notes, seconds=12.0):
    """notes: (pitch, start, end, velocity)."""
    ns = note_seq.NoteSequence()
    for pitch, start, end, velocity in notes:
        ns.notes.add(pitch=pitch, start_time=start, end_time=end, velocity=velocity)
    ns.total_time = seconds
    return ns


def frames_of(roll_tp, pitch):
    return np.flatnonzero(roll_tp[:, pitch - preprocessors.MIN_PITCH]).tolist()


def test_onsets_frames_labels_follow_magenta_32_ms():
    spec = preprocessors.ONSETS_FRAMES
    ns = track((60, 0.1, 0.5, 50), (64, 0.064, 0.3, 50), (67, 10.0, 10.5, 100))
    example = preprocessors.make_example(np.zeros(16000 * 12), ns, 0, spec)
    # 0.1 s * 31.25 = 3.125: onset frames 3 .. ceil(4.125) -> [3, 4]
    assert frames_of(example["onset_btp"], 60) == [3, 4]
    # frame-aligned onset (0.064 * 31.25 = 2): one frame
    assert frames_of(example["onset_btp"], 64) == [2]
    # offset 0.5 s: 15 .. ceil(16.625) -> [15, 16]; frames 3 .. ceil(15.625) - 1
    assert frames_of(example["offset_btp"], 60) == [15, 16]
    assert frames_of(example["frame_btp"], 60) == list(range(3, 16))
    # velocity written on the onset frames only
    assert frames_of(example["velocity_btp"], 60) == [3, 4]


def test_onsets_frames_velocity_is_relative_to_the_track_maximum():
    # the loudest note (100) lies outside the window: the window's 50 still maps to 0.5
    spec = preprocessors.ONSETS_FRAMES
    ns = track((60, 0.1, 0.5, 50), (67, 10.0, 10.5, 100))
    example = preprocessors.make_example(np.zeros(16000 * 12), ns, 0, spec)
    np.testing.assert_allclose(example["velocity_btp"][[3, 4], 60 - 21], 0.5)
    assert example["velocity_btp"].max() == pytest.approx(0.5)


def test_onset_lengths_come_from_the_family_spec():
    spec = preprocessors.onsets_frames_spec(2.0, onset_length_ms=64.0, offset_length_ms=16.0)
    assert (spec.onset_length_ms, spec.offset_length_ms, spec.num_frames) == (64.0, 16.0, 62)
    ns = track((60, 0.1, 0.5, 50))
    example = preprocessors.make_example(np.zeros(16000 * 12), ns, 0, spec)
    # onset 3 .. ceil(0.164 * 31.25 = 5.125) -> [3, 4, 5]; offset 15 .. ceil(16.125) -> [15, 16]
    assert frames_of(example["onset_btp"], 60) == [3, 4, 5]
    assert frames_of(example["offset_btp"], 60) == [15, 16]


def test_onsets_frames_window_edges():
    spec = preprocessors.ONSETS_FRAMES
    start_sample = 16000  # window [1 s, 1 s + 4.992 s)
    # begun long before: frames, no onset; continues past the end: no offset
    ns = track((60, 0.2, 9.0, 80), (62, 1.5, 2.0, 80))
    example = preprocessors.make_example(np.zeros(16000 * 12), ns, start_sample, spec)
    assert frames_of(example["frame_btp"], 60) == list(range(spec.num_frames))
    assert frames_of(example["onset_btp"], 60) == []
    assert frames_of(example["offset_btp"], 60) == []
    # 1.5 s is 0.5 s into the window: frame int(15.625) = 15, two frames
    assert frames_of(example["onset_btp"], 62) == [15, 16]


def test_nmp_labels_take_the_nearest_centred_frame():
    spec = preprocessors.NMP
    fps = 22050 / 256  # frame k is centred on k * 256 / 22050 s
    # 10.7 and 20.3 frames: nearest 11 and 20 (floor would give 10 and 20)
    ns = track((60, 10.7 / fps, 20.3 / fps, 90), (72, 30.4 / fps, 40.6 / fps, 90))
    example = preprocessors.make_example(np.zeros(22050 * 12), ns, 0, spec)
    assert frames_of(example["onset_btp"], 60) == [11]
    assert frames_of(example["note_btp"], 60) == list(range(11, 21))
    assert frames_of(example["onset_btp"], 72) == [30]
    assert frames_of(example["note_btp"], 72) == list(range(30, 42))  # 40.6 -> 41 inclusive
    contour = example["contour_btf"]
    np.testing.assert_array_equal(contour[:, 3 * (60 - 21)], example["note_btp"][:, 60 - 21])
    assert contour.sum() == example["note_btp"].sum()


def dense_track(num_notes, seconds=2.0):
    """Many short notes of different pitches and programs inside [0, seconds)."""
    ns = note_seq.NoteSequence()
    for i in range(num_notes):
        start = (i * 0.013) % (seconds - 0.1)
        ns.notes.add(
            pitch=30 + i % 60,
            start_time=start,
            end_time=start + 0.03,
            velocity=100,
            program=(i * 7) % 100,
        )
    ns.total_time = seconds
    return ns


def test_long_mt3_targets_are_trimmed_with_eos_last_and_counted(monkeypatch, caplog):
    spec = dataclasses.replace(preprocessors.MT3, target_length=64)
    ns = dense_track(40)
    (full,) = note_events.encode_note_sequence(
        ns,
        VocabularyConfig.named(spec.vocab_layout),
        spec.window_samples / spec.sample_rate,
        start_times=[0.0],
        apply_sustain_pedal=False,
    )
    assert len(full) > 64 and full[-1] == EOS_ID
    monkeypatch.setattr(preprocessors, "TRIM_WARNING_EVERY", 2)
    preprocessors.TRIM_COUNTS.reset()
    with caplog.at_level(logging.WARNING, logger=preprocessors.__name__):
        for k in range(3):
            targets = preprocessors.mt3_targets(ns, 0.0, spec, example_id=f"track_{k}")
            np.testing.assert_array_equal(targets[:63], full[:63])
            assert targets[63] == EOS_ID and np.count_nonzero(targets == EOS_ID) == 1
        short = preprocessors.mt3_targets(track((60, 0.1, 0.5, 90)), 0.0, spec, "short")
    assert short[0] != PAD_ID and not short[np.flatnonzero(short == EOS_ID)[0] + 1 :].any()
    counts = preprocessors.TRIM_COUNTS
    assert (counts.built, counts.trimmed) == (4, 3)
    assert counts.tokens_dropped == 3 * (len(full) - 64)
    assert counts.last_trimmed_id == "track_2"
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2  # trims 1 and 3 with N = 2
    assert warned[0].startswith("track_0:") and warned[1].startswith("track_2:")
    preprocessors.TRIM_COUNTS.reset()


def test_trimmed_mt3_targets_still_decode():
    spec = dataclasses.replace(preprocessors.MT3, target_length=64)
    counter = preprocessors.TrimCounter()
    targets = preprocessors.mt3_targets(dense_track(40), 0.0, spec, "dense", counter=counter)
    assert counter.trimmed == 1 and preprocessors.TRIM_COUNTS.trimmed == 0
    ids = targets[: np.flatnonzero(targets == EOS_ID)[0] + 1]
    decoded, _ = note_events.decode_segments([ids], [0.0], VocabularyConfig.named("mt3"))
    assert 0 < len(decoded.notes) < 40

"""Chunk stores: a crop of a chunk is the crop of the whole track, at a cost that does not
grow with the track, and stores are built once, atomically, with clear errors."""

import os
import time

import note_seq
import numpy as np
import pytest

from amt_jax.data import chunks, preprocessors, tasks


@pytest.fixture(scope="module")
def task_names(tiny_synthetic):
    _, data_dir = tiny_synthetic
    return tasks.register_synthetic_tasks("tiny", data_dir)


@pytest.mark.parametrize("family", ["mt3_mt3", "onsets_frames", "nmp"])
def test_chunk_crops_equal_whole_track_crops(task_names, family):
    """Random crops and crops straddling chunk boundaries: the same audio and targets as
    `make_example` on the whole track (NMP's audio, resampled to 22.05 kHz before it is
    stored as int16, within half an int16 step)."""
    spec = tasks.get_task(f"synthetic_tiny_{family}_train")
    window = spec.family.window_samples
    rng = np.random.default_rng(0)
    compared = 0
    for track in tasks.iter_tracks(spec):
        notes = chunks.track_notes(track.sequence)
        records = chunks.split_track(
            track.id, track.audio, notes, spec.family.sample_rate, chunk_seconds=3.0
        )
        for chunk in map(chunks.decode_chunk, records):
            starts = [chunks.random_start(rng, chunk, window) for _ in range(3)]
            starts += [0, chunk.span - 1]  # the last start runs into the next chunk
            for start in starts:
                got = chunks.crop_example(chunk, start, spec.family)
                want = preprocessors.make_example(
                    track.audio, track.sequence, chunk.start_sample + start, spec.family
                )
                assert got.keys() == want.keys()
                for key in want:
                    if family == "nmp" and key == "audio_bs":
                        np.testing.assert_allclose(got[key], want[key], atol=2**-16)
                    else:
                        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
                compared += 1
    assert compared > 50


def test_overlap_trim_is_computed_over_the_whole_track():
    """A long note cut short by a later onset of the same pitch far before the crop must
    stay cut in a chunk that holds only the long note (MT3 trims before splitting)."""
    ns = note_seq.NoteSequence()
    ns.notes.add(start_time=0.0, end_time=30.0, pitch=60, velocity=90, program=0)
    ns.notes.add(start_time=5.0, end_time=6.0, pitch=60, velocity=90, program=0)
    ns.notes.add(start_time=5.0, end_time=5.5, pitch=62, velocity=90, program=0)
    ns.notes.add(start_time=5.0, end_time=9.0, pitch=62, velocity=90, program=0)  # same onset
    audio = np.zeros(16000 * 30, np.float32)
    notes = chunks.track_notes(ns)
    np.testing.assert_array_equal(notes["trimmed_end"][:2], [5.0, 6.0])
    assert np.isnan(notes["trimmed_end"][2]) and notes["trimmed_end"][3] == 9.0
    family = preprocessors.MT3
    records = list(chunks.split_track("t", audio, notes, 16000, chunk_seconds=10.0))
    third = chunks.decode_chunk(records[2])  # 20-30 s: only the long note overlaps it
    assert len(third.notes) == 1
    got = chunks.crop_example(third, 0, family)["targets_bl"]
    want = preprocessors.make_example(audio, ns, third.start_sample, family)["targets_bl"]
    np.testing.assert_array_equal(got, want)
    # Only the end-of-ties marker and EOS: nothing sounds at 20 s after the trim.
    assert np.count_nonzero(got) == 2 and got[1] == 1


def _dense_track(num_notes: int, notes_per_second: float = 10.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    seconds = num_notes / notes_per_second
    ns = note_seq.NoteSequence()
    for onset in np.sort(rng.uniform(0, seconds - 0.5, num_notes)):
        ns.notes.add(
            start_time=float(onset),
            end_time=float(onset + rng.uniform(0.05, 0.5)),
            pitch=int(rng.integers(21, 109)),
            velocity=int(rng.integers(30, 127)),
            program=int(rng.choice([0, 24, 33, 40])),
        )
    audio = np.zeros(int(seconds * 16000), np.float32)
    return audio, ns


def test_crop_cost_does_not_grow_with_the_track():
    """100-note and 20k-note tracks of the same density: a crop encodes the same number of
    notes, and costs the same within 2x (best of several rounds, same run)."""
    family = preprocessors.MT3
    chunk_lists = []
    for num_notes in (100, 20_000):
        audio, ns = _dense_track(num_notes)
        records = chunks.split_track("t", audio, chunks.track_notes(ns), 16000)
        chunk_lists.append([chunks.decode_chunk(r) for r in records])
    short, long = chunk_lists
    assert len(long) > 100 * len(short) // 2  # the long track really is long
    rng = np.random.default_rng(1)

    def notes_encoded(chunk_list):
        chunk = chunk_list[int(rng.integers(len(chunk_list)))]
        start = chunks.random_start(rng, chunk, family.window_samples)
        seconds = (chunk.start_sample + start) / 16000
        return len(chunks.notes_near(chunk, seconds, 2.048, trimmed=True).notes)

    short_notes = np.mean([notes_encoded(short) for _ in range(200)])
    long_notes = np.mean([notes_encoded(long) for _ in range(200)])
    assert long_notes < 2 * short_notes

    def seconds_per_crop(chunk_list, n=60):
        begin = time.perf_counter()
        for i in range(n):
            chunk = chunk_list[(i * 7) % len(chunk_list)]
            chunks.crop_example(chunk, chunks.random_start(rng, chunk, 32768), family)
        return (time.perf_counter() - begin) / n

    ratios = []
    for _ in range(5):
        ratios.append(seconds_per_crop(long) / seconds_per_crop(short))
    assert min(ratios) < 2.0, ratios


def test_store_is_built_once_and_read_by_index(task_names, tmp_path):
    spec = tasks.get_task("synthetic_tiny_onsets_frames_validation")
    source = tasks.chunk_source(spec)
    meta = source.meta
    assert meta.num_tracks == len(tasks.track_source(spec)) and len(source) == meta.num_chunks
    mtime = os.path.getmtime(os.path.join(source.directory, chunks.META_FILE))
    again = tasks.chunk_source(spec)  # found, not rebuilt
    assert os.path.getmtime(os.path.join(again.directory, chunks.META_FILE)) == mtime
    hours = sum(len(t.audio) for t in tasks.iter_tracks(spec)) / 16000 / 3600
    assert meta.hours == pytest.approx(hours)
    first = chunks.decode_chunk(source[0])
    assert first.sample_rate == 16000 and first.num_chunks >= 1
    assert not [n for n in os.listdir(os.path.dirname(source.directory)) if n.startswith(".")]

    missing = tasks.TaskSpec("x", spec.tfds_name, spec.split, spec.family, chunk_dir=str(tmp_path))
    with pytest.raises(chunks.ChunkStoreError, match="no chunk store in"):
        tasks.chunk_source(missing)


def test_a_failed_build_leaves_nothing_behind(tmp_path):
    ns = note_seq.NoteSequence()
    ns.notes.add(start_time=1.0, end_time=0.5, pitch=60, velocity=80)  # ends before it starts
    track = tasks.Track("bad-track", np.zeros(16000, np.float32), ns)
    with pytest.raises(ValueError, match="track bad-track: note 0 .*end time"):
        chunks.write_store(str(tmp_path / "store"), [track], 16000)
    assert os.listdir(tmp_path) == []

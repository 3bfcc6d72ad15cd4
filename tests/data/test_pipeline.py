"""Tasks, mixtures and the host pipeline on the tiny synthetic dataset."""

import os

import numpy as np
import pytest

from amt_jax.data import chunks, mixtures, pipeline, preprocessors, tasks
from amt_jax.vocab import note_events
from amt_jax.vocab.layouts import VocabularyConfig


@pytest.fixture(scope="module")
def task_names(tiny_synthetic):
    _, data_dir = tiny_synthetic
    return tasks.register_synthetic_tasks("tiny", data_dir)


def _numbered_task(name: str, number: int, directory) -> None:
    """A task of one 1 s track whose every sample is (number + 1) / 32768, so each crop
    says which task it came from."""
    import dataclasses

    import note_seq

    ns = note_seq.NoteSequence()
    ns.notes.add(start_time=0.1, end_time=0.5, pitch=60, velocity=80)
    audio = np.full(16000, (number + 1) / 32768, np.float32)
    chunks.write_store(str(directory), [tasks.Track(f"t{number}", audio, ns)], 16000)
    family = dataclasses.replace(preprocessors.ONSETS_FRAMES, window_samples=512, num_frames=1)
    spec = tasks.TaskSpec(name, "none/none", "train", family, chunk_dir=str(directory))
    tasks.register_task(spec, with_seqio=False)


def test_mixture_shares_follow_n_pow_tau(tmp_path):
    hours = [968.5, 542.6, 198.7, 34.0, 3.0, 1.3]  # MT3's six datasets
    names = [f"numbered_{i}" for i in range(6)]
    for i, name in enumerate(names):
        _numbered_task(name, i, tmp_path / name)
    mixture = mixtures.register_mixture("fake_mix", names, 0.3, sizes=hours, with_seqio=False)
    expected = np.array(hours) ** 0.3 / np.sum(np.array(hours) ** 0.3)
    np.testing.assert_allclose(mixture.rates, expected, rtol=1e-12)
    assert mixture.rates[0] == pytest.approx(0.318, abs=0.001)  # reference table: 31.8 %
    # The trainer's own iterator: which task every example of 60 batches came from.
    iterator = pipeline.TrainIterator("fake_mix", 100, seed=1)
    audio = np.concatenate([iterator.batch_at(step)["audio_bs"] for step in range(60)])
    counts = np.bincount(np.rint(audio[:, 0] * 32768).astype(int) - 1, minlength=6)
    assert counts.sum() == 6000
    np.testing.assert_allclose(counts / counts.sum(), expected, rtol=0.01)


def test_mixture_from_the_seqio_registry(task_names):
    import seqio

    names = ["synthetic_tiny_nmp_train", "synthetic_tiny_nmp_validation"]
    if "user_nmp_mix" in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove("user_nmp_mix")
    seqio.MixtureRegistry.add("user_nmp_mix", [(names[0], 3.0), (names[1], 1.0)])
    spec = mixtures.get_mixture("user_nmp_mix")
    assert spec.task_names == tuple(names) and spec.rates == (0.75, 0.25)
    batch = pipeline.TrainIterator("user_nmp_mix", 2).batch_at(0)
    assert batch["audio_bs"].shape == (2, 43844)


def test_seqio_mixture_rates(task_names):
    import seqio

    names = ["synthetic_tiny_nmp_train", "synthetic_tiny_nmp_validation"]
    spec = mixtures.register_mixture("tiny_nmp_mix", names, 0.3)
    registered = seqio.get_mixture_or_task("tiny_nmp_mix")
    rates = [registered.get_rate(seqio.get_mixture_or_task(n)) for n in names]
    np.testing.assert_allclose(rates, spec.rates)
    sizes = [tasks.num_examples(tasks.get_task(n)) for n in names]
    np.testing.assert_allclose(spec.rates, mixtures.mixture_rates(sizes, 0.3))


def test_batches_resume_and_shard_deterministically(task_names):
    name = "synthetic_tiny_onsets_frames_train"
    full = pipeline.TrainIterator(name, 4, seed=7)
    batches = [next(full) for _ in range(3)]
    assert full.state()["step"] == 3
    resumed = pipeline.TrainIterator(name, 4, seed=7)
    resumed.restore(full.state() | {"step": 2})
    np.testing.assert_array_equal(next(resumed)["audio_bs"], batches[2]["audio_bs"])
    # Two hosts: each reads its own rows, and together they make the one-host batch.
    halves = [
        pipeline.TrainIterator(name, 4, seed=7, shard_index=k, num_shards=2).batch_at(1)
        for k in range(2)
    ]
    for key in batches[1]:
        np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), batches[1][key])
    other_seed = pipeline.TrainIterator(name, 4, seed=8).batch_at(0)
    assert not np.array_equal(other_seed["audio_bs"], batches[0]["audio_bs"])
    with pytest.raises(ValueError, match="global_batch_size=4"):
        pipeline.TrainIterator(name, 8, seed=7).restore(full.state())


def test_worker_processes_give_the_same_batches(task_names):
    name = "synthetic_tiny_mt3_mt3_train"
    inline = pipeline.TrainIterator(name, 2, seed=3, step=1)
    workers = pipeline.TrainIterator(name, 2, seed=3, step=1, num_workers=2)
    try:
        for _ in range(3):
            a, b = next(inline), next(workers)
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])
    finally:
        workers.close()
    assert workers.state()["step"] == 4


def test_each_epoch_visits_every_chunk_in_a_new_order(task_names):
    spec = tasks.get_task("synthetic_tiny_mt3_mt3_train")
    source = tasks.chunk_source(spec)
    n = len(source)
    records = pipeline.task_records(source, seed=5)
    ids = [
        (chunk.track_id, chunk.index)
        for chunk in (chunks.decode_chunk(records[k]) for k in range(2 * n))
    ]
    assert len(set(ids[:n])) == n and set(ids[:n]) == set(ids[n:])
    assert ids[:n] != ids[n:]


@pytest.mark.parametrize(
    "family, shapes",
    [
        ("mt3_mt3", {"audio_bs": (2, 32768), "targets_bl": (2, 1024)}),
        (
            "onsets_frames",
            {
                "audio_bs": (2, 79872),
                "onset_btp": (2, 156, 88),
                "offset_btp": (2, 156, 88),
                "frame_btp": (2, 156, 88),
                "velocity_btp": (2, 156, 88),
            },
        ),
        (
            "nmp",
            {
                "audio_bs": (2, 43844),
                "contour_btf": (2, 172, 264),
                "note_btp": (2, 172, 88),
                "onset_btp": (2, 172, 88),
            },
        ),
    ],
)
def test_batch_shapes_per_family(task_names, family, shapes):
    batch = pipeline.TrainIterator(f"synthetic_tiny_{family}_train", 2).batch_at(0)
    assert {k: v.shape for k, v in batch.items()} == shapes
    assert batch["audio_bs"].dtype == np.float32
    assert np.abs(batch["audio_bs"]).max() <= 1.0


def test_mt3_targets_decode_to_the_window_notes(task_names):
    spec = tasks.get_task("synthetic_tiny_mt3_mt3_validation")
    track = tasks.load_tracks(spec)[0]
    start = 16000  # 1 s in
    example = preprocessors.make_example(track.audio, track.sequence, start, spec.family)
    tokens = example["targets_bl"]
    assert tokens[0] != 0 and np.count_nonzero(tokens == 1) == 1  # EOS once
    ids = tokens[: int(np.flatnonzero(tokens == 1)[0]) + 1]
    decoded, _ = note_events.decode_segments([ids], [1.0], VocabularyConfig.named("mt3"))
    expected = sorted(
        (round(n.start_time, 2), n.pitch, n.program if not n.is_drum else -1)
        for n in track.sequence.notes
        if 1.0 <= n.start_time < 1.0 + 2.048 - 0.01
    )
    got = sorted(
        (round(n.start_time, 2), n.pitch, n.program if not n.is_drum else -1)
        for n in decoded.notes
        if n.start_time >= 1.0
    )
    assert len(got) == len(expected)
    for (t_got, *rest_got), (t_exp, *rest_exp) in zip(got, expected):
        assert rest_got == rest_exp and abs(t_got - t_exp) <= 0.011


def test_nmp_rolls_mark_onsets_at_the_nearest_frame_of_the_window(task_names):
    spec = tasks.get_task("synthetic_tiny_nmp_validation")
    track = tasks.load_tracks(spec)[0]
    family = spec.family
    start_sample = 30000
    example = preprocessors.make_example(track.audio, track.sequence, start_sample, family)
    t0 = start_sample / family.sample_rate

    def nearest(t):  # window frame k is centred on t0 + k * 256 / 22050
        return int(np.floor((t - t0) * family.frames_per_second + 0.5))

    onsets = np.zeros((family.num_frames, 88))
    sounding = set()
    for n in track.sequence.notes:
        if n.is_drum or not 21 <= n.pitch <= 108:
            continue
        if 0 <= nearest(n.start_time) < family.num_frames:
            onsets[nearest(n.start_time), n.pitch - 21] = 1
        if nearest(n.start_time) < family.num_frames and nearest(n.end_time) >= 0:
            sounding.add(n.pitch)
    assert onsets.sum() > 0
    np.testing.assert_array_equal(example["onset_btp"], onsets)
    np.testing.assert_array_equal(example["contour_btf"][:, 0::3], example["note_btp"])
    assert example["contour_btf"][:, 1::3].sum() == 0
    assert set(np.flatnonzero(example["note_btp"].any(0)) + 21) == sounding


def test_eval_segments_cover_each_track(task_names):
    name = "synthetic_tiny_onsets_frames_test"
    segments = list(pipeline.eval_segments(name))
    for track in tasks.load_tracks(tasks.get_task(name)):
        own = [s for s in segments if s["id"] == track.id]
        assert [s["segment"] for s in own] == list(range(len(own)))
        audio = np.concatenate([s["audio_bs"] for s in own])
        np.testing.assert_array_equal(audio[: len(track.audio)], track.audio)
        assert not audio[len(track.audio) :].any()
    batches = list(pipeline.eval_batches(name, 3))
    assert sum(len(b["id"]) for b in batches) == len(segments)


def test_seqio_task_yields_model_features(task_names):
    import seqio

    task = seqio.get_mixture_or_task("synthetic_tiny_nmp_train")
    example = next(
        iter(
            task.get_dataset(
                sequence_length=None, split="train", shuffle=False, num_epochs=1
            ).as_numpy_iterator()
        )
    )
    assert example["audio_bs"].shape == (43844,)
    assert example["contour_btf"].shape == (172, 264)


def test_dump_task_prints_events_and_rolls(task_names, tiny_synthetic, capsys):
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "dump_task.py")
    spec = importlib.util.spec_from_file_location("dump_task", path)
    dump_task = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dump_task)
    _, data_dir = tiny_synthetic
    dump_task.main(["synthetic_tiny_mt3_mt3_validation", "--data_dir", data_dir, "-n", "1"])
    dump_task.main(["synthetic_tiny_nmp_validation", "--data_dir", data_dir, "-n", "1"])
    out = capsys.readouterr().out
    assert "tokens: " in out and "EOS" in out and "pitch:" in out and "shift:" in out
    assert "contour_btf: (172, 264)" in out and "onset_btp: (172, 88)" in out

"""The tiny synthetic tfds dataset: splits, held-out soundfont family, labels vs audio."""

import librosa
import numpy as np
import pytest

from amt_jax.data.builders import common
from amt_jax.data.synth import pieces, soundfonts


def _examples(builder, split):
    source = builder.as_data_source(split=split)
    return [source[i] for i in range(len(source))]


def test_tiny_builds_with_all_splits(tiny_synthetic):
    builder, _ = tiny_synthetic
    splits = builder.info.splits
    assert set(splits.keys()) == {"train", "validation", "test", "test_unseen_soundfont"}
    assert splits["train"].num_examples >= 6
    assert splits["test_unseen_soundfont"].num_examples == splits["test"].num_examples
    example = _examples(builder, "validation")[0]
    assert example["audio"].dtype == np.int16 and example["audio"].ndim == 1
    assert example["sample_rate"] == 16000
    sequence = common.decode_sequence(example["sequence"])
    assert sequence.notes and sequence.id == example["id"].decode()
    programs = {(n.program, n.is_drum) for n in sequence.notes}
    tracks = {
        (int(p), bool(d))
        for p, d in zip(example["tracks"]["program"], example["tracks"]["is_drum"])
    }
    assert programs == tracks
    assert not any(96 <= p < 128 for p, drum in programs if not drum)


def test_splits_disjoint_by_piece_and_unseen_family_held_out(tiny_synthetic):
    builder, _ = tiny_synthetic
    pieces_of, families_of = {}, {}
    for split in builder.info.splits.keys():
        examples = _examples(builder, split)
        pieces_of[split] = {e["piece"].decode() for e in examples}
        families_of[split] = {e["soundfont_family"].decode() for e in examples}
        for e in examples:
            assert soundfonts.family_of(e["soundfont"].decode()) == e["soundfont_family"].decode()
    seen = ("train", "validation", "test")
    for a in seen:
        for b in seen:
            if a < b:
                assert not pieces_of[a] & pieces_of[b], (a, b)
    assert pieces_of["test_unseen_soundfont"] == pieces_of["test"]
    assert families_of["test_unseen_soundfont"] == {"timgm6mb"}
    training_families = set().union(*(families_of[s] for s in seen))
    assert "timgm6mb" not in training_families
    sources = {e["source"].decode() for s in seen for e in _examples(builder, s)}
    assert sources == {"generated", "piano", "mma", "music21"}


def test_labels_line_up_with_audio(tiny_synthetic):
    """Spectral flux is higher at the labelled onsets than at the same onsets moved by
    20-100 ms (so a constant label/audio offset would fail); the audio is silent before the
    first label and lasts past the last offset."""
    builder, _ = tiny_synthetic
    sr, hop = 16000, 128
    ratios = []
    for example in _examples(builder, "train"):
        audio = example["audio"].astype(np.float32) / 32768.0
        assert int(example["sample_rate"]) == sr
        sequence = common.decode_sequence(example["sequence"])
        first = int(min(n.start_time for n in sequence.notes) * sr)
        if first > 0:
            assert np.abs(audio[:first]).max() < 1e-3
        assert len(audio) / sr >= sequence.total_time
        if example["source"].decode() not in ("generated", "piano"):
            continue  # sustained voices (organ, strings) have no sharp attacks to check
        flux = librosa.onset.onset_strength(y=audio, sr=sr, hop_length=hop, n_fft=512)

        def score(shift, seq=sequence, flux=flux):
            frames = {int(round((n.start_time + shift) * sr / hop)) for n in seq.notes}
            return np.mean([flux[k - 1 : k + 3].max() for k in frames if 1 <= k < len(flux) - 3])

        ratios.append(score(0.0) / max(score(s) for s in (-0.1, -0.05, -0.02, 0.05, 0.1)))
    assert ratios and np.mean(ratios) > 1.3, ratios


def test_splits_by_group_keep_groups_together():
    specs = [
        pieces.PieceSpec("music21", f"bach/bwv{g}.{m}", f"bach/bwv{g}", 10.0)
        for g in range(12)
        for m in range(3)
    ]
    split = pieces.split_by_group(specs, {"train": 0.8, "validation": 0.1, "test": 0.1}, seed=3)
    groups = {name: {p.group for p in members} for name, members in split.items()}
    assert all(groups[n] for n in groups)
    assert not groups["train"] & groups["test"] and not groups["validation"] & groups["test"]
    assert sum(len(m) for m in split.values()) == len(specs)


def test_failed_piece_is_reported_not_dropped_silently(caplog):
    bad = pieces.PieceSpec(
        "music21", "bach/nonexistent", "bach/nonexistent", 5.0, "/nonexistent/bwv0.mxl"
    )
    job = pieces.RenderJob(bad, "TimGM6mb", seed=0, sample_rate=16000)
    result = pieces.render_job(job)
    assert "error" in result and result["name"] == bad.name
    counter = common.SkipCounter("amt_synthetic", "train")
    with caplog.at_level("WARNING"):
        counter.skip(result["name"], result["error"])
        counter.summary(n_written=0)
    assert "music21_bach_nonexistent" in caplog.text and "skipped 1" in caplog.text


@pytest.mark.parametrize("source", ["generated", "mma"])
def test_generators_are_seeded(source):
    spec = pieces.PieceSpec(source, "7", f"{source}/7", 8.0)
    a, _ = pieces.make_sequence(spec, seed=1)
    b, _ = pieces.make_sequence(spec, seed=1)
    c, _ = pieces.make_sequence(spec, seed=2)
    assert a == b and a != c

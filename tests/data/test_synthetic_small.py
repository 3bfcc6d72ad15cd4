"""The `small` synthetic config: piece counts per split and the held-out soundfont family,
checked from the render plan (`AmtSynthetic.split_jobs`) without rendering anything."""

import pytest

from amt_jax.data.builders.synthetic import AmtSynthetic
from amt_jax.data.builders.synthetic.synthetic_dataset_builder import UNSEEN_SPLIT
from amt_jax.data.synth import soundfonts

# Piece counts of the small config (seed 0, music21 10.5.1 corpus), as documented in
# docs/datasets.md; a change to the config or the splitter shows up here.
EXPECTED_PIECES = {"train": 364, "validation": 43, "test": 53, UNSEEN_SPLIT: 53}


@pytest.fixture(scope="module")
def small_jobs(tmp_path_factory):
    builder = AmtSynthetic(config="small", data_dir=str(tmp_path_factory.mktemp("tfds")))
    return builder.builder_config, builder.split_jobs()


def test_small_lists_expected_pieces_per_split(small_jobs):
    config, jobs = small_jobs
    assert {split: len(members) for split, members in jobs.items()} == EXPECTED_PIECES
    requested = config.n_generated + config.n_piano + config.n_mma + config.max_music21_works
    assert sum(len(jobs[s]) for s in ("train", "validation", "test")) == requested
    for split in ("validation", "test"):
        assert len(jobs[split]) >= 10
        assert {j.spec.source for j in jobs[split]} == {"generated", "piano", "mma", "music21"}
    lengths = [j.spec.target_seconds for members in jobs.values() for j in members]
    assert 20.0 <= min(lengths) and max(lengths) <= 40.0


def test_small_splits_disjoint_and_unseen_family_held_out(small_jobs):
    _, jobs = small_jobs
    groups = {split: {j.spec.group for j in members} for split, members in jobs.items()}
    assert not groups["train"] & groups["validation"]
    assert not groups["train"] & groups["test"]
    assert not groups["validation"] & groups["test"]
    names = [j.spec.name for members in jobs.values() for j in members]
    assert len(set(names)) == len(names) - len(jobs[UNSEEN_SPLIT])  # only test is repeated
    assert [j.spec for j in jobs[UNSEEN_SPLIT]] == [j.spec for j in jobs["test"]]
    families = {
        split: {soundfonts.family_of(j.soundfont) for j in members}
        for split, members in jobs.items()
    }
    seen_families = families["train"] | families["validation"] | families["test"]
    assert seen_families == {"fluidr3"}
    assert families[UNSEEN_SPLIT] == {"timgm6mb"}
    # Both installed members of the held-out family are used, so neither leaks into training.
    unseen_fonts = {j.soundfont for j in jobs[UNSEEN_SPLIT]}
    assert unseen_fonts == set(soundfonts.available_in_family("timgm6mb"))
    assert not unseen_fonts & {j.soundfont for j in jobs["train"]}

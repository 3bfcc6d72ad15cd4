"""tfds builder of the synthetic multi-instrument dataset rendered with GM soundfonts.

Splits: train / validation / test are disjoint by piece group and rendered with the
training soundfont family; `test_unseen_soundfont` holds the *test* pieces rendered only
with a family the other splits never use (default: TimGM6mb + sf_GMbank, held out against
FluidR3 + MuseScore). Nothing is downloaded: MIDI is generated (own generator, Debian
`mma` grooves) or taken from the music21 corpus, and rendered with pyfluidsynth.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from amt_jax.data.builders import beam_build, common
from amt_jax.data.synth import pieces, soundfonts

UNSEEN_SPLIT = "test_unseen_soundfont"
EXTRA_FIELDS = ("source", "piece", "origin", "soundfont", "soundfont_family")


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
    seed: int = 0
    sample_rate: int = 16000
    n_generated: int = 0
    n_piano: int = 0
    n_mma: int = 0
    music21_composers: tuple[str, ...] = ()
    max_music21_works: int = 0
    seconds_range: tuple[float, float] = (20.0, 60.0)
    split_fractions: tuple[tuple[str, float], ...] = (
        ("train", 0.8),
        ("validation", 0.1),
        ("test", 0.1),
    )
    train_families: tuple[str, ...] = ("fluidr3",)
    unseen_family: str = "timgm6mb"
    num_workers: int = 1  # render processes; $AMT_JAX_RENDER_WORKERS overrides


TINY = SyntheticConfig(
    name="tiny",
    description="~2 min of audio in 14 pieces; builds in < 1 minute (tests, quickstart).",
    n_generated=6,
    n_piano=2,
    n_mma=3,
    music21_composers=("bach",),
    max_music21_works=3,
    seconds_range=(6.0, 10.0),
    split_fractions=(("train", 0.6), ("validation", 0.2), ("test", 0.2)),
)

DEFAULT = SyntheticConfig(
    name="default",
    description="~13 h (~10.6 h train) of generated, MMA and music21 pieces.",
    n_generated=400,
    n_piano=120,
    n_mma=240,
    music21_composers=("bach", "monteverdi"),
    max_music21_works=370,
    seconds_range=(30.0, 60.0),
    num_workers=2,
)


SMALL = SyntheticConfig(
    name="small",
    description=(
        "~4.3 h of audio in 460 pieces of 20-40 s (3.1 h train, 0.36 h validation, 0.44 h "
        "test + the same test pieces with the unseen soundfont family); built in 5.5 min "
        "on 2 cores under load."
    ),
    n_generated=150,
    n_piano=50,
    n_mma=100,
    music21_composers=("bach", "monteverdi"),
    max_music21_works=160,
    seconds_range=(20.0, 40.0),
    num_workers=2,
)


def _example(result: dict) -> tuple[str, dict]:
    """(key, example) of a successful `pieces.render_job` result (both build paths)."""
    return result["id"], common.make_example(
        result["id"],
        np.asarray(result["audio"], np.int16),
        result["sample_rate"],
        result["sequence"],
        result["tracks"],
        **{k: result[k] for k in EXTRA_FIELDS},
    )


def _job_examples(job: pieces.RenderJob, dataset: str, split: str) -> list[tuple[str, dict]]:
    """The Beam path's per-job step: render on the worker, nothing for a failed piece."""
    result = pieces.render_job(job)
    if "error" in result:
        beam_build.count_skip(dataset, split, result["name"], result["error"])
        return []
    return [_example(result)]


class AmtSynthetic(beam_build.BeamWhenAsked, common.RandomAccessBuilder):
    """Slakh-like multi-instrument audio rendered offline from generated and corpus MIDI.

    Renders with `num_workers` processes, or on Apache Beam when `download_and_prepare`
    gets a DownloadConfig with `beam_runner` / `beam_options` (see `beam_build`); every
    piece gets a fresh synth, so both give the same examples for any worker count.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [TINY, SMALL, DEFAULT]
    DEFAULT_CONFIG_NAME = "tiny"

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=common.features(EXTRA_FIELDS),
            supervised_keys=None,
        )

    def _soundfonts(self) -> tuple[list[str], list[str]]:
        config = self.builder_config
        if config.unseen_family in config.train_families:
            raise ValueError("the unseen soundfont family must not be a training family")
        train = [sf for fam in config.train_families for sf in soundfonts.available_in_family(fam)]
        unseen = soundfonts.available_in_family(config.unseen_family)
        if not train:
            soundfonts.resolve(soundfonts.FAMILIES[config.train_families[0]][0])  # raises
        if not unseen:
            soundfonts.resolve(soundfonts.FAMILIES[config.unseen_family][0])  # raises
        return train, unseen

    def split_jobs(self) -> dict[str, list[pieces.RenderJob]]:
        """What each split will render (piece + soundfont), without rendering anything."""
        config = self.builder_config
        train_fonts, unseen_fonts = self._soundfonts()
        all_pieces = pieces.list_pieces(
            config.seed,
            config.n_generated,
            config.n_piano,
            config.n_mma,
            config.music21_composers,
            config.max_music21_works,
            config.seconds_range,
        )
        by_split = pieces.split_by_group(all_pieces, dict(config.split_fractions), config.seed)
        jobs = {
            split: self._jobs(members, train_fonts, split) for split, members in by_split.items()
        }
        jobs[UNSEEN_SPLIT] = self._jobs(by_split["test"], unseen_fonts, UNSEEN_SPLIT)
        for split, split_jobs in jobs.items():  # tfds would only fail after rendering it all
            names = [job.spec.name for job in split_jobs]
            if len(set(names)) != len(names):
                repeated = sorted({n for n in names if names.count(n) > 1})
                raise ValueError(f"split {split} lists pieces twice: {repeated}")
        return jobs

    def _split_generators(self, dl_manager):
        del dl_manager  # everything is generated locally
        return {
            split: self._generate_examples(split, split_jobs)
            for split, split_jobs in self.split_jobs().items()
        }

    def _jobs(self, split_pieces, fonts, split):
        config = self.builder_config
        jobs = []
        for spec in split_pieces:
            choice = pieces.stable_seed(config.seed, spec.name, split, "soundfont") % len(fonts)
            jobs.append(pieces.RenderJob(spec, fonts[choice], config.seed, config.sample_rate))
        return jobs

    def _generate_examples(self, split, jobs):
        if self.use_beam:
            return beam_build.examples_transform(jobs, _job_examples, self.name, split, split=split)
        return self._render_locally(split, jobs)

    def _render_locally(self, split, jobs):
        skipped = common.SkipCounter(self.name, split)
        written = 0
        workers = int(os.environ.get("AMT_JAX_RENDER_WORKERS", self.builder_config.num_workers))
        # tfds's bars only count examples already written; the rendering happens here.
        audio_seconds = 0.0
        with tqdm.tqdm(
            total=len(jobs),
            desc=f"render {split}",
            unit="piece",
            mininterval=1.0 if sys.stderr.isatty() else 30.0,
        ) as progress:
            for result in pieces.render_jobs(jobs, workers):
                if "error" in result:
                    skipped.skip(result["name"], result["error"])
                    progress.update(1)
                    continue
                written += 1
                audio_seconds += len(result["audio"]) / result["sample_rate"]
                speed = audio_seconds / max(progress.format_dict["elapsed"], 1e-6)
                progress.set_postfix_str(
                    f"audio {audio_seconds:.0f} s, {speed:.0f}x real time", refresh=False
                )
                progress.update(1)
                yield _example(result)
        skipped.summary(written)

"""Cerberus4: every combination of exactly one piano, guitar, bass and drums stem of a
Slakh2100 track, mixed from the stems (as MT3's `cerberus4`). Programs follow MT3's
per-instrument track specs: piano 0, guitar 24, bass 32, drums."""

from __future__ import annotations

import itertools
import os

import tensorflow_datasets as tfds

from amt_jax.data.builders import beam_build, common
from amt_jax.data.builders.slakh import slakh_dataset_builder as slakh

ROLES = {"Piano": 0, "Guitar": 24, "Bass": 32, "Drums": None}


class Cerberus4(beam_build.BeamWhenAsked, common.RandomAccessBuilder):
    """Four-instrument (piano, guitar, bass, drums) sub-mixes of Slakh2100 redux."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = slakh.INSTRUCTIONS + "\nThe stems (stems/Sxx.flac) are needed."
    MAX_COMBINATIONS_PER_TRACK = 64

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, description=__doc__, features=common.features(("stems",))
        )

    def _split_generators(self, dl_manager):
        manual_dir = common.check_manual_dir(
            dl_manager.manual_dir, "slakh2100_flac_redux", slakh.INSTRUCTIONS
        )
        return {
            s: self._generate_examples(manual_dir, s)
            for s in slakh.SPLITS
            if slakh.track_dirs(manual_dir, s)
        }

    def _generate_examples(self, manual_dir, split):
        dirs = slakh.track_dirs(manual_dir, split)
        return beam_build.per_item(
            self, split, dirs, track_examples, self.MAX_COMBINATIONS_PER_TRACK
        )


def track_examples(track_dir: str, skips: common.SkipCounter, max_combinations: int):
    """One example per (piano, guitar, bass, drums) stem combination of one track."""
    import yaml  # noqa: PLC0415

    track_id = os.path.basename(track_dir)
    try:
        with open(os.path.join(track_dir, "metadata.yaml"), encoding="utf-8") as f:
            stems = (yaml.safe_load(f) or {}).get("stems") or {}
    except (FileNotFoundError, yaml.YAMLError) as e:
        skips.skip(track_id, f"metadata: {e}")
        return
    by_role = {role: [] for role in ROLES}
    for stem_id, stem in sorted(stems.items()):
        role = "Drums" if stem.get("is_drum") else stem.get("inst_class")
        if role in by_role and stem.get("audio_rendered", True):
            by_role[role].append(stem_id)
    for combo in list(itertools.product(*by_role.values()))[:max_combinations]:
        example_id = f"{track_id}_{'_'.join(combo)}"
        loaded = slakh.read_track(track_dir, example_id, skips, stem_ids=set(combo))
        if loaded is None:
            continue
        sequence, tracks, _ = loaded
        for note in sequence.notes:
            if not note.is_drum:
                role = sequence.instrument_infos[
                    [i.instrument for i in sequence.instrument_infos].index(note.instrument)
                ].name
                note.program = ROLES.get(role) or 0
        tracks = [
            dict(t, program=0 if t["is_drum"] else ROLES.get(t["name"].split(":")[1]) or 0)
            for t in tracks
        ]
        try:
            audio = slakh.mix_stems(track_dir, combo)
        except (OSError, ValueError) as e:
            skips.skip(example_id, f"stems: {e}")
            continue
        example = common.load_example(
            example_id,
            track_dir,
            sequence,
            tracks,
            skips,
            audio=audio,
            stems=",".join(combo),
        )
        if example is not None:
            yield example_id, example

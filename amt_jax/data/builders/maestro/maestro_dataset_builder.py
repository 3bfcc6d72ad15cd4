"""MAESTRO v3 piano performances from their own on-disk layout (official splits)."""

from __future__ import annotations

import csv
import json
import os

import tensorflow_datasets as tfds

from amt_jax.data.builders import beam_build, common

INSTRUCTIONS = """
Download MAESTRO v3.0.0 (https://magenta.tensorflow.org/datasets/maestro, the .zip with
WAV audio and MIDI) and unzip it; pass the `maestro-v3.0.0/` folder as manual_dir. It must
contain `maestro-v3.0.0.json` (or `.csv`; any `maestro-v*.json` works) and the year folders
(`2004/ ... 2018/`) with the `.wav` and `.midi` files the metadata names.
"""


def read_metadata(manual_dir: str) -> list[dict]:
    """Rows of the MAESTRO metadata, whichever of its formats is present.

    v3's JSON is column-oriented ({"split": {"0": "train", ...}, ...}); v1/v2's JSON is a
    list of records; the CSV has one row per performance.
    """
    names = sorted(os.listdir(manual_dir))
    json_files = [n for n in names if n.startswith("maestro-v") and n.endswith(".json")]
    csv_files = [n for n in names if n.startswith("maestro-v") and n.endswith(".csv")]
    if json_files:
        path = os.path.join(manual_dir, json_files[-1])
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if isinstance(data, list):
            return data
        columns = list(data)
        keys = sorted(data[columns[0]], key=int)
        return [{c: data[c][k] for c in columns} for k in keys]
    if csv_files:
        with open(os.path.join(manual_dir, csv_files[-1]), encoding="utf-8") as f:
            return list(csv.DictReader(f))
    raise FileNotFoundError(f"no maestro-v*.json or .csv metadata in {manual_dir}. {INSTRUCTIONS}")


class MaestroV3(beam_build.BeamWhenAsked, common.RandomAccessBuilder):
    """MAESTRO: ~200 h of virtuosic piano with aligned MIDI (audio resampled to 16 kHz)."""

    VERSION = tfds.core.Version("3.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=common.features(("composer", "title", "year")),
        )

    def _split_generators(self, dl_manager):
        manual_dir = os.fspath(dl_manager.manual_dir)
        rows = read_metadata(manual_dir)
        by_split: dict[str, list[dict]] = {}
        for row in rows:
            by_split.setdefault(row["split"], []).append(row)
        return {
            split: self._generate_examples(manual_dir, split, r) for split, r in by_split.items()
        }

    def _generate_examples(self, manual_dir, split, rows):
        return beam_build.per_item(self, split, rows, row_examples, manual_dir)


def row_examples(row: dict, skips: common.SkipCounter, manual_dir: str):
    """The example of one metadata row (none if the performance is skipped)."""
    track_id = os.path.splitext(os.path.basename(row["audio_filename"]))[0]
    sequence = common.read_midi(track_id, os.path.join(manual_dir, row["midi_filename"]), skips)
    example = common.load_example(
        track_id,
        os.path.join(manual_dir, row["audio_filename"]),
        sequence,
        [{"name": "piano", "program": 0, "is_drum": False}],
        skips,
        composer=row.get("canonical_composer", ""),
        title=row.get("canonical_title", ""),
        year=row.get("year", ""),
    )
    if example is not None:
        yield track_id, example

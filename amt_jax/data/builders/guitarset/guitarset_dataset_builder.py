"""GuitarSet: solo acoustic guitar with per-string note annotations in JAMS files.

Notes come from the six `note_midi` annotations (one per string, `data_source` 0-5);
pitches are rounded to the nearest MIDI note and all notes get program 24 (MT3's "Clean
Guitar"). Split as the MT3 paper: progressions 1 and 2 of each style for train, 3 for
validation.
"""

from __future__ import annotations

import json
import os
import re

import note_seq
import tensorflow_datasets as tfds

from amt_jax.data.builders import beam_build, common

INSTRUCTIONS = """
Download GuitarSet (https://zenodo.org/record/3371780): `annotation.zip` and one audio
archive, by default `audio_mono-mic.zip`. Unzip both into one folder and pass it as
manual_dir: `annotation/<id>.jams` and `audio_mono-mic/<id>_mic.wav`.
"""
AUDIO_VARIANTS = {
    "mic": ("audio_mono-mic", "_mic.wav"),
    "mix": ("audio_mono-pickup_mix", "_mix.wav"),
}
GUITAR_PROGRAM = 24
_ID = re.compile(r"^(\d\d)_([A-Za-z]+)(\d)-(\d+)-([A-G][b#]?)_(comp|solo)$")


def split_of(track_id: str) -> str:
    m = _ID.match(track_id)
    if not m:
        raise ValueError(f"GuitarSet id {track_id!r} does not look like 00_BN1-129-Eb_comp")
    return "validation" if m.group(3) == "3" else "train"


def read_jams(track_id: str, path: str, skips: common.SkipCounter):
    try:
        with open(path, encoding="utf-8") as f:
            jams = json.load(f)
    except FileNotFoundError:
        skips.skip(track_id, f"missing {path}")
        return None
    except json.JSONDecodeError as e:
        skips.skip(track_id, f"corrupt JAMS {path}: {e}")
        return None
    sequence = note_seq.NoteSequence()
    for annotation in jams.get("annotations", []):
        if annotation.get("namespace") != "note_midi":
            continue
        string = int(annotation.get("annotation_metadata", {}).get("data_source") or 0)
        for obs in annotation["data"]:
            note = sequence.notes.add()
            note.pitch = int(round(float(obs["value"])))
            note.start_time = float(obs["time"])
            note.end_time = float(obs["time"]) + float(obs["duration"])
            note.velocity, note.program, note.instrument = 100, GUITAR_PROGRAM, string
    sequence.total_time = max((n.end_time for n in sequence.notes), default=0.0)
    return sequence


class GuitarSet(beam_build.BeamWhenAsked, common.RandomAccessBuilder):
    """GuitarSet (mono microphone audio, 16 kHz) with notes from its JAMS annotations."""

    VERSION = tfds.core.Version("1.1.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    AUDIO_VARIANT = "mic"

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, description=__doc__, features=common.features(("player", "mode"))
        )

    def _split_generators(self, dl_manager):
        manual_dir = common.check_manual_dir(dl_manager.manual_dir, "annotation", INSTRUCTIONS)
        ids = sorted(
            n.removesuffix(".jams")
            for n in os.listdir(os.path.join(manual_dir, "annotation"))
            if n.endswith(".jams")
        )
        by_split = {"train": [], "validation": []}
        for track_id in ids:
            by_split[split_of(track_id)].append(track_id)
        return {s: self._generate_examples(manual_dir, s, i) for s, i in by_split.items() if i}

    def _generate_examples(self, manual_dir, split, ids):
        folder, suffix = AUDIO_VARIANTS[self.AUDIO_VARIANT]
        return beam_build.per_item(self, split, ids, track_examples, manual_dir, folder, suffix)


def track_examples(track_id: str, skips: common.SkipCounter, manual_dir, folder, suffix):
    """The example of one take (none if it is skipped)."""
    sequence = read_jams(
        track_id, os.path.join(manual_dir, "annotation", f"{track_id}.jams"), skips
    )
    example = common.load_example(
        track_id,
        os.path.join(manual_dir, folder, track_id + suffix),
        sequence,
        [{"name": "guitar", "program": GUITAR_PROGRAM, "is_drum": False}],
        skips,
        player=track_id[:2],
        mode=track_id.rsplit("_", 1)[-1],
    )
    if example is not None:
        yield track_id, example

"""MusicNet (csv labels) and MusicNetEM (the same audio with re-aligned MIDI labels).

MusicNet's csv rows give start/end in samples at 44.1 kHz, an instrument code (GM program
+ 1) and a MIDI note. Splits: the official train/test folders; validation is a fixed 5 % of
the train ids (by a hash of the id), since the MT3 authors' own split is not published.
"""

from __future__ import annotations

import csv
import hashlib
import os

import note_seq
import tensorflow_datasets as tfds

from amt_jax.data.builders import beam_build, common

INSTRUCTIONS = """
MusicNet: download `musicnet.tar.gz` (https://zenodo.org/record/5120004) and untar it; pass
the `musicnet/` folder as manual_dir (`train_data/<id>.wav`, `train_labels/<id>.csv`,
`test_data/`, `test_labels/`).
MusicNetEM: additionally put the MusicNetEM MIDI files (https://github.com/benadar293/
benadar293.github.io, `musicnet_em.zip`) in `musicnet_em/<id>.mid` inside the same folder.
"""
LABEL_SAMPLE_RATE = 44100
VALIDATION_FRACTION = 0.05


def split_of(track_id: str, official: str) -> str:
    if official == "test":
        return "test"
    digest = int(hashlib.sha256(track_id.encode()).hexdigest()[:8], 16)
    return "validation" if digest % 1000 < VALIDATION_FRACTION * 1000 else "train"


def read_csv_labels(track_id: str, path: str, skips: common.SkipCounter):
    try:
        with open(path, encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        skips.skip(track_id, f"missing {path}")
        return None
    sequence = note_seq.NoteSequence()
    try:
        for row in rows:
            note = sequence.notes.add()
            note.start_time = int(row["start_time"]) / LABEL_SAMPLE_RATE
            note.end_time = int(row["end_time"]) / LABEL_SAMPLE_RATE
            note.pitch = int(row["note"])
            note.program = int(row["instrument"]) - 1
            note.instrument = note.program
            note.velocity = 100
    except (KeyError, ValueError) as e:
        skips.skip(track_id, f"bad label file {path}: {e}")
        return None
    sequence.total_time = max((n.end_time for n in sequence.notes), default=0.0)
    return sequence


def track_ids(manual_dir: str) -> list[tuple[str, str]]:
    out = []
    for official in ("train", "test"):
        folder = os.path.join(manual_dir, f"{official}_data")
        if os.path.isdir(folder):
            out += [(n[:-4], official) for n in sorted(os.listdir(folder)) if n.endswith(".wav")]
    return out


def csv_labels(manual_dir, track_id, official, skips):
    path = os.path.join(manual_dir, f"{official}_labels", f"{track_id}.csv")
    return read_csv_labels(track_id, path, skips)


def em_labels(manual_dir, track_id, official, skips):
    path = os.path.join(manual_dir, "musicnet_em", f"{track_id}.mid")
    return common.read_midi(track_id, path, skips)


def track_examples(ids: tuple[str, str], skips: common.SkipCounter, manual_dir, labels):
    """The example of one recording (none if it is skipped); `labels` reads its notes."""
    track_id, official = ids
    sequence = labels(manual_dir, track_id, official, skips)
    tracks = []
    if sequence is not None:
        tracks = [
            {"name": f"program{p}", "program": p, "is_drum": False}
            for p in sorted({n.program for n in sequence.notes})
        ]
    example = common.load_example(
        track_id,
        os.path.join(manual_dir, f"{official}_data", f"{track_id}.wav"),
        sequence,
        tracks,
        skips,
    )
    if example is not None:
        yield track_id, example


class MusicNet(beam_build.BeamWhenAsked, common.RandomAccessBuilder):
    """MusicNet classical recordings (16 kHz) with csv note labels."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    LABELS = staticmethod(csv_labels)  # (manual_dir, track_id, official, skips) -> notes

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, description=__doc__, features=common.features())

    def _split_generators(self, dl_manager):
        manual_dir = common.check_manual_dir(dl_manager.manual_dir, "train_data", INSTRUCTIONS)
        by_split = {"train": [], "validation": [], "test": []}
        for track_id, official in track_ids(manual_dir):
            by_split[split_of(track_id, official)].append((track_id, official))
        return {
            s: self._generate_examples(manual_dir, s, ids) for s, ids in by_split.items() if ids
        }

    def _generate_examples(self, manual_dir, split, ids):
        labels = self.LABELS  # a module-level function, so the Beam workers can unpickle it
        return beam_build.per_item(self, split, ids, track_examples, manual_dir, labels)


class MusicNetEm(MusicNet):
    """MusicNet audio with the MusicNetEM re-aligned MIDI labels (`musicnet_em/<id>.mid`)."""

    LABELS = staticmethod(em_labels)

"""URMP chamber ensembles: the mix with each part's note file, instruments mapped to GM.

Each piece folder `NN_Title_inst1_inst2...` holds `AuMix_<folder>.wav` and one
`Notes_<k>_<inst>_<NN>_<Title>.txt` per part (onset seconds, frequency in Hz, duration
seconds per line). Validation pieces are MT3's: 1, 2, 12, 13, 24, 25, 31, 38, 39.
"""

from __future__ import annotations

import os
import re

import note_seq
import numpy as np
import tensorflow_datasets as tfds

from amt_jax.data.builders import beam_build, common

INSTRUCTIONS = """
Download URMP (https://labsites.rochester.edu/air/projects/URMP.html, `URMP.zip`) and unzip
it; pass the folder containing `Dataset/` as manual_dir (`Dataset/01_Jupiter_vn_vc/...`).
"""
PROGRAMS = {
    "vn": 40,
    "va": 41,
    "vc": 42,
    "db": 43,
    "tpt": 56,
    "tbn": 57,
    "tba": 58,
    "hn": 60,
    "sax": 64,
    "ob": 68,
    "bn": 70,
    "cl": 71,
    "fl": 73,
}
VALIDATION_PIECES = frozenset({1, 2, 12, 13, 24, 25, 31, 38, 39})
_NOTES = re.compile(r"^Notes_(\d+)_([a-z]+)_.*\.txt$")


def read_parts(piece_dir: str, piece: str, skips: common.SkipCounter):
    sequence = note_seq.NoteSequence()
    tracks = []
    files = sorted(n for n in os.listdir(piece_dir) if _NOTES.match(n))
    if not files:
        skips.skip(piece, f"no Notes_*.txt files in {piece_dir}")
        return None, []
    for name in files:
        part, code = _NOTES.match(name).groups()
        if code not in PROGRAMS:
            skips.skip(piece, f"unknown URMP instrument code {code!r} in {name}")
            return None, []
        program = PROGRAMS[code]
        try:
            rows = np.loadtxt(os.path.join(piece_dir, name), ndmin=2)
        except ValueError as e:
            skips.skip(piece, f"bad note file {name}: {e}")
            return None, []
        for onset, freq, duration in rows[:, :3]:
            note = sequence.notes.add()
            note.pitch = int(round(69 + 12 * np.log2(freq / 440.0)))
            note.start_time, note.end_time = float(onset), float(onset + duration)
            note.velocity, note.program, note.instrument = 100, program, int(part)
        tracks.append({"name": f"{part}:{code}", "program": program, "is_drum": False})
    sequence.total_time = max((n.end_time for n in sequence.notes), default=0.0)
    return sequence, tracks


class Urmp(beam_build.BeamWhenAsked, common.RandomAccessBuilder):
    """URMP ensemble mixes (16 kHz) with per-part notes."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, description=__doc__, features=common.features())

    def _split_generators(self, dl_manager):
        manual_dir = common.check_manual_dir(dl_manager.manual_dir, "Dataset", INSTRUCTIONS)
        root = os.path.join(manual_dir, "Dataset")
        pieces = sorted(d for d in os.listdir(root) if re.match(r"^\d\d_", d))
        by_split = {"train": [], "validation": []}
        for piece in pieces:
            split = "validation" if int(piece[:2]) in VALIDATION_PIECES else "train"
            by_split[split].append(piece)
        return {s: self._generate_examples(root, s, p) for s, p in by_split.items() if p}

    def _generate_examples(self, root, split, pieces):
        return beam_build.per_item(self, split, pieces, piece_examples, root)


def piece_examples(piece: str, skips: common.SkipCounter, root: str):
    """The example of one piece folder (none if it is skipped)."""
    piece_dir = os.path.join(root, piece)
    sequence, tracks = read_parts(piece_dir, piece, skips)
    example = common.load_example(
        piece, os.path.join(piece_dir, f"AuMix_{piece}.wav"), sequence, tracks, skips
    )
    if example is not None:
        yield piece, example

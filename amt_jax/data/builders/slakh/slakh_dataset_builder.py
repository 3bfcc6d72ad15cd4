"""Slakh2100 (redux) mixes with per-stem MIDI, programs mapped to Slakh classes as MT3.

MT3 labels each stem with its Slakh instrument *class* (not the exact patch), mapped to one
GM program per class (Acoustic Piano 0, Electric Piano 4, Chromatic Percussion 8, Organ 16,
Acoustic Guitar 24, Clean Electric Guitar 26, Distorted Electric Guitar 29, Acoustic Bass 32,
Electric Bass 33, Violin 40, ..., Synth Lead 80, Synth Pad 88; drums are drums). The redux
metadata gives each stem's `program_num`, so the class is recovered from GM program ranges.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np
import tensorflow_datasets as tfds
import yaml

from amt_jax.data.builders import beam_build, common

INSTRUCTIONS = """
Download Slakh2100 (https://zenodo.org/record/4599666, `slakh2100_flac_redux.tar.gz`) and
untar it; pass the folder that contains `slakh2100_flac_redux/` as manual_dir. Each track is
`slakh2100_flac_redux/<split>/TrackNNNNN/` with `metadata.yaml`, `mix.flac`, `MIDI/Sxx.mid`
and `stems/Sxx.flac`, for splits train, validation and test.
"""
SPLITS = ("train", "validation", "test")

# (first program, last program, class program): one GM program per Slakh class.
_CLASS_RANGES = (
    (0, 3, 0),  # Acoustic Piano
    (4, 7, 4),  # Electric Piano
    (8, 15, 8),  # Chromatic Percussion
    (16, 23, 16),  # Organ
    (24, 25, 24),  # Acoustic Guitar
    (26, 28, 26),  # Clean Electric Guitar
    (29, 31, 29),  # Distorted Electric Guitar
    (32, 32, 32),  # Acoustic Bass
    (33, 39, 33),  # Electric Bass (incl. synth bass)
    (40, 40, 40),  # Violin
    (41, 41, 41),  # Viola
    (42, 42, 42),  # Cello
    (43, 43, 43),  # Contrabass
    (44, 47, 46),  # Orchestral Harp / plucked & struck strings
    (48, 51, 48),  # String Ensemble
    (52, 55, 52),  # Choir / voices
    (56, 56, 56),  # Trumpet
    (57, 57, 57),  # Trombone
    (58, 58, 58),  # Tuba
    (59, 59, 56),  # muted trumpet -> Trumpet
    (60, 60, 60),  # French Horn
    (61, 63, 61),  # Brass Section
    (64, 67, 64),  # Saxophones
    (68, 69, 68),  # Oboe / English horn
    (70, 70, 70),  # Bassoon
    (71, 71, 71),  # Clarinet
    (72, 79, 73),  # Pipe (flutes, recorder, ...)
    (80, 87, 80),  # Synth Lead
    (88, 95, 88),  # Synth Pad
    (96, 103, 96),  # Synth Effects
    (104, 111, 104),  # Ethnic
    (112, 119, 112),  # Percussive
    (120, 127, 120),  # Sound Effects
)


def class_program(program_num: int) -> int:
    for first, last, program in _CLASS_RANGES:
        if first <= program_num <= last:
            return program
    raise ValueError(f"MIDI program {program_num} outside 0..127")


def read_track(track_dir: str, track_id: str, skips: common.SkipCounter, stem_ids=None):
    """(NoteSequence of the chosen stems with class programs, tracks, metadata) or None."""
    import note_seq  # noqa: PLC0415

    meta_path = os.path.join(track_dir, "metadata.yaml")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = yaml.safe_load(f)
    except FileNotFoundError:
        skips.skip(track_id, f"missing {meta_path}")
        return None
    except yaml.YAMLError as e:
        skips.skip(track_id, f"unreadable {meta_path}: {e}")
        return None
    sequence = note_seq.NoteSequence()
    tracks = []
    stems = meta.get("stems") or {}
    for index, stem_id in enumerate(sorted(stems)):
        stem = stems[stem_id]
        if stem_ids is not None and stem_id not in stem_ids:
            continue
        if not stem.get("audio_rendered", True) or not stem.get("midi_saved", True):
            continue  # not in the mix: its notes are not audible
        stem_sequence = common.read_midi(
            f"{track_id}/{stem_id}", os.path.join(track_dir, "MIDI", f"{stem_id}.mid"), skips
        )
        if stem_sequence is None:
            return None  # a mix with a missing stem's labels would be mislabelled
        is_drum = bool(stem.get("is_drum", False))
        program = 0 if is_drum else class_program(int(stem["program_num"]))
        for note in stem_sequence.notes:
            n = sequence.notes.add()
            n.CopyFrom(note)
            n.instrument, n.program, n.is_drum = index, program, is_drum
        for cc in stem_sequence.control_changes:
            c = sequence.control_changes.add()
            c.CopyFrom(cc)
            c.instrument = index
        sequence.instrument_infos.add(instrument=index, name=stem.get("inst_class", stem_id))
        tracks.append(
            {
                "name": f"{stem_id}:{stem.get('inst_class', '')}",
                "program": program,
                "is_drum": is_drum,
            }
        )
    sequence.total_time = max((n.end_time for n in sequence.notes), default=0.0)
    return sequence, tracks, meta


def track_dirs(manual_dir: str, split: str) -> list[str]:
    root = os.path.join(manual_dir, "slakh2100_flac_redux", split)
    if not os.path.isdir(root):
        return []
    return sorted(
        os.path.join(root, d) for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))
    )


@dataclasses.dataclass
class SlakhConfig(tfds.core.BuilderConfig):
    """`train_submixes` > 0: the train split holds that many random sub-mixes of at least
    `min_submix_stems` audible stems per song, mixed from the stems (MT3 trains on 10);
    validation and test always hold the full mixes."""

    train_submixes: int = 0
    min_submix_stems: int = 4


class Slakh2100Redux(beam_build.BeamWhenAsked, common.RandomAccessBuilder):
    """Slakh2100 redux mixes (audio 16 kHz) with all audible stems' notes."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    BUILDER_CONFIGS = [
        SlakhConfig(name="full", description="full mixes in every split"),
        SlakhConfig(
            name="submix10",
            description="train: 10 random sub-mixes (>= 4 stems) per song, as MT3",
            train_submixes=10,
        ),
    ]
    DEFAULT_CONFIG_NAME = "full"

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, description=__doc__, features=common.features(("uuid",))
        )

    def _split_generators(self, dl_manager):
        manual_dir = common.check_manual_dir(
            dl_manager.manual_dir, "slakh2100_flac_redux", INSTRUCTIONS
        )
        return {
            s: self._generate_examples(manual_dir, s) for s in SPLITS if track_dirs(manual_dir, s)
        }

    def _generate_examples(self, manual_dir, split):
        config = self.builder_config
        dirs = track_dirs(manual_dir, split)
        if split == "train" and config.train_submixes > 0:
            args = (config.train_submixes, config.min_submix_stems)
            return beam_build.per_item(self, split, dirs, submix_examples, *args)
        return beam_build.per_item(self, split, dirs, mix_examples)


def mix_examples(track_dir: str, skips: common.SkipCounter):
    """The full-mix example of one track folder (none if it is skipped)."""
    track_id = os.path.basename(track_dir)
    loaded = read_track(track_dir, track_id, skips)
    if loaded is None:
        return
    sequence, tracks, meta = loaded
    example = common.load_example(
        track_id,
        os.path.join(track_dir, "mix.flac"),
        sequence,
        tracks,
        skips,
        uuid=str(meta.get("UUID", "")),
    )
    if example is not None:
        yield track_id, example


def submix_examples(track_dir: str, skips: common.SkipCounter, count: int, min_stems: int):
    """`count` random sub-mixes (>= `min_stems` stems, seeded by the track) of one track."""
    track_id = os.path.basename(track_dir)
    try:
        stems = audible_stems(track_dir)
    except (FileNotFoundError, yaml.YAMLError) as e:
        skips.skip(track_id, f"metadata: {e}")
        return
    for k, subset in enumerate(draw_submixes(track_id, stems, count, min_stems)):
        example_id = f"{track_id}_sub{k}"
        loaded = read_track(track_dir, example_id, skips, stem_ids=set(subset))
        if loaded is None:
            continue
        sequence, tracks, meta = loaded
        try:
            audio = mix_stems(track_dir, subset)
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
            uuid=str(meta.get("UUID", "")),
        )
        if example is not None:
            yield example_id, example


def audible_stems(track_dir: str) -> list[str]:
    with open(os.path.join(track_dir, "metadata.yaml"), encoding="utf-8") as f:
        stems = (yaml.safe_load(f) or {}).get("stems") or {}
    return sorted(
        k for k, v in stems.items() if v.get("audio_rendered", True) and v.get("midi_saved", True)
    )


def draw_submixes(track_id: str, stems: list[str], count: int, min_stems: int) -> list[tuple]:
    """`count` distinct-seeded random stem subsets of size >= min_stems (all stems when the
    song has no more than min_stems), seeded by the track id."""
    if len(stems) <= min_stems:
        return [tuple(stems)]
    rng = np.random.default_rng(int(hashlib.sha256(track_id.encode()).hexdigest()[:8], 16))
    subsets = []
    for _ in range(count):
        size = int(rng.integers(min_stems, len(stems) + 1))
        subsets.append(tuple(sorted(rng.choice(stems, size=size, replace=False).tolist())))
    return subsets


def mix_stems(track_dir: str, stem_ids, sample_rate: int = 16000) -> np.ndarray:
    """Sum of the given stems' audio (for sub-mixes), scaled down only if it would clip."""
    from amt_jax.audio import io as audio_io  # noqa: PLC0415

    parts = [
        audio_io.load_audio(os.path.join(track_dir, "stems", f"{s}.flac"), sample_rate)[0]
        for s in stem_ids
    ]
    mix = np.zeros(max(len(p) for p in parts), np.float32)
    for part in parts:
        mix[: len(part)] += part
    peak = float(np.abs(mix).max())
    return mix / peak if peak > 1.0 else mix

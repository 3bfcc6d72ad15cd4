"""Real-dataset builders, each built from a tiny tree in the dataset's own layout.

Metadata/annotation files are the real ones from ../shared/fixtures where they exist
(MAESTRO json, Slakh metadata.yaml, GuitarSet JAMS); audio and MIDI are made here.
"""

import json
import logging
import os
import shutil
from unittest import mock

import numpy as np
import pretty_midi
import pytest
import soundfile as sf
import tensorflow_datasets as tfds
import yaml
from apache_beam.options.pipeline_options import PipelineOptions

from amt_jax.data.builders import beam_build, common
from amt_jax.data.builders.cerberus4 import Cerberus4
from amt_jax.data.builders.guitarset import GuitarSet
from amt_jax.data.builders.maestro import MaestroV3
from amt_jax.data.builders.maestro.maestro_dataset_builder import read_metadata
from amt_jax.data.builders.musicnet import MusicNet, MusicNetEm
from amt_jax.data.builders.slakh import Slakh2100Redux, class_program
from amt_jax.data.builders.urmp import Urmp
from tests.data.test_beam_build import assert_same_builds

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "fixtures")
FIXTURES = os.environ.get("AMT_JAX_FIXTURES", os.path.abspath(FIXTURES))
SR = 16000


def _tone(path, seconds, sr=SR, freq=440.0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, 0.3 * np.sin(2 * np.pi * freq * t).astype(np.float32), sr)


def _midi(path, notes, program=0, is_drum=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pm = pretty_midi.PrettyMIDI()
    inst = pretty_midi.Instrument(program=program, is_drum=is_drum)
    for pitch, start, end in notes:
        inst.notes.append(pretty_midi.Note(velocity=90, pitch=pitch, start=start, end=end))
    pm.instruments.append(inst)
    pm.write(path)


# In-process keeps these small builds quick; the per-track functions still go through
# Beam's pickling (FnApiRunner runs the pipeline from its serialized form).
BEAM_FLAGS = ["--runner=FnApiRunner", "--direct_running_mode=in_memory"]


def _build(builder_cls, data_dir, manual_dir, **builder_kwargs):
    """The plain build, after checking that a Beam build of the tree holds the same examples."""
    builder = builder_cls(data_dir=str(data_dir), **builder_kwargs)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    on_beam = builder_cls(data_dir=f"{data_dir}_beam", **builder_kwargs)
    with mock.patch.object(beam_build, "_items_locally", side_effect=AssertionError("local")):
        on_beam.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                manual_dir=str(manual_dir), beam_options=PipelineOptions(flags=BEAM_FLAGS)
            )
        )
    assert_same_builds(builder, on_beam)
    return builder


def _all(builder, split):
    source = builder.as_data_source(split=split)
    return [source[i] for i in range(len(source))]


def test_maestro_layout_and_bad_tracks(tmp_path, caplog):
    manual = tmp_path / "maestro-v3.0.0"
    manual.mkdir()
    with open(os.path.join(FIXTURES, "maestro", "maestro-v2.0.0.json")) as f:
        rows = json.load(f)  # real rows: train, train, validation, test
    extra = dict(rows[0], audio_filename="2004/extra.wav", midi_filename="2004/extra.midi")
    (manual / "maestro-v2.0.0.json").write_text(json.dumps(rows + [extra]))
    rows = read_metadata(str(manual))
    for i, row in enumerate(rows):
        _tone(str(manual / row["audio_filename"]), 2.0)
        if i == 1:
            (manual / row["midi_filename"]).write_bytes(b"not a midi file")  # corrupt
        elif i == 4:
            _midi(str(manual / row["midi_filename"]), [(60, 0.5, 6.0)])  # longer than audio
        else:
            _midi(str(manual / row["midi_filename"]), [(60, 0.5, 1.0), (64, 1.0, 1.5)])
    with caplog.at_level(logging.WARNING):
        builder = _build(MaestroV3, tmp_path / "tfds", manual)
    written = sum(s.num_examples for s in builder.info.splits.values())
    assert written == len(rows) - 2
    assert "corrupt MIDI" in caplog.text and "labels end at 6.00 s" in caplog.text
    assert "Beam build skipped 2 examples" in caplog.text
    split = rows[0]["split"]
    example = _all(builder, split)[0]
    assert example["sample_rate"] == SR and example["audio"].dtype == np.int16
    sequence = common.decode_sequence(example["sequence"])
    assert [n.pitch for n in sequence.notes] == [60, 64]
    assert example["composer"].decode() == rows[0]["canonical_composer"]


def test_maestro_v3_column_json(tmp_path):
    columns = {"split": {"0": "train", "1": "test"}, "audio_filename": {"0": "a.wav", "1": "b.wav"}}
    (tmp_path / "maestro-v3.0.0.json").write_text(json.dumps(columns))
    rows = read_metadata(str(tmp_path))
    assert rows == [
        {"split": "train", "audio_filename": "a.wav"},
        {"split": "test", "audio_filename": "b.wav"},
    ]


def _slakh_tree(root, with_stems=False):
    source = os.path.join(FIXTURES, "slakh", "slakh2100_flac_redux")
    for split in ("train", "validation", "test"):
        for track in os.listdir(os.path.join(source, split)):
            track_dir = root / "slakh2100_flac_redux" / split / track
            track_dir.mkdir(parents=True)
            shutil.copy(os.path.join(source, split, track, "metadata.yaml"), track_dir)
            meta = yaml.safe_load((track_dir / "metadata.yaml").read_text())
            _tone(str(track_dir / "mix.flac"), 2.0)
            for k, (stem_id, stem) in enumerate(sorted(meta["stems"].items())):
                if stem.get("midi_saved"):
                    program = min(int(stem["program_num"]), 127)
                    _midi(
                        str(track_dir / "MIDI" / f"{stem_id}.mid"),
                        [(40 + k, 0.1, 1.0)],
                        program=program,
                        is_drum=stem["is_drum"],
                    )
                if with_stems and stem.get("audio_rendered"):
                    _tone(str(track_dir / "stems" / f"{stem_id}.flac"), 2.0, freq=110.0 * (k + 1))
    return root


def test_slakh_programs_follow_classes(tmp_path):
    manual = _slakh_tree(tmp_path / "manual")
    builder = _build(Slakh2100Redux, tmp_path / "tfds", manual)
    assert {s: i.num_examples for s, i in builder.info.splits.items()} == {
        "train": 1,
        "validation": 1,
        "test": 1,
    }
    meta = yaml.safe_load(
        (manual / "slakh2100_flac_redux" / "train" / "Track00001" / "metadata.yaml").read_text()
    )
    sequence = common.decode_sequence(_all(builder, "train")[0]["sequence"])
    audible = {k: v for k, v in meta["stems"].items() if v["audio_rendered"] and v["midi_saved"]}
    assert len(sequence.notes) == len(audible)
    for index, (stem_id, stem) in enumerate(sorted(meta["stems"].items())):
        notes = [n for n in sequence.notes if n.instrument == index]
        if stem_id not in audible:
            assert not notes  # e.g. the unrendered Sound Effects stem
            continue
        (note,) = notes
        assert note.is_drum == stem["is_drum"]
        if not stem["is_drum"]:
            assert note.program == class_program(stem["program_num"])
    assert [class_program(p) for p in (1, 5, 27, 29, 30, 33, 52, 22)] == [
        0,
        4,
        26,
        29,
        29,
        33,
        52,
        16,
    ]


def test_slakh_submix10_train(tmp_path):
    manual = _slakh_tree(tmp_path / "manual", with_stems=True)
    builder = _build(Slakh2100Redux, tmp_path / "tfds", manual, config="submix10")
    train = _all(builder, "train")
    assert len(train) == 10
    track_dir = manual / "slakh2100_flac_redux" / "train" / "Track00001"
    meta = yaml.safe_load((track_dir / "metadata.yaml").read_text())
    audible = sorted(k for k, v in meta["stems"].items() if v["audio_rendered"] and v["midi_saved"])
    full_notes = len(audible)  # one note per stem in the test tree
    for example in train:
        sequence = common.decode_sequence(example["sequence"])
        stems = {t.decode().split(":")[0] for t in example["tracks"]["name"]}
        assert stems <= set(audible) and len(stems) >= 4
        assert 4 <= len(sequence.notes) <= full_notes
    assert len({tuple(sorted(e["tracks"]["name"])) for e in train}) > 1
    (full,) = _all(builder, "validation")
    assert full["id"].decode() == "Track01501"


def test_cerberus4_one_of_each(tmp_path):
    manual = _slakh_tree(tmp_path / "manual", with_stems=True)
    builder = _build(Cerberus4, tmp_path / "tfds", manual)
    meta = yaml.safe_load(
        (manual / "slakh2100_flac_redux" / "train" / "Track00001" / "metadata.yaml").read_text()
    )
    counts = {role: 0 for role in ("Piano", "Guitar", "Bass", "Drums")}
    for stem in meta["stems"].values():
        role = "Drums" if stem["is_drum"] else stem["inst_class"]
        if role in counts and stem["audio_rendered"]:
            counts[role] += 1
    examples = _all(builder, "train")
    assert len(examples) == int(np.prod(list(counts.values())))
    for example in examples:
        sequence = common.decode_sequence(example["sequence"])
        assert sorted((n.program, n.is_drum) for n in sequence.notes) == [
            (0, False),
            (0, True),
            (24, False),
            (32, False),
        ]
        assert np.abs(example["audio"]).max() > 1000  # stems were mixed


def test_guitarset_jams(tmp_path):
    manual = tmp_path / "manual"
    (manual / "annotation").mkdir(parents=True)
    track = "00_BN1-129-Eb_comp"
    jams_path = os.path.join(FIXTURES, "guitarset", "annotation", f"{track}.jams")
    shutil.copy(jams_path, manual / "annotation")
    with open(jams_path) as f:
        jams = json.load(f)
    duration = jams["file_metadata"]["duration"]
    _tone(str(manual / "audio_mono-mic" / f"{track}_mic.wav"), duration, sr=8000)
    builder = _build(GuitarSet, tmp_path / "tfds", manual)
    (example,) = _all(builder, "train")
    sequence = common.decode_sequence(example["sequence"])
    expected = [o for a in jams["annotations"] if a["namespace"] == "note_midi" for o in a["data"]]
    assert len(sequence.notes) == len(expected) > 0
    assert {n.program for n in sequence.notes} == {24}
    assert {n.instrument for n in sequence.notes} == set(range(6))
    first = min(expected, key=lambda o: o["time"])
    note = min(sequence.notes, key=lambda n: n.start_time)
    assert note.pitch == round(first["value"]) and note.start_time == pytest.approx(first["time"])
    assert len(example["audio"]) == pytest.approx(duration * SR, abs=2)


def test_musicnet_csv_and_em_midi(tmp_path, caplog):
    manual = tmp_path / "musicnet"
    for official, track in (("train", "1727"), ("train", "1728"), ("test", "2303")):
        _tone(str(manual / f"{official}_data" / f"{track}.wav"), 2.0, sr=44100)
        labels = manual / f"{official}_labels" / f"{track}.csv"
        labels.parent.mkdir(parents=True, exist_ok=True)
        rows = ["start_time,end_time,instrument,note,start_beat,end_beat,note_value"]
        if track != "1728":  # an empty label file: reported and skipped
            rows += ["4410,44100,1,60,0,1,Quarter", "22050,66150,41,72,0.5,1,Quarter"]
        labels.write_text("\n".join(rows) + "\n")
        _midi(str(manual / "musicnet_em" / f"{track}.mid"), [(61, 0.2, 1.2)], program=40)
    with caplog.at_level(logging.WARNING):
        builder = _build(MusicNet, tmp_path / "tfds", manual)
    assert "1728: no notes" in caplog.text
    (example,) = _all(builder, "test")
    notes = sorted(common.decode_sequence(example["sequence"]).notes, key=lambda n: n.start_time)
    assert [(n.pitch, n.program) for n in notes] == [(60, 0), (72, 40)]
    assert notes[0].start_time == pytest.approx(0.1) and notes[1].end_time == pytest.approx(1.5)
    em = _build(MusicNetEm, tmp_path / "tfds_em", manual)
    (example,) = _all(em, "test")
    assert [n.pitch for n in common.decode_sequence(example["sequence"]).notes] == [61]


def test_urmp_notes(tmp_path):
    root = tmp_path / "manual" / "Dataset"
    for piece in ("01_Jupiter_vn_vc", "03_Dance_fl_cl"):
        piece_dir = root / piece
        _tone(str(piece_dir / f"AuMix_{piece}.wav"), 2.0, sr=48000)
        codes = piece.split("_")[2:]
        for k, code in enumerate(codes, start=1):
            (piece_dir / f"Notes_{k}_{code}_{piece[:2]}_{piece.split('_')[1]}.txt").write_text(
                "0.500\t440.00\t0.400\n1.000\t261.63\t0.500\n"
            )
    builder = _build(Urmp, tmp_path / "tfds", tmp_path / "manual")
    (validation,) = _all(builder, "validation")
    assert validation["id"].decode() == "01_Jupiter_vn_vc"
    sequence = common.decode_sequence(_all(builder, "train")[0]["sequence"])
    assert sorted({n.program for n in sequence.notes}) == [71, 73]
    assert sorted(n.pitch for n in sequence.notes) == [60, 60, 69, 69]


def test_missing_or_wrong_manual_dir_explains_layout(tmp_path):
    with pytest.raises(AssertionError, match="pass the folder that contains"):
        _build(Slakh2100Redux, tmp_path / "tfds", tmp_path / "nonexistent")
    wrong = tmp_path / "wrong"
    (wrong / "Track00001").mkdir(parents=True)  # stems unpacked without the top folder
    with pytest.raises(FileNotFoundError, match="wrong/slakh2100_flac_redux not found"):
        _build(Slakh2100Redux, tmp_path / "tfds", wrong)

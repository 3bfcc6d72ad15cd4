"""What every amt_jax tfds example looks like, shared by the synthetic and real builders.

example = {id, audio (mono int16 stored as raw bytes), sample_rate, sequence (serialized
NoteSequence), tracks (per-track name/program/is_drum), + builder-specific text fields}.
Audio is stored as `Tensor(int16, encoding='bytes')`: `tfds.features.Audio` would store
int16 as int64 varints (~3x the WAV size).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import numpy as np
import tensorflow_datasets as tfds
from note_seq.protobuf import music_pb2

log = logging.getLogger(__name__)


DEFAULT_FILE_FORMAT = "array_record"


class RandomAccessBuilder(tfds.core.GeneratorBasedBuilder):
    """A tfds builder that writes ArrayRecord by default (tfds' default is TFRecord), so
    readers can fetch any track by index (`builder.as_data_source`) and stream them."""

    def __init__(self, *, file_format: str | None = DEFAULT_FILE_FORMAT, **kwargs):
        super().__init__(file_format=file_format, **kwargs)


def features(extra_text_fields: Iterable[str] = ()) -> tfds.features.FeaturesDict:
    spec = {
        "id": tfds.features.Text(),
        "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16, encoding="bytes"),
        "sample_rate": np.int32,
        "sequence": tfds.features.Tensor(shape=(), dtype=np.object_),
        "tracks": tfds.features.Sequence(
            {"name": tfds.features.Text(), "program": np.int32, "is_drum": np.bool_}
        ),
    }
    for field in extra_text_fields:
        spec[field] = tfds.features.Text()
    return tfds.features.FeaturesDict(spec)


def float_to_int16(audio: np.ndarray) -> np.ndarray:
    """[-1, 1] float audio to int16 with clipping (loaders return float32)."""
    return np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)


def make_example(
    example_id: str,
    audio_int16: np.ndarray,
    sample_rate: int,
    sequence: music_pb2.NoteSequence,
    tracks: Iterable[Mapping],
    **text_fields: str,
) -> dict:
    if audio_int16.dtype != np.int16 or audio_int16.ndim != 1:
        raise ValueError(f"{example_id}: audio must be mono int16, got {audio_int16.dtype}")
    sequence.id = example_id
    return {
        "id": example_id,
        "audio": audio_int16,
        "sample_rate": int(sample_rate),
        "sequence": sequence.SerializeToString(),
        "tracks": [
            {"name": t["name"], "program": int(t["program"]), "is_drum": bool(t["is_drum"])}
            for t in tracks
        ],
        **{k: str(v) for k, v in text_fields.items()},
    }


def decode_sequence(serialized) -> music_pb2.NoteSequence:
    seq = music_pb2.NoteSequence()
    seq.ParseFromString(bytes(serialized))
    return seq


class SkipCounter:
    """Counts and logs examples a builder skips, so no track disappears silently.

    Every skip is logged with the track id and the reason, and `summary()` is logged at the
    end of each split.
    """

    def __init__(self, dataset: str, split: str):
        self.dataset, self.split = dataset, split
        self.skipped: list[tuple[str, str]] = []

    def skip(self, track_id: str, reason: str):
        self.skipped.append((track_id, reason))
        log.warning("%s/%s: skipping %s: %s", self.dataset, self.split, track_id, reason)

    def summary(self, n_written: int):
        (log.warning if self.skipped else log.info)(
            "%s/%s: wrote %d examples, skipped %d%s",
            self.dataset,
            self.split,
            n_written,
            len(self.skipped),
            "".join(f"\n  {tid}: {why}" for tid, why in self.skipped),
        )


LENGTH_TOLERANCE_SECONDS = 1.0


def load_example(
    track_id: str,
    audio_path: str,
    sequence: music_pb2.NoteSequence | None,
    tracks: Iterable[Mapping],
    skips: SkipCounter,
    sample_rate: int = 16000,
    audio: np.ndarray | None = None,
    **text_fields: str,
) -> dict | None:
    """Validate one track and build its example, or log why it is skipped and return None.

    Checked here, at the edge: the audio file exists and decodes (`amt_jax.audio.io`), the
    labels have notes, and the labels do not run past the end of the audio (by more than
    `LENGTH_TOLERANCE_SECONDS`, which catches a wrong audio/MIDI pairing).
    """
    from amt_jax.audio import io as audio_io  # noqa: PLC0415

    if sequence is None:
        return None  # the caller already reported why
    if not sequence.notes:
        skips.skip(track_id, "no notes in the labels")
        return None
    if audio is None:
        try:
            audio, _ = audio_io.load_audio(audio_path, sample_rate=sample_rate)
        except (audio_io.AudioError, FileNotFoundError) as e:
            skips.skip(track_id, f"audio: {e}")
            return None
    duration = len(audio) / sample_rate
    last = max(n.end_time for n in sequence.notes)
    if last > duration + LENGTH_TOLERANCE_SECONDS:
        skips.skip(
            track_id,
            f"labels end at {last:.2f} s but the audio {audio_path} lasts {duration:.2f} s",
        )
        return None
    return make_example(
        track_id, float_to_int16(audio), sample_rate, sequence, tracks, **text_fields
    )


def read_midi(track_id: str, path: str, skips: SkipCounter) -> music_pb2.NoteSequence | None:
    """MIDI file -> NoteSequence, or None after logging a missing/corrupt file."""
    import note_seq  # noqa: PLC0415

    try:
        return note_seq.midi_file_to_note_sequence(path)
    except FileNotFoundError:
        skips.skip(track_id, f"missing MIDI file {path}")
    except Exception as e:  # noqa: BLE001  (pretty_midi/mido raise many types on bad files)
        skips.skip(track_id, f"corrupt MIDI file {path}: {type(e).__name__}: {e}")
    return None


def check_manual_dir(manual_dir, expected: str, instructions: str) -> str:
    """The manual_dir path, or a clear error saying what should be in it."""
    import os  # noqa: PLC0415

    path = os.fspath(manual_dir)
    if not os.path.exists(os.path.join(path, expected)):
        raise FileNotFoundError(f"{os.path.join(path, expected)} not found. {instructions.strip()}")
    return path

"""Tracks pre-split into chunks, tokenized once, stored for random access (ArrayRecord).

Why: a training crop must cost the same in a 10-note and a 30k-note track, and memory must
not grow with the dataset. MT3 splits every track into 16 s pieces before caching; here
each track of a task's split is resampled to the family's rate once, sustain is applied
once, overlapping notes are trimmed once (MT3's ``trim_overlapping_notes``, per
(program, pitch, is_drum)), and the track is cut into chunks of ``chunk_seconds``. A chunk
record holds
- the audio of ``[start, start + chunk + tail)`` as int16 (the tail lets a crop that starts
  near the chunk's end run on into the next chunk's audio, so crops see the same audio
  as crops of the whole track),
- the notes sounding anywhere in that span (absolute times: original and trimmed ends),
- the track's loudest velocity (O&F scales velocities by it).
A crop then reads one record and encodes only the notes around its window, and
:func:`crop_example` equals ``preprocessors.make_example`` on the whole track at the same
start (tested).

The store lives beside the tfds dataset (``<data_dir>/<name>/<config>/<version>/
amt_chunks/<split>_<rate>hz_<chunk>s``): ``chunks.array_record-NNNNN-of-MMMMM`` files and
``meta.json``. It is built on first use by streaming the split one track at a time
(memory holds one track) and written to a temporary directory that is renamed into place,
so concurrent builders (several hosts on one filesystem) cannot leave a half store.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile

import msgpack
import note_seq
import numpy as np

from amt_jax.data import preprocessors

log = logging.getLogger(__name__)

STORE_DIR = "amt_chunks"
META_FILE = "meta.json"
FORMAT_VERSION = 1
DEFAULT_CHUNK_SECONDS = 10.0
# Audio kept after each chunk: at least the longest training window of any family
# (O&F 79872 samples at 16 kHz = 4.99 s, MT3 2.05 s, NMP 1.99 s).
DEFAULT_TAIL_SECONDS = 5.0
RECORDS_PER_FILE = 1024  # ~ 0.5 GB of 16 kHz audio per file
# Notes this far outside a crop's window are left out of its target computation; any
# note that could change the targets (sounding in, or tied into, the window) is inside.
NOTE_MARGIN_SECONDS = 0.1

NOTE_DTYPE = np.dtype(
    [
        ("start", "<f8"),
        ("end", "<f8"),
        ("trimmed_end", "<f8"),  # NaN: removed by the overlap trim (same onset, shorter)
        ("pitch", "u1"),
        ("velocity", "u1"),
        ("program", "u1"),
        ("is_drum", "?"),
        ("instrument", "<i4"),
    ]
)


class ChunkStoreError(ValueError):
    """A chunk store that is missing, stale or does not fit the pipeline asking for it."""


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One decoded chunk record."""

    track_id: str
    index: int  # chunk number within its track
    num_chunks: int
    start_sample: int  # first sample of the chunk in the track
    span: int  # crop starts owned by this chunk: [start_sample, start_sample + span)
    sample_rate: int
    audio_int16: np.ndarray  # [span + tail] (shorter at the track's end)
    notes: np.ndarray  # NOTE_DTYPE
    max_velocity: float  # the whole track's loudest note


# ------------------------------------------------------------------------------ encoding


def track_notes(ns: note_seq.NoteSequence, track_id: str | None = None) -> np.ndarray:
    """The track's notes as a NOTE_DTYPE array, with MT3's overlap trim precomputed over
    the whole track (per (program, pitch, is_drum), in order of onset): each note still
    sounding when the next one of its channel starts ends there, and a note left without
    length (two onsets at the same time) gets ``trimmed_end = NaN``."""
    from amt_jax.music.sequences import validate_notes  # noqa: PLC0415

    validate_notes(ns, where=f"track {track_id or ns.id or '?'}")
    notes = np.zeros(len(ns.notes), NOTE_DTYPE)
    for i, note in enumerate(ns.notes):
        notes[i] = (
            note.start_time,
            note.end_time,
            note.end_time,
            note.pitch,
            note.velocity,
            note.program,
            note.is_drum,
            note.instrument,
        )
    if len(notes) < 2:
        return notes
    channel = (notes["is_drum"].astype(np.int64) * 128 + notes["program"]) * 128 + notes["pitch"]
    order = np.lexsort((notes["start"], channel))  # stable: ties keep track order
    start_o, end_o = notes["start"][order], notes["end"][order].copy()
    same = channel[order][1:] == channel[order][:-1]
    cut = np.zeros(len(order), bool)
    cut[:-1] = same & (end_o[:-1] > start_o[1:])
    end_o[:-1] = np.where(cut[:-1], start_o[1:], end_o[:-1])
    emptied = cut & (end_o <= start_o)
    end_o[emptied] = np.nan
    notes["trimmed_end"][order] = end_o
    return notes


def split_track(
    track_id: str,
    audio: np.ndarray,
    notes: np.ndarray,
    sample_rate: int,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    tail_seconds: float = DEFAULT_TAIL_SECONDS,
):
    """Yield the track's chunk records (bytes), in order."""
    chunk = int(round(chunk_seconds * sample_rate))
    tail = int(round(tail_seconds * sample_rate))
    if chunk <= 0 or tail < 0:
        raise ValueError(f"chunk_seconds must be > 0 and tail_seconds >= 0, got {chunk}, {tail}")
    # x 32768: the exact inverse of the int16 / 32768 the tracks were decoded with.
    audio_int16 = np.clip(np.rint(audio * 32768.0), -32768, 32767).astype(np.int16)
    num_chunks = max(1, -(-len(audio_int16) // chunk))
    max_velocity = float(notes["velocity"].max()) if len(notes) else 127.0
    for index in range(num_chunks):
        lo = index * chunk
        span = max(1, min(chunk, len(audio_int16) - lo))
        hi = min(lo + chunk + tail, len(audio_int16))
        # The same margin as `notes_near`: events are quantised to steps, so a note that
        # ends a few ms before the chunk can still be tied into a crop at its start.
        t_lo = lo / sample_rate - NOTE_MARGIN_SECONDS
        t_hi = (lo + chunk + tail) / sample_rate + NOTE_MARGIN_SECONDS
        ends = np.fmax(notes["end"], notes["trimmed_end"])  # NaN-safe
        keep = (notes["start"] < t_hi) & (np.maximum(ends, notes["start"]) >= t_lo)
        yield msgpack.packb(
            {
                "track_id": track_id,
                "index": index,
                "num_chunks": num_chunks,
                "start_sample": lo,
                "span": span,
                "sample_rate": int(sample_rate),
                "audio": audio_int16[lo:hi].tobytes(),
                "notes": notes[keep].tobytes(),
                "max_velocity": max_velocity,
            },
            use_bin_type=True,
        )


def decode_chunk(record: bytes) -> Chunk:
    fields = msgpack.unpackb(record, raw=False)
    return Chunk(
        track_id=fields["track_id"],
        index=int(fields["index"]),
        num_chunks=int(fields["num_chunks"]),
        start_sample=int(fields["start_sample"]),
        span=int(fields["span"]),
        sample_rate=int(fields["sample_rate"]),
        audio_int16=np.frombuffer(fields["audio"], np.int16),
        notes=np.frombuffer(fields["notes"], NOTE_DTYPE),
        max_velocity=float(fields["max_velocity"]),
    )


# -------------------------------------------------------------------------------- crops


def random_start(rng: np.random.Generator, chunk: Chunk, window: int) -> int:
    """A crop start within the chunk, so that over a track's chunks the starts are
    uniform as MT3's crops: the first chunk draws from [-(window - 1), span) clipped at 0
    (the track's beginning is seen as often as its middle), the others from [0, span)."""
    if chunk.index == 0:
        return preprocessors.random_crop_start(rng, chunk.span, window)
    return int(rng.integers(0, chunk.span))


def notes_near(
    chunk: Chunk, start_seconds: float, window_seconds: float, trimmed: bool
) -> note_seq.NoteSequence:
    """The chunk's notes that can affect targets of [start, start + window) as a
    NoteSequence (absolute times). ``trimmed``: use the precomputed overlap trim (MT3)."""
    notes = chunk.notes
    ends = notes["trimmed_end"] if trimmed else notes["end"]
    lo = start_seconds - NOTE_MARGIN_SECONDS
    hi = start_seconds + window_seconds + NOTE_MARGIN_SECONDS
    keep = (notes["start"] < hi) & (np.maximum(ends, notes["start"]) >= lo)
    if trimmed:
        keep &= ~np.isnan(ends)
    ns = note_seq.NoteSequence(ticks_per_quarter=220)
    for note, end in zip(notes[keep], ends[keep]):
        ns.notes.add(
            start_time=float(note["start"]),
            end_time=float(end),
            pitch=int(note["pitch"]),
            velocity=int(note["velocity"]),
            program=int(note["program"]),
            is_drum=bool(note["is_drum"]),
            instrument=int(note["instrument"]),
        )
    ns.total_time = float(max((n.end_time for n in ns.notes), default=0.0))
    return ns


def crop_example(
    chunk: Chunk, local_start: int, family: preprocessors.FamilySpec
) -> dict[str, np.ndarray]:
    """The model input of the window starting `local_start` samples into the chunk: the
    same arrays as ``preprocessors.make_example`` on the whole track at that start."""
    if chunk.sample_rate != family.sample_rate:
        raise ChunkStoreError(
            f"chunk of {chunk.track_id} is at {chunk.sample_rate} Hz, {family.name} needs "
            f"{family.sample_rate} Hz"
        )
    window = family.window_samples
    audio = preprocessors.crop_audio(chunk.audio_int16, local_start, window)
    audio *= np.float32(1.0 / 32768.0)  # exact: a power of two, as int16 / 32768
    absolute = chunk.start_sample + local_start
    start_seconds = absolute / family.sample_rate
    window_seconds = window / family.sample_rate
    ns = notes_near(chunk, start_seconds, window_seconds, trimmed=family.name == "mt3")
    features = {"audio_bs": audio}
    if family.name == "mt3":
        features["targets_bl"] = preprocessors.mt3_targets(
            ns, start_seconds, family, chunk.track_id
        )
    else:
        features.update(
            preprocessors.roll_targets(ns, start_seconds, family, max_velocity=chunk.max_velocity)
        )
    return features


@dataclasses.dataclass(frozen=True)
class CropTransform:
    """Chunk record bytes -> one training example: a random crop and its targets (grain's
    random_map; lives here so grain workers import no TensorFlow)."""

    family: preprocessors.FamilySpec

    def random_map(self, record: bytes, rng: np.random.Generator) -> dict[str, np.ndarray]:
        chunk = decode_chunk(record)
        return crop_example(
            chunk, random_start(rng, chunk, self.family.window_samples), self.family
        )

    def __call__(self, record: bytes, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return self.random_map(record, rng)


# -------------------------------------------------------------------------------- store


@dataclasses.dataclass(frozen=True)
class StoreMeta:
    num_chunks: int
    num_tracks: int
    hours: float
    sample_rate: int
    chunk_seconds: float
    tail_seconds: float
    files: tuple[str, ...]  # relative to the store directory
    format_version: int = FORMAT_VERSION

    @property
    def tail_samples(self) -> int:
        return int(round(self.tail_seconds * self.sample_rate))


def store_directory(
    dataset_dir: str, split: str, sample_rate: int, chunk_seconds: float = DEFAULT_CHUNK_SECONDS
) -> str:
    return os.path.join(dataset_dir, STORE_DIR, f"{split}_{sample_rate}hz_{chunk_seconds:g}s")


def read_meta(directory: str) -> StoreMeta | None:
    path = os.path.join(directory, META_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        fields = json.load(f)
    if fields.get("format_version") != FORMAT_VERSION:
        raise ChunkStoreError(
            f"{directory} holds chunk format {fields.get('format_version')}, this amt_jax "
            f"reads {FORMAT_VERSION}; delete the directory to rebuild it"
        )
    fields["files"] = tuple(fields["files"])
    return StoreMeta(**fields)


def write_store(
    directory: str,
    tracks,
    sample_rate: int,
    *,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    tail_seconds: float = DEFAULT_TAIL_SECONDS,
    num_tracks: int | None = None,
    records_per_file: int = RECORDS_PER_FILE,
    description: str = "",
) -> StoreMeta:
    """Write the chunk store of `tracks` (an iterable of `tasks.Track` at `sample_rate`)
    to `directory` (atomically: built aside, then renamed into place)."""
    from array_record.python import array_record_module  # noqa: PLC0415
    from tqdm import tqdm  # noqa: PLC0415

    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".building-", dir=parent)
    files: list[str] = []
    writer = None
    in_file = total = tracks_seen = 0
    samples = 0
    try:
        for track in tqdm(
            tracks, total=num_tracks, desc=f"chunk {description}".strip(), unit="track"
        ):
            notes = track_notes(track.sequence, track.id)
            samples += len(track.audio)
            tracks_seen += 1
            for record in split_track(
                track.id, track.audio, notes, sample_rate, chunk_seconds, tail_seconds
            ):
                if writer is None or in_file == records_per_file:
                    if writer is not None:
                        writer.close()
                    files.append(f"chunks.array_record-{len(files):05d}")
                    # group_size 1: every record readable on its own (random access).
                    writer = array_record_module.ArrayRecordWriter(
                        os.path.join(staging, files[-1]), "group_size:1,uncompressed"
                    )
                    in_file = 0
                writer.write(record)
                in_file += 1
                total += 1
        if writer is not None:
            writer.close()
        if total == 0:
            raise ChunkStoreError(f"no tracks to chunk for {directory}")
        # Final names say how many files there are, as tfds' shards do.
        named = []
        for i, name in enumerate(files):
            final = f"chunks.array_record-{i:05d}-of-{len(files):05d}"
            os.rename(os.path.join(staging, name), os.path.join(staging, final))
            named.append(final)
        meta = StoreMeta(
            num_chunks=total,
            num_tracks=tracks_seen,
            hours=samples / sample_rate / 3600.0,
            sample_rate=int(sample_rate),
            chunk_seconds=float(chunk_seconds),
            tail_seconds=float(tail_seconds),
            files=tuple(named),
        )
        with open(os.path.join(staging, META_FILE), "w", encoding="utf-8") as f:
            json.dump(dataclasses.asdict(meta), f, indent=1)
        try:
            os.rename(staging, directory)
        except OSError:  # another process finished first: keep its (identical) store
            if read_meta(directory) is None:
                raise
            shutil.rmtree(staging, ignore_errors=True)
        return meta
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


class ChunkSource:
    """Random-access chunk records of one store (grain's ``RandomAccessDataSource``
    protocol: ``len`` and ``[i]`` give raw record bytes; picklable into grain workers)."""

    def __init__(self, directory: str):
        meta = read_meta(directory)
        if meta is None:
            raise ChunkStoreError(f"no chunk store in {directory} ({META_FILE} is missing)")
        self.directory, self.meta = directory, meta
        self._source = None

    def _open(self):
        if self._source is None:
            import grain  # noqa: PLC0415

            paths = [os.path.join(self.directory, f) for f in self.meta.files]
            self._source = grain.sources.ArrayRecordDataSource(paths)
            if len(self._source) != self.meta.num_chunks:
                raise ChunkStoreError(
                    f"{self.directory}: {len(self._source)} records on disk, meta.json "
                    f"says {self.meta.num_chunks}; delete the directory to rebuild it"
                )
        return self._source

    def __len__(self) -> int:
        return self.meta.num_chunks

    def __getitem__(self, index: int) -> bytes:
        return self._open()[index]

    def __getstate__(self):
        return {"directory": self.directory, "meta": self.meta, "_source": None}

    def __repr__(self) -> str:
        return f"ChunkSource({self.directory!r}, {self.meta.num_chunks} chunks)"

"""Multi-part works from the music21 corpus, converted to MIDI once and cached.

Conversion costs ~0.2–1 s per chorale/madrigal and minutes for some quartets, so MIDI is
cached under `$AMT_JAX_CACHE` (default `~/.cache/amt_jax`) keyed by the music21 version.
Works are grouped (all harmonisations/movements of one BWV number, one madrigal book, one
opus) so a split by group keeps related material on one side.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re

import note_seq
import numpy as np
from note_seq.protobuf import music_pb2

from amt_jax.data.synth import programs

log = logging.getLogger(__name__)
MUSIC21_EXTENSIONS = (".mxl", ".xml", ".musicxml", ".krn")


@dataclasses.dataclass(frozen=True)
class Work:
    composer: str
    path: str  # absolute path inside the music21 corpus
    name: str  # e.g. "bach/bwv66.6"
    group: str  # e.g. "bach/bwv66"


def cache_dir() -> str:
    import music21  # noqa: PLC0415  (heavy; only needed here)

    root = os.environ.get("AMT_JAX_CACHE", os.path.expanduser("~/.cache/amt_jax"))
    return os.path.join(root, f"music21_{music21.__version__}_midi")


def _group_of(composer: str, stem: str) -> str:
    m = re.match(r"(bwv\d+)", stem)
    if m:
        return f"{composer}/{m.group(1)}"
    m = re.match(r"(madrigal\.\d+)", stem)
    if m:
        return f"{composer}/{m.group(1)}"
    m = re.match(r"(opus\d+)", stem)
    if m:
        return f"{composer}/{m.group(1)}"
    return f"{composer}/{stem}"


def list_works(composers: tuple[str, ...]) -> list[Work]:
    """Score files of the given corpus composers (sorted; single-line works are removed later).

    A few works ship in two encodings (e.g. bach/bwv281 as .krn and .mxl). They would be
    one piece twice (a duplicate tfds key, one cache file), so only the encoding listed
    first in MUSIC21_EXTENSIONS is kept.
    """
    from music21 import corpus  # noqa: PLC0415

    works = []
    for composer in composers:
        by_name: dict[str, tuple[int, str]] = {}
        for path in sorted(str(p) for p in corpus.getComposer(composer)):
            extension = next((e for e in MUSIC21_EXTENSIONS if path.endswith(e)), None)
            if extension is None:
                continue
            name = f"{composer}/{os.path.basename(path).removesuffix(extension)}"
            rank = MUSIC21_EXTENSIONS.index(extension)
            if name not in by_name or rank < by_name[name][0]:
                by_name[name] = (rank, path)
        for name in sorted(by_name):
            stem = name.split("/", 1)[1]
            works.append(Work(composer, by_name[name][1], name, _group_of(composer, stem)))
    return works


@contextlib.contextmanager
def _large_tick_guard():
    """music21 writes 10080 ticks/quarter; pretty_midi rejects long files as 'corrupt'."""
    import pretty_midi  # noqa: PLC0415

    old = pretty_midi.pretty_midi.MAX_TICK
    pretty_midi.pretty_midi.MAX_TICK = int(1e10)
    try:
        yield
    finally:
        pretty_midi.pretty_midi.MAX_TICK = old


def cached_midi(work: Work) -> str:
    """Path of the work's MIDI, converting it with music21 on first use."""
    target = os.path.join(cache_dir(), work.name + ".mid")
    if not os.path.exists(target):
        from music21 import converter  # noqa: PLC0415

        os.makedirs(os.path.dirname(target), exist_ok=True)
        score = converter.parse(work.path)
        tmp = f"{target}.{os.getpid()}.tmp"
        score.write("midi", fp=tmp)
        os.replace(tmp, target)
    return target


def load_work(work: Work) -> music_pb2.NoteSequence:
    with _large_tick_guard():
        return note_seq.midi_file_to_note_sequence(cached_midi(work))


def orchestrate(
    source: music_pb2.NoteSequence, rng: np.random.Generator, max_seconds: float
) -> music_pb2.NoteSequence:
    """Random tempo (×0.8–1.25), a program per part drawn by its register, velocities.

    Notes that start after `max_seconds` (at the new tempo) are cut off with the piece;
    notes sounding there are shortened. This is a crop of the piece, not a data loss.
    """
    scale = float(rng.uniform(0.8, 1.25))  # tempo factor: >1 is faster
    parts = sorted({n.instrument for n in source.notes if not n.is_drum})
    seq = music_pb2.NoteSequence()
    seq.tempos.add(qpm=120.0 * scale)
    for part in parts:
        pitches = [n.pitch for n in source.notes if n.instrument == part]
        register = programs.register_of(float(np.mean(pitches)))
        program = programs.draw(rng, programs.REGISTER_PROGRAMS[register])
        base_velocity = int(rng.integers(60, 111))
        seq.instrument_infos.add(instrument=part, name=f"part{part}_{register}")
        for note in source.notes:
            if note.instrument != part or note.start_time / scale >= max_seconds:
                continue
            n = seq.notes.add()
            n.instrument, n.program, n.pitch = part, program, note.pitch
            n.start_time = note.start_time / scale
            n.end_time = min(note.end_time / scale, max_seconds)
            n.velocity = int(np.clip(base_velocity + rng.integers(-8, 9), 1, 127))
    seq.total_time = max((n.end_time for n in seq.notes), default=0.0)
    return seq

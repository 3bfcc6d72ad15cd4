"""Writers for transcriptions: MIDI, note CSV, posteriors (npz) and a piano-roll PNG.

Every writer goes through :func:`atomic_write`: the content is written to a temporary
name in the target directory and renamed into place (for a URL such as ``gs://``: kept in
memory and uploaded whole through :mod:`amt_jax.storage`), so an interrupted or failed run
never leaves a partial file behind under the final name.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import tempfile
from collections.abc import Iterator

import numpy as np
from note_seq.protobuf import music_pb2

from amt_jax import storage

CSV_COLUMNS = ("onset_s", "offset_s", "pitch", "velocity", "program", "is_drum")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Open a temporary sibling of ``path``; on success rename it to ``path``.

    A URL (``gs://...``): an in-memory buffer, uploaded to ``path`` in one piece on success.
    """
    path = os.fspath(path)
    if storage.is_remote(path):
        buffer = io.BytesIO() if "b" in mode else io.StringIO(newline="")
        yield buffer
        data = buffer.getvalue()
        storage.makedirs(storage.dirname(path))
        storage.write_bytes(path, data if isinstance(data, bytes) else data.encode("utf-8"))
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    prefix = f".{os.path.basename(path)}."
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".partial", dir=directory)
    try:
        with os.fdopen(fd, mode, **({"newline": ""} if "b" not in mode else {})) as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def sequence_to_pretty_midi(sequence: music_pb2.NoteSequence):
    """NoteSequence → PrettyMIDI with one track per (instrument, program, drum) group.

    Drums go on channel 10 (pretty_midi's ``is_drum``), pitch bends onto their group's
    track. Unlike note_seq's converter, groups sharing instrument 0 are never merged (it
    would drop all but one group's notes).
    """
    import pretty_midi

    qpm = sequence.tempos[0].qpm if sequence.tempos else 120.0
    midi = pretty_midi.PrettyMIDI(initial_tempo=qpm)
    tracks: dict[tuple[int, int, bool], pretty_midi.Instrument] = {}

    def track(instrument: int, program: int, is_drum: bool) -> pretty_midi.Instrument:
        key = (instrument, program, bool(is_drum))
        if key not in tracks:
            name = "Drums" if is_drum else pretty_midi.program_to_instrument_name(program)
            tracks[key] = pretty_midi.Instrument(program, is_drum=bool(is_drum), name=name)
        return tracks[key]

    for note in sequence.notes:
        track(note.instrument, note.program, note.is_drum).notes.append(
            pretty_midi.Note(note.velocity, note.pitch, note.start_time, note.end_time)
        )
    for bend in sequence.pitch_bends:
        track(bend.instrument, bend.program, bend.is_drum).pitch_bends.append(
            pretty_midi.PitchBend(bend.bend, bend.time)
        )
    midi.instruments.extend(tracks[key] for key in sorted(tracks))
    return midi


def write_midi(sequence: music_pb2.NoteSequence, path: str | os.PathLike) -> None:
    midi = sequence_to_pretty_midi(sequence)
    with atomic_write(path) as handle:
        midi.write(handle)


def sorted_notes(sequence: music_pb2.NoteSequence) -> list:
    return sorted(sequence.notes, key=lambda n: (n.start_time, n.pitch, n.end_time, n.program))


def write_csv(sequence: music_pb2.NoteSequence, path: str | os.PathLike) -> None:
    """One row per note: onset and offset in seconds, MIDI pitch, velocity, GM program."""
    with atomic_write(path, "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for note in sorted_notes(sequence):
            writer.writerow(
                (
                    f"{note.start_time:.6f}",
                    f"{note.end_time:.6f}",
                    note.pitch,
                    note.velocity,
                    note.program,
                    int(note.is_drum),
                )
            )


def write_posteriors(posteriors: dict[str, np.ndarray], path: str | os.PathLike, **extra) -> None:
    """Frame posteriors (or MT3 tokens) and scalars such as the frame rate, compressed."""
    with atomic_write(path) as handle:
        np.savez_compressed(handle, **posteriors, **{k: np.asarray(v) for k, v in extra.items()})


def note_f1(reference: music_pb2.NoteSequence, estimate: music_pb2.NoteSequence) -> float:
    """mir_eval onset note F1 (50 ms, drums excluded) through amt_jax.metrics."""
    from amt_jax.metrics import transcription as metrics

    ref = metrics.note_arrays(reference)
    est = metrics.note_arrays(estimate)
    ref = ref.select(~ref.is_drum_n)
    est = est.select(~est.is_drum_n)
    return float(metrics.note_scores(ref, est, with_offsets=False)[2])


def plot_piano_roll(
    sequence: music_pb2.NoteSequence,
    path: str | os.PathLike,
    *,
    reference: music_pb2.NoteSequence | None = None,
    title: str = "",
) -> float | None:
    """Piano-roll PNG of the notes; a reference is drawn underneath as outlines and the
    onset F1 against it goes in the title (returned)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    f1 = note_f1(reference, sequence) if reference is not None else None
    notes = list(sequence.notes) + (list(reference.notes) if reference is not None else [])
    end = max((n.end_time for n in notes), default=1.0)
    pitches = [n.pitch for n in notes] or [60]
    figure, axis = plt.subplots(figsize=(max(6.0, min(40.0, end * 0.5)), 4.5), dpi=100)
    try:
        if reference is not None:
            for note in reference.notes:
                axis.add_patch(
                    matplotlib.patches.Rectangle(
                        (note.start_time, note.pitch - 0.5),
                        note.end_time - note.start_time,
                        1.0,
                        fill=False,
                        edgecolor="black",
                        linewidth=0.8,
                    )
                )
        for note in sequence.notes:
            axis.add_patch(
                matplotlib.patches.Rectangle(
                    (note.start_time, note.pitch - 0.4),
                    note.end_time - note.start_time,
                    0.8,
                    color="tab:red" if note.is_drum else "tab:blue",
                    alpha=0.6,
                )
            )
        axis.set_xlim(0, end)
        axis.set_ylim(min(pitches) - 2, max(pitches) + 2)
        axis.set_xlabel("time (s)")
        axis.set_ylabel("MIDI pitch")
        heading = title
        if f1 is not None:
            heading += f"  onset F1 {f1:.3f} vs reference (outlines)"
        axis.set_title(heading.strip())
        figure.tight_layout()
        with atomic_write(path) as handle:
            figure.savefig(handle, format="png")
    finally:
        plt.close(figure)
    return f1


__all__ = [
    "CSV_COLUMNS",
    "atomic_write",
    "note_f1",
    "plot_piano_roll",
    "sequence_to_pretty_midi",
    "write_csv",
    "write_midi",
    "write_posteriors",
]

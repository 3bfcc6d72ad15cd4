"""Render a multi-track NoteSequence to mono audio with FluidSynth, with labels that match.

Facts this module is built around (measured on this machine, see docs/datasets.md):
- FluidSynth applies MIDI events only at 64-sample block boundaries, so every event time is
  snapped *up* to that grid and the snapped times are what the returned labels say.
- The default polyphony of 256 steals voices in dense songs (notes vanish from the audio but
  would stay in the labels), so polyphony is 1024.
- `system_reset()` does not clear the reverb buffer: after each piece 2 s are rendered and
  discarded so one piece's tail never leaks into the next.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging

import numpy as np
from note_seq.protobuf import music_pb2

FLUIDSYNTH_BLOCK = 64  # FLUID_BUFSIZE: the event grid in samples
DRUM_CHANNEL = 9
MELODIC_CHANNELS = tuple(c for c in range(16) if c != DRUM_CHANNEL)
FLUSH_SECONDS = 2.0

log = logging.getLogger(__name__)


def _import_fluidsynth():
    try:
        import fluidsynth  # noqa: PLC0415  (needs the libfluidsynth3 system library)
    except ImportError as e:
        raise ImportError(
            "pyfluidsynth could not load libfluidsynth: install the Debian package "
            "`fluidsynth` (tools/setup.sh installs it)"
        ) from e
    return fluidsynth


@dataclasses.dataclass(frozen=True)
class Track:
    """One rendered part: what the labels say about it and how it was mixed."""

    instrument: int
    program: int
    is_drum: bool
    name: str
    channel: int
    volume_cc: int
    pan_cc: int


@dataclasses.dataclass(frozen=True)
class MixSettings:
    """Per-piece mixing choices (drawn by the caller's RNG so builds are deterministic)."""

    volume_cc: dict[int, int] = dataclasses.field(default_factory=dict)  # instrument -> CC7
    pan_cc: dict[int, int] = dataclasses.field(default_factory=dict)  # instrument -> CC10
    reverb_room: float = 0.2
    reverb_damping: float = 0.0
    reverb_width: float = 0.5
    reverb_level: float = 0.0
    peak_dbfs: float = -3.0
    tail_seconds: float = 1.0


@dataclasses.dataclass(frozen=True)
class Rendered:
    audio: np.ndarray  # int16 [n], mono
    sample_rate: int
    sequence: music_pb2.NoteSequence  # labels with grid-snapped times
    tracks: tuple[Track, ...]


def snap_to_grid(seconds: float, sample_rate: int) -> int:
    """Sample index of the first block boundary at or after `seconds`."""
    samples = int(np.ceil(round(seconds * sample_rate, 6) / FLUIDSYNTH_BLOCK)) * FLUIDSYNTH_BLOCK
    return max(samples, 0)


def snapped_sequence(
    sequence: music_pb2.NoteSequence, sample_rate: int
) -> tuple[music_pb2.NoteSequence, list[tuple[int, int]]]:
    """Copy of `sequence` whose note times sit on the FluidSynth grid.

    Returns the copy and each note's (on_sample, off_sample). Same-pitch notes on one track
    that would overlap after snapping are cut at the next onset, because the synth cuts them
    there too; the labels then describe what is audible.
    """
    out = music_pb2.NoteSequence()
    out.CopyFrom(sequence)
    spans = []
    for note in out.notes:
        on = snap_to_grid(note.start_time, sample_rate)
        off = max(snap_to_grid(note.end_time, sample_rate), on + FLUIDSYNTH_BLOCK)
        spans.append([on, off])
        note.velocity = int(np.clip(note.velocity, 1, 127))
    by_key: dict[tuple, list[int]] = {}
    for i, note in enumerate(out.notes):
        by_key.setdefault((note.instrument, note.program, note.is_drum, note.pitch), []).append(i)
    for indices in by_key.values():
        indices.sort(key=lambda i: spans[i][0])
        for a, b in zip(indices, indices[1:]):
            if spans[a][1] > spans[b][0]:
                spans[a][1] = max(spans[b][0], spans[a][0] + FLUIDSYNTH_BLOCK)
                if spans[a][1] > spans[b][0]:  # two onsets in one block: move the later one
                    spans[b][0] = spans[a][1]
                    spans[b][1] = max(spans[b][1], spans[b][0] + FLUIDSYNTH_BLOCK)
    for note, (on, off) in zip(out.notes, spans):
        note.start_time = on / sample_rate
        note.end_time = off / sample_rate
    out.total_time = max((n.end_time for n in out.notes), default=0.0)
    return out, [tuple(s) for s in spans]


def assign_channels(sequence: music_pb2.NoteSequence) -> dict[tuple[int, int, bool], int]:
    """MIDI channel per (instrument, program, is_drum); melodic tracks sharing a program share
    a channel so up to 15 distinct programs (plus drums) fit."""
    keys = sorted({(n.instrument, n.program, n.is_drum) for n in sequence.notes})
    programs = sorted({k[1] for k in keys if not k[2]})
    if len(programs) > len(MELODIC_CHANNELS):
        raise ValueError(
            f"piece {sequence.id or '?'} needs {len(programs)} melodic programs; "
            f"FluidSynth has {len(MELODIC_CHANNELS)} melodic channels"
        )
    channel_of_program = dict(zip(programs, MELODIC_CHANNELS))
    return {k: DRUM_CHANNEL if k[2] else channel_of_program[k[1]] for k in keys}


_LOADED: dict[tuple[str, int], tuple[object, int]] = {}  # (path, rate) -> (synth, sfont*)


def _loaded_soundfont(fluidsynth, path: str, sample_rate: int) -> int:
    """Address of a `fluid_sfont_t` loaded once per process by a synth that never plays, for
    fresh synths to share (`fluid_synth_add_sfont` does not copy or take ownership)."""
    key = (path, sample_rate)
    if key not in _LOADED:
        lib = fluidsynth._fl
        lib.fluid_synth_get_sfont_by_id.restype = ctypes.c_void_p
        lib.fluid_synth_get_sfont_by_id.argtypes = [ctypes.c_void_p, ctypes.c_int]
        loader = fluidsynth.Synth(samplerate=float(sample_rate))
        sfid = loader.sfload(path)
        if sfid < 0:
            raise OSError(f"FluidSynth could not load soundfont {path}")
        _LOADED[key] = (loader, lib.fluid_synth_get_sfont_by_id(loader.synth, sfid))
    return _LOADED[key][1]


class FluidSynthRenderer:
    """A synth with one soundfont loaded.

    `share_soundfont=True` takes the soundfont from a per-process cache instead of loading it
    (FluidR3_GM: 0.12 s), so a fresh renderer per piece is cheap. The output is the same
    bytes as with a soundfont of its own (checked in tests/data/test_synth_render.py).
    """

    def __init__(
        self,
        soundfont_path: str,
        sample_rate: int = 16000,
        polyphony: int = 1024,
        gain=0.2,
        share_soundfont: bool = False,
    ):
        fluidsynth = _import_fluidsynth()
        self.sample_rate = int(sample_rate)
        self.soundfont_path = soundfont_path
        self._synth = fluidsynth.Synth(
            gain=gain, samplerate=float(sample_rate), **{"synth.polyphony": polyphony}
        )
        self._lib = fluidsynth._fl  # the loaded ctypes CDLL
        self._lib.fluid_synth_get_polyphony.restype = ctypes.c_int
        actual = self._lib.fluid_synth_get_polyphony(ctypes.c_void_p(self._synth.synth))
        if actual < polyphony:
            raise RuntimeError(f"FluidSynth polyphony is {actual}, wanted {polyphony}")
        self._lib.fluid_synth_write_float.argtypes = [ctypes.c_void_p, ctypes.c_int] + [
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int,
        ] * 2
        self._lib.fluid_synth_write_float.restype = ctypes.c_int
        self._shared_sfont = None
        if share_soundfont:
            lib = self._lib
            lib.fluid_synth_add_sfont.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
            lib.fluid_synth_add_sfont.restype = ctypes.c_int
            lib.fluid_synth_remove_sfont.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
            self._shared_sfont = _loaded_soundfont(fluidsynth, soundfont_path, self.sample_rate)
            self._sfid = lib.fluid_synth_add_sfont(self._synth.synth, self._shared_sfont)
        else:
            self._sfid = self._synth.sfload(soundfont_path)
        if self._sfid < 0:
            raise OSError(f"FluidSynth could not load soundfont {soundfont_path}")
        # A voice slot's first use sounds slightly different from later uses; every pitch
        # once up front uses many slots. This does not make a render independent of what
        # this synth rendered before (other state persists): only a fresh synth is, which is
        # why `pieces.render_job` makes one per piece.
        warm_up = music_pb2.NoteSequence(id="warm_up")
        for pitch in range(128):
            warm_up.notes.add(pitch=pitch, velocity=100, start_time=0.0, end_time=0.1)
        self.render(warm_up, MixSettings(tail_seconds=0.0))

    def close(self):
        if self._synth is not None:
            if self._shared_sfont is not None:  # not ours to free
                self._remove_shared_sfont()
            self._synth.delete()
            self._synth = None

    def _remove_shared_sfont(self):
        # Removing the last soundfont resets every channel's program, and each of the 256
        # channels then warns "No preset found": keep FluidSynth's warnings quiet meanwhile.
        lib, warn = self._lib, 2  # FLUID_WARN
        lib.fluid_set_log_function.restype = ctypes.c_void_p
        lib.fluid_set_log_function.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        previous = lib.fluid_set_log_function(warn, None, None)
        try:
            lib.fluid_synth_remove_sfont(self._synth.synth, self._shared_sfont)
        finally:
            lib.fluid_set_log_function(warn, previous, None)
        self._shared_sfont = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _write(self, n: int) -> np.ndarray:
        """Render n stereo frames as float32 [n, 2]."""
        buf = np.zeros((n, 2), np.float32)
        ptr = buf.ctypes.data
        self._lib.fluid_synth_write_float(self._synth.synth, n, ptr, 0, 2, ptr, 1, 2)
        return buf

    def _flush(self):
        self._synth.system_reset()
        n = int(FLUSH_SECONDS * self.sample_rate) // FLUIDSYNTH_BLOCK * FLUIDSYNTH_BLOCK
        self._write(n)

    def render(self, sequence: music_pb2.NoteSequence, mix: MixSettings | None = None) -> Rendered:
        mix = mix or MixSettings()
        if not sequence.notes:
            raise ValueError(f"piece {sequence.id or '?'} has no notes; nothing to render")
        labels, spans = snapped_sequence(sequence, self.sample_rate)
        channels = assign_channels(labels)
        self._flush()
        self._synth.set_reverb(
            mix.reverb_room, mix.reverb_damping, mix.reverb_width * 100.0, mix.reverb_level
        )
        tracks = []
        names = {i.instrument: i.name for i in labels.instrument_infos}
        for (instrument, program, is_drum), channel in sorted(channels.items()):
            bank, preset = (128, 0) if is_drum else (0, program)
            if self._synth.program_select(channel, self._sfid, bank, preset) != 0:
                raise ValueError(
                    f"soundfont {self.soundfont_path} has no preset bank {bank} program {preset}"
                )
            volume = int(mix.volume_cc.get(instrument, 100))
            pan = int(mix.pan_cc.get(instrument, 64))
            self._synth.cc(channel, 7, volume)
            self._synth.cc(channel, 10, pan)
            tracks.append(
                Track(instrument, program, is_drum, names.get(instrument, ""), channel, volume, pan)
            )
        # (sample, order, kind, channel, pitch, velocity): note-offs first at equal times.
        events = []
        for note, (on, off) in zip(labels.notes, spans):
            channel = channels[(note.instrument, note.program, note.is_drum)]
            events.append((on, 1, channel, note.pitch, note.velocity))
            events.append((off, 0, channel, note.pitch, 0))
        events.sort()
        end = max(off for _, off in spans) + int(mix.tail_seconds * self.sample_rate)
        end = int(np.ceil(end / FLUIDSYNTH_BLOCK)) * FLUIDSYNTH_BLOCK
        chunks, position = [], 0
        for sample, is_on, channel, pitch, velocity in events:
            if sample > position:
                chunks.append(self._write(sample - position))
                position = sample
            if is_on:
                self._synth.noteon(channel, pitch, velocity)
            else:
                self._synth.noteoff(channel, pitch)
        chunks.append(self._write(end - position))
        stereo = np.concatenate(chunks)
        self._flush()
        mono = stereo.mean(axis=1)
        peak = float(np.max(np.abs(mono)))
        if peak <= 0:
            raise ValueError(
                f"piece {sequence.id or '?'} rendered silent with {self.soundfont_path}"
            )
        mono *= 10 ** (mix.peak_dbfs / 20) / peak
        audio = np.round(mono * 32767).astype(np.int16)
        return Rendered(audio, self.sample_rate, labels, tuple(tracks))

"""Raw-audio crops and their targets for the three model families (host-side numpy).

Inputs stay raw audio (the jitted model computes log-mel / CQT on device); this module
cuts audio windows and builds the matching targets:
- MT3: token ids (tie section first, EOS last) from `amt_jax.vocab.note_events`.
- Onsets & Frames: onset / offset / frame / velocity rolls, 88 pitches, 31.25 fps, with
  magenta's labels (32 ms onsets and offsets, velocity / the track's max velocity).
- NMP: contour (264 bins, 3 per semitone, bin 3k = MIDI 21+k), note and onset (88 pitches)
  at 22050/256 fps over 43844-sample windows (172 frames), labelled at the nearest
  (centred) frame as Basic Pitch does.

MT3 targets longer than ``target_length`` are cut to ``target_length - 1`` event tokens
plus EOS (seqio's ``append_eos_after_trim`` order) and counted in ``TRIM_COUNTS``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading

import note_seq
import numpy as np

from amt_jax.audio import basic_pitch_constants as basic_pitch
from amt_jax.music import rolls
from amt_jax.vocab import note_events
from amt_jax.vocab.layouts import EOS_ID, PAD_ID, VocabularyConfig

MIN_PITCH, MAX_PITCH = 21, 108
NUM_PITCHES = MAX_PITCH - MIN_PITCH + 1
TRIM_WARNING_EVERY = 100  # log one warning per this many trimmed MT3 targets

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FamilySpec:
    """What one model family eats: sample rate, window length, target builder."""

    name: str
    sample_rate: int
    window_samples: int
    frames_per_second: float = 0.0
    num_frames: int = 0
    target_length: int = 0  # MT3 only
    vocab_layout: str = "mt3"  # MT3 only
    label_rule: str = "magenta"  # rolls only: `rolls.LABEL_RULES`
    onset_length_ms: float = 32.0  # O&F onset label length ("magenta" rule)
    offset_length_ms: float = 32.0  # O&F offset label length ("magenta" rule)


MT3 = FamilySpec("mt3", 16000, 32768, target_length=1024)
ONSETS_FRAMES = FamilySpec("onsets_frames", 16000, 16000 * 5 // 512 * 512, 31.25, 156)
NMP = FamilySpec(
    "nmp",
    basic_pitch.SAMPLE_RATE,
    basic_pitch.WINDOW_SAMPLES,
    basic_pitch.FRAMES_PER_SECOND,
    basic_pitch.FRAMES_PER_WINDOW,
    label_rule="nearest",
    onset_length_ms=0.0,
    offset_length_ms=0.0,
)
FAMILIES = {spec.name: spec for spec in (MT3, ONSETS_FRAMES, NMP)}


def onsets_frames_spec(
    seconds: float, onset_length_ms: float = 32.0, offset_length_ms: float = 32.0
) -> FamilySpec:
    """O&F windows of about `seconds` (a whole number of 512-sample hops)."""
    hops = max(1, int(round(seconds * 16000 / 512)))
    return dataclasses.replace(
        ONSETS_FRAMES,
        window_samples=hops * 512,
        num_frames=hops,
        onset_length_ms=onset_length_ms,
        offset_length_ms=offset_length_ms,
    )


@dataclasses.dataclass
class TrimCounter:
    """MT3 targets cut to fit the target length, in this process (thread-safe)."""

    built: int = 0  # MT3 targets built
    trimmed: int = 0  # of those, cut to target_length
    tokens_dropped: int = 0
    last_trimmed_id: str = ""
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def record(self, example_id: str, num_tokens: int, target_length: int) -> int:
        """Count one target of `num_tokens` (EOS included); returns the trims so far."""
        with self._lock:
            self.built += 1
            if num_tokens <= target_length:
                return self.trimmed
            self.trimmed += 1
            self.tokens_dropped += num_tokens - target_length
            self.last_trimmed_id = example_id
            return self.trimmed

    def reset(self) -> None:
        with self._lock:
            self.built = self.trimmed = self.tokens_dropped = 0
            self.last_trimmed_id = ""

    def as_dict(self) -> dict[str, int]:
        return {"built": self.built, "trimmed": self.trimmed, "tokens_dropped": self.tokens_dropped}


TRIM_COUNTS = TrimCounter()


def crop_audio(audio: np.ndarray, start: int, length: int) -> np.ndarray:
    """audio[start:start+length], zero-padded where the window leaves the track."""
    out = np.zeros(length, np.float32)
    lo, hi = max(start, 0), min(start + length, len(audio))
    if hi > lo:
        out[lo - start : hi - start] = audio[lo:hi]
    return out


def random_crop_start(rng: np.random.Generator, num_samples: int, window: int) -> int:
    """Uniform start in [-(window-1), num_samples) clipped at 0, as MT3's crops: the track
    edges are seen as often as the middle."""
    start = int(rng.integers(-(window - 1), max(num_samples, 1)))
    return max(start, 0)


def segment_starts(num_samples: int, window: int) -> list[int]:
    """Consecutive non-overlapping windows covering the whole track (last one padded)."""
    return list(range(0, max(num_samples, 1), window))


def mt3_targets(
    ns: note_seq.NoteSequence,
    start_seconds: float,
    spec: FamilySpec,
    example_id: str = "?",
    counter: TrimCounter | None = None,
) -> np.ndarray:
    """int32 [target_length]: tie section + events + EOS, zero-padded.

    `ns` must already have sustain applied (`tasks.decode_track` does it once per track).
    Too many tokens: the first `target_length - 1` are kept and EOS appended (seqio's
    `append_eos_after_trim`; MT3's own `handle_too_long` would stop the pipeline), and
    the trim is counted in `counter` (default `TRIM_COUNTS`) and logged every
    `TRIM_WARNING_EVERY` trims.
    """
    counter = TRIM_COUNTS if counter is None else counter
    config = VocabularyConfig.named(spec.vocab_layout)
    segment_seconds = spec.window_samples / spec.sample_rate
    (ids,) = note_events.encode_note_sequence(
        ns, config, segment_seconds, start_times=[start_seconds], apply_sustain_pedal=False
    )
    trims = counter.record(example_id, len(ids), spec.target_length)
    if len(ids) > spec.target_length:
        if (trims - 1) % TRIM_WARNING_EVERY == 0:  # the 1st, N+1st, ... trim
            log.warning(
                "%s: %d target tokens at %.3f s cut to the target length %d "
                "(%d of %d MT3 targets trimmed so far)",
                example_id,
                len(ids),
                start_seconds,
                spec.target_length,
                trims,
                counter.built,
            )
        ids = np.concatenate([ids[: spec.target_length - 1], [EOS_ID]])
    out = np.full(spec.target_length, PAD_ID, np.int32)
    out[: len(ids)] = ids
    return out


def roll_targets(
    ns: note_seq.NoteSequence,
    start_seconds: float,
    spec: FamilySpec,
    max_velocity: float | None = None,
) -> dict[str, np.ndarray]:
    """Frame rolls of the window starting at `start_seconds` (drums are not drawn).

    O&F velocities are scaled by the track's loudest note, `max_velocity` (default: the
    loudest note of `ns`, then the whole track; magenta takes the maximum before cutting
    the file into chunks). Labels of notes crossing the window edges are those of the
    whole track on the window's frame grid.
    """
    roll = rolls.notes_to_roll(
        ns,
        spec.frames_per_second,
        num_frames=spec.num_frames,
        start_seconds=start_seconds,
        min_pitch=MIN_PITCH,
        max_pitch=MAX_PITCH,
        rule=spec.label_rule,
        onset_length_ms=spec.onset_length_ms,
        offset_length_ms=spec.offset_length_ms,
        max_velocity=127.0 if spec.name == "nmp" else max_velocity,  # None: ns's maximum
    )
    if spec.name == "nmp":
        contour = np.zeros((spec.num_frames, basic_pitch.N_CONTOUR_BINS), np.float32)
        contour[:, 0 :: basic_pitch.BINS_PER_SEMITONE] = roll.frames_tp  # bin 3k: MIDI 21 + k
        return {"contour_btf": contour, "note_btp": roll.frames_tp, "onset_btp": roll.onsets_tp}
    return {
        "onset_btp": roll.onsets_tp,
        "offset_btp": roll.offsets_tp,
        "frame_btp": roll.frames_tp,
        "velocity_btp": roll.velocities_tp,
    }


def make_example(
    audio: np.ndarray,
    ns: note_seq.NoteSequence,
    start_sample: int,
    spec: FamilySpec,
    example_id: str = "?",
) -> dict[str, np.ndarray]:
    """One model input: raw audio window + the family's targets (no batch axis)."""
    start_seconds = start_sample / spec.sample_rate
    features = {"audio_bs": crop_audio(audio, start_sample, spec.window_samples)}
    if spec.name == "mt3":
        features["targets_bl"] = mt3_targets(ns, start_seconds, spec, example_id)
    else:
        features.update(roll_targets(ns, start_seconds, spec))
    return features

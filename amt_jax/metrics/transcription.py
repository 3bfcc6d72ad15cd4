"""Transcription metrics on NoteSequences: mir_eval for notes, roll-cell counts for frames.

The conventions follow MT3's evaluation (and mir_eval's defaults, which O&F, Kong and
hFT also use):

- note metrics (onset, onset+offset, +velocity) on the **drumless** sequence, with
  mir_eval's default tolerances (50 ms onsets, offsets max(50 ms, 0.2 x duration));
- frame metrics on piano rolls of the decoded notes, counted by a named convention
  (``FRAME_CONVENTIONS``, keyword ``frame_convention``; papers' frame F1s differ here):
  ``"mt3"`` (the default) uses 62.5 fps, notes shorter than 50 ms extended to 50 ms and
  reference cells kept only where velocity > 30, so even a perfect copy of a reference
  with quiet notes scores below 1; ``"onsets_frames"`` uses magenta's 31.25 fps label
  rule over the 88 piano keys without any threshold; ``"basic_pitch"`` a plain 10 ms
  grid (nearest frames). Precision/recall count (frame, pitch) cells on the common grid;
- multi-instrument F1 at ``flat`` / ``midi_class`` / ``full`` program granularity: one
  mir_eval matching per (program, is_drum) track, onset+offset for pitched tracks and
  onset-only for drums, then precision pooled over estimated notes and recall over
  reference notes;
- every metric is computed per full track and then averaged over tracks
  (:func:`aggregate_track_metrics`).
"""

from __future__ import annotations

import collections
import dataclasses
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence

import mir_eval
import numpy as np
from note_seq.protobuf import music_pb2

FRAMES_PER_SECOND = 62.5
MIN_NOTE_SECONDS = 0.05
REFERENCE_VELOCITY_THRESHOLD = 30
PROGRAM_GRANULARITIES = ("flat", "midi_class", "full")
FRAME_RULES = ("pretty_midi", "magenta", "nearest")


@dataclasses.dataclass(frozen=True)
class FrameConvention:
    """How one system turns notes into (frame, pitch) cells for frame P/R/F1.

    ``frame_rule`` maps a note [s, e) to frames: ``"pretty_midi"`` [int(s*fps), int(e*fps));
    ``"magenta"`` [floor(s*fps), max(ceil(e*fps), floor(s*fps) + 1)) (note_seq's
    sequence_to_pianoroll); ``"nearest"`` round(s*fps) through round(e*fps) (mirdata's
    NoteData.to_multif0). A reference cell is on when the summed velocity of its notes
    exceeds ``reference_velocity_threshold`` (None: when any note covers it), an estimate
    cell likewise with ``estimate_velocity_threshold``.
    """

    frames_per_second: float
    frame_rule: str = "pretty_midi"
    min_note_seconds: float = 0.0  # shorter notes are extended to this length first
    reference_velocity_threshold: float | None = None
    estimate_velocity_threshold: float | None = None
    pitch_range: tuple[int, int] = (0, 127)  # inclusive; notes outside are not drawn
    source: str = ""


FRAME_CONVENTIONS: dict[str, FrameConvention] = {
    "mt3": FrameConvention(
        FRAMES_PER_SECOND,
        frame_rule="pretty_midi",
        min_note_seconds=MIN_NOTE_SECONDS,
        reference_velocity_threshold=REFERENCE_VELOCITY_THRESHOLD,
        estimate_velocity_threshold=0,
        source="MT3 metrics: pretty_midi rolls, notes >= 50 ms, reference velocity > 30",
    ),
    "onsets_frames": FrameConvention(
        16000 / 512,
        frame_rule="magenta",
        pitch_range=(21, 108),
        source="magenta O&F: sequence_to_pianoroll of both sequences, 32 ms frames, 88 keys",
    ),
    "basic_pitch": FrameConvention(
        100.0,
        frame_rule="nearest",
        source="Basic Pitch paper: frame scores on a 10 ms grid (mirdata to_multif0 rolls)",
    ),
}


def get_frame_convention(name: str | FrameConvention) -> FrameConvention:
    """The named frame convention (a ``FrameConvention`` passes through)."""
    if isinstance(name, FrameConvention):
        return name
    try:
        return FRAME_CONVENTIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown frame convention {name!r}; choose one of {', '.join(FRAME_CONVENTIONS)}"
        ) from None


@dataclasses.dataclass(frozen=True)
class NoteArrays:
    """Notes of one sequence in mir_eval's layout."""

    intervals_n2: np.ndarray  # [n, 2] onset/offset seconds
    pitches_hz_n: np.ndarray  # [n] pitch in Hz
    pitches_midi_n: np.ndarray  # [n] MIDI pitch
    velocities_n: np.ndarray  # [n] MIDI velocity
    programs_n: np.ndarray  # [n] GM program
    is_drum_n: np.ndarray  # [n] bool
    zero_length: int  # notes with end <= start, not representable in mir_eval

    def __len__(self) -> int:
        return len(self.pitches_midi_n)

    def select(self, mask_n: np.ndarray) -> NoteArrays:
        return NoteArrays(
            self.intervals_n2[mask_n],
            self.pitches_hz_n[mask_n],
            self.pitches_midi_n[mask_n],
            self.velocities_n[mask_n],
            self.programs_n[mask_n],
            self.is_drum_n[mask_n],
            0,
        )


def note_arrays(sequence: music_pb2.NoteSequence) -> NoteArrays:
    """Convert a NoteSequence to arrays; zero-length notes are counted, not kept.

    mir_eval rejects intervals with end <= start, so such notes are left out of the arrays
    and reported through ``zero_length`` (and the ``Zero-length ... notes`` metrics).
    """
    notes = [n for n in sequence.notes if n.end_time > n.start_time]
    zero_length = len(sequence.notes) - len(notes)
    intervals = np.array([[n.start_time, n.end_time] for n in notes], dtype=np.float64)
    pitches = np.array([n.pitch for n in notes], dtype=np.int64)
    return NoteArrays(
        intervals_n2=intervals.reshape(-1, 2),
        pitches_hz_n=mir_eval.util.midi_to_hz(pitches.astype(np.float64)),
        pitches_midi_n=pitches,
        velocities_n=np.array([n.velocity for n in notes], dtype=np.float64),
        programs_n=np.array([n.program for n in notes], dtype=np.int64),
        is_drum_n=np.array([n.is_drum for n in notes], dtype=bool),
        zero_length=zero_length,
    )


def _prf(precision: float, recall: float, f1: float, name: str) -> dict[str, float]:
    return {
        f"{name} precision": float(precision),
        f"{name} recall": float(recall),
        f"{name} F1": float(f1),
    }


def _quiet(fn: Callable, *args, **kwargs):
    """mir_eval warns on empty reference/estimate; those cases are well defined (0 scores)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fn(*args, **kwargs)


def note_scores(
    reference: NoteArrays,
    estimate: NoteArrays,
    *,
    with_offsets: bool,
    onset_tolerance: float = 0.05,
    offset_min_tolerance: float = 0.05,
) -> tuple[float, float, float]:
    """mir_eval note P/R/F1; onset-only when ``with_offsets`` is False."""
    precision, recall, f1, _ = _quiet(
        mir_eval.transcription.precision_recall_f1_overlap,
        reference.intervals_n2,
        reference.pitches_hz_n,
        estimate.intervals_n2,
        estimate.pitches_hz_n,
        onset_tolerance=onset_tolerance,
        offset_ratio=0.2 if with_offsets else None,
        offset_min_tolerance=offset_min_tolerance,
    )
    return precision, recall, f1


def velocity_scores(
    reference: NoteArrays, estimate: NoteArrays, *, with_offsets: bool
) -> tuple[float, float, float]:
    """mir_eval ``transcription_velocity`` P/R/F1 (velocity tolerance 0.1 after rescaling)."""
    precision, recall, f1, _ = _quiet(
        mir_eval.transcription_velocity.precision_recall_f1_overlap,
        reference.intervals_n2,
        reference.pitches_hz_n,
        reference.velocities_n,
        estimate.intervals_n2,
        estimate.pitches_hz_n,
        estimate.velocities_n,
        offset_ratio=0.2 if with_offsets else None,
    )
    return precision, recall, f1


def _frame_spans(starts, ends, frames_per_second, frame_rule):
    """[first, stop) frames of each note under ``frame_rule`` (see ``FrameConvention``)."""
    if frame_rule == "pretty_midi":
        return (
            (starts * frames_per_second).astype(np.int64),
            (ends * frames_per_second).astype(np.int64),
        )
    if frame_rule == "magenta":
        first = np.floor(starts * frames_per_second).astype(np.int64)
        stop = np.ceil(ends * frames_per_second).astype(np.int64)
        return first, np.maximum(stop, first + 1)
    if frame_rule == "nearest":
        first = np.floor(starts * frames_per_second + 0.5).astype(np.int64)
        last = np.floor(ends * frames_per_second + 0.5).astype(np.int64)
        return first, np.maximum(last, first) + 1
    raise ValueError(f"Unknown frame rule {frame_rule!r}; choose one of {FRAME_RULES}")


def piano_roll(
    notes: NoteArrays,
    *,
    frames_per_second: float = FRAMES_PER_SECOND,
    min_note_seconds: float = MIN_NOTE_SECONDS,
    velocity_threshold: float | None = 0,
    num_frames: int | None = None,
    frame_rule: str = "pretty_midi",
    pitch_range: tuple[int, int] = (0, 127),
) -> np.ndarray:
    """Binary [frames, 128] roll: cell (t, p) is on when a note of pitch p covers frame t.

    Frames follow ``frame_rule`` (default pretty_midi's ``[int(start * fps), int(end * fps))``)
    after extending notes shorter than ``min_note_seconds``; summed velocities must exceed
    ``velocity_threshold`` for a cell to be on (None: any covering note turns it on).
    Pitches outside ``pitch_range`` (inclusive) are left out.
    """
    keep = (notes.pitches_midi_n >= pitch_range[0]) & (notes.pitches_midi_n <= pitch_range[1])
    notes = notes.select(keep) if len(notes) else notes
    starts = notes.intervals_n2[:, 0] if len(notes) else np.zeros(0)
    ends = notes.intervals_n2[:, 1] if len(notes) else np.zeros(0)
    ends = np.maximum(ends, starts + min_note_seconds)
    start_frames, end_frames = _frame_spans(starts, ends, frames_per_second, frame_rule)
    total = int(end_frames.max()) if len(notes) else 0
    total = max(total, num_frames or 0)
    velocity_tp = np.zeros((total, 128), dtype=np.float64)
    covered_tp = np.zeros((total, 128), dtype=bool)
    for start, end, pitch, velocity in zip(
        start_frames, end_frames, notes.pitches_midi_n, notes.velocities_n
    ):
        velocity_tp[start:end, pitch] += velocity
        covered_tp[start:end, pitch] = True
    if velocity_threshold is None:
        return covered_tp
    return velocity_tp > velocity_threshold


def frame_scores(
    reference: NoteArrays,
    estimate: NoteArrays,
    *,
    frame_convention: str | FrameConvention = "mt3",
) -> tuple[float, float, float]:
    """Frame P/R/F1 under a named convention (:data:`FRAME_CONVENTIONS`, or a
    ``FrameConvention``): (frame, pitch) cells counted on a shared grid."""
    convention = get_frame_convention(frame_convention)
    fps = convention.frames_per_second

    def roll(notes: NoteArrays, threshold: float | None) -> np.ndarray:
        return piano_roll(
            notes,
            frames_per_second=fps,
            min_note_seconds=convention.min_note_seconds,
            velocity_threshold=threshold,
            frame_rule=convention.frame_rule,
            pitch_range=convention.pitch_range,
        )

    ref_roll = roll(reference, convention.reference_velocity_threshold)
    est_roll = roll(estimate, convention.estimate_velocity_threshold)
    num_frames = max(len(ref_roll), len(est_roll), 1)
    ref_roll = np.pad(ref_roll, ((0, num_frames - len(ref_roll)), (0, 0)))
    est_roll = np.pad(est_roll, ((0, num_frames - len(est_roll)), (0, 0)))
    # plain cell counts, as MT3's sklearn call: mir_eval.multipitch gives the same numbers
    # on a shared grid but rejects frequencies above 5 kHz (MIDI > 111)
    true_positives = int(np.count_nonzero(ref_roll & est_roll))
    num_est, num_ref = int(np.count_nonzero(est_roll)), int(np.count_nonzero(ref_roll))
    precision = true_positives / num_est if num_est else 0.0
    recall = true_positives / num_ref if num_ref else 0.0
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return precision, recall, f1


def program_map(granularity: str) -> Callable[[np.ndarray], np.ndarray]:
    """Program mapping for multi-instrument F1: ``flat`` (one instrument), ``midi_class``
    (the 16 GM families, first program of the family), ``full`` (program as is)."""
    if granularity == "flat":
        return np.zeros_like
    if granularity == "midi_class":
        return lambda programs: 8 * (programs // 8)
    if granularity == "full":
        return lambda programs: programs
    raise ValueError(f"Unknown program granularity {granularity!r}; use {PROGRAM_GRANULARITIES}")


def program_aware_scores(
    reference: NoteArrays, estimate: NoteArrays, granularity: str
) -> dict[str, float]:
    """Multi-instrument P/R/F1: per-(program, is_drum) matching, pooled over the track."""
    mapping = program_map(granularity)

    def instruments(notes: NoteArrays) -> np.ndarray:
        programs = np.where(notes.is_drum_n, 0, mapping(notes.programs_n))
        return np.stack([programs, notes.is_drum_n.astype(np.int64)], axis=-1).reshape(-1, 2)

    ref_instruments, est_instruments = instruments(reference), instruments(estimate)
    keys = sorted({tuple(k) for k in ref_instruments} | {tuple(k) for k in est_instruments})
    # precision pooled over estimated notes, recall over reference notes
    pooled: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
    for program, is_drum in keys:
        ref_mask = (ref_instruments[:, 0] == program) & (ref_instruments[:, 1] == is_drum)
        est_mask = (est_instruments[:, 0] == program) & (est_instruments[:, 1] == is_drum)
        ref_track, est_track = reference.select(ref_mask), estimate.select(est_mask)
        precision, recall, _ = note_scores(ref_track, est_track, with_offsets=not is_drum)
        groups = ["all", "drum" if is_drum else "nondrum"]
        for group in groups:
            sums = pooled[group]
            sums[0] += precision * len(est_track)
            sums[1] += len(est_track)
            sums[2] += recall * len(ref_track)
            sums[3] += len(ref_track)
    names = {
        "all": f"Onset + offset + program ({granularity})",
        "nondrum": f"Nondrum onset + offset + program ({granularity})",
        "drum": f"Drum onset ({granularity})",
    }
    result: dict[str, float] = {}
    for group, name in names.items():
        if group not in pooled:
            continue
        weighted_p, n_est, weighted_r, n_ref = pooled[group]
        precision = weighted_p / n_est if n_est else 0.0
        recall = weighted_r / n_ref if n_ref else 0.0
        f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
        result.update(_prf(precision, recall, f1, name))
    return result


def track_metrics(
    reference: music_pb2.NoteSequence,
    estimate: music_pb2.NoteSequence,
    *,
    with_velocity: bool = False,
    program_granularities: Sequence[str] = (),
    frame_convention: str = "mt3",
) -> dict[str, float]:
    """All metrics for one full track (reference and estimate NoteSequences).

    ``with_velocity`` adds mir_eval's velocity-aware scores (for models that predict
    velocity); ``program_granularities`` adds multi-instrument F1 (for MT3);
    ``frame_convention`` names how frame F1 is counted (:data:`FRAME_CONVENTIONS`).
    """
    convention = get_frame_convention(frame_convention)  # unknown names fail before scoring
    ref_all, est_all = note_arrays(reference), note_arrays(estimate)
    ref, est = ref_all.select(~ref_all.is_drum_n), est_all.select(~est_all.is_drum_n)
    metrics: dict[str, float] = {}
    metrics.update(_prf(*note_scores(ref, est, with_offsets=False), "Onset"))
    metrics.update(_prf(*note_scores(ref, est, with_offsets=True), "Onset + offset"))
    if with_velocity:
        metrics.update(_prf(*velocity_scores(ref, est, with_offsets=False), "Onset + velocity"))
        metrics.update(
            _prf(*velocity_scores(ref, est, with_offsets=True), "Onset + offset + velocity")
        )
    metrics.update(_prf(*frame_scores(ref, est, frame_convention=convention), "Frame"))
    for granularity in program_granularities:
        metrics.update(program_aware_scores(ref_all, est_all, granularity))
    metrics["Zero-length reference notes"] = float(ref_all.zero_length)
    metrics["Zero-length estimated notes"] = float(est_all.zero_length)
    return metrics


def aggregate_track_metrics(per_track: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Mean over tracks of each metric (over the tracks that report it), as MT3 and O&F."""
    values: dict[str, list[float]] = collections.defaultdict(list)
    for metrics in per_track:
        for name, value in metrics.items():
            values[name].append(float(value))
    return {name: float(np.mean(v)) for name, v in values.items()}

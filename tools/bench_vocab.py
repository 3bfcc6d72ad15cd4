"""Encode / decode speed of the MT3 event vocabulary on one hour of dense notes.

Usage: python tools/bench_vocab.py [--notes 50000] [--hours 1]

Goal: encoding 1 hour of dense multi-instrument notes (50k notes) into 2.048 s
segments takes < 10 s on the 2-core machine. The "peer" here is the real-time budget:
the ratio printed is audio duration / encode time.
"""

from __future__ import annotations

import argparse
import time

import note_seq
import numpy as np

from amt_jax.vocab.layouts import VocabularyConfig
from amt_jax.vocab.note_events import decode_segments, encode_note_sequence, segment_start_times


def dense_sequence(num_notes: int, seconds: float, seed: int = 0) -> note_seq.NoteSequence:
    """Random multi-instrument notes (25 % drums) spread over ``seconds``."""
    rng = np.random.default_rng(seed)
    ns = note_seq.NoteSequence()
    starts = rng.uniform(0, seconds, num_notes)
    durations = rng.exponential(0.5, num_notes) + 0.01
    for start, dur, pitch, vel, prog, drum in zip(
        starts,
        durations,
        rng.integers(21, 109, num_notes),
        rng.integers(1, 128, num_notes),
        rng.integers(0, 128, num_notes),
        rng.random(num_notes) < 0.25,
    ):
        ns.notes.add(
            start_time=float(start),
            end_time=float(min(start + dur, seconds)),
            pitch=int(pitch),
            velocity=int(vel),
            program=int(prog),
            is_drum=bool(drum),
        )
    ns.total_time = seconds
    return ns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes", type=int, default=50_000)
    parser.add_argument("--hours", type=float, default=1.0)
    args = parser.parse_args()
    seconds = args.hours * 3600
    ns = dense_sequence(args.notes, seconds)
    for name in ("mt3", "seed"):
        config = VocabularyConfig.named(name)
        t0 = time.perf_counter()
        segments, encode_stats = encode_note_sequence(ns, config, return_stats=True)
        encode_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        decoded, stats = decode_segments(segments, segment_start_times(len(segments)), config)
        decode_s = time.perf_counter() - t0
        tokens = sum(len(s) for s in segments)
        print(
            f"{name:5s}: {args.notes} notes / {seconds:.0f} s -> {len(segments)} segments, "
            f"{tokens} tokens; encode {encode_s:.2f} s ({seconds / encode_s:.0f}x real time, "
            f"goal < 10 s), decode {decode_s:.2f} s; {len(decoded.notes)} notes decoded, "
            f"{stats.num_invalid_events} invalid events; encoder merged "
            f"{encode_stats.merged_same_onset} same-onset duplicates and trimmed "
            f"{encode_stats.trimmed_overlaps} overlaps (counted, not dropped silently)"
        )


if __name__ == "__main__":
    main()

"""Time a fraction of a synthetic build and extrapolate to the whole build.

Usage: python tools/time_synthetic_build.py [--config default] [--per_source 12] [--num_workers 2]

Renders the first N pieces of each source of the config (FluidR3) with the
builder's worker pool, then scales each source's seconds-per-piece and render speed to the
config's piece counts (train/validation/test plus the unseen-soundfont re-render of test).
music21 conversion of uncached works is included in the measured time.
"""

from __future__ import annotations

import argparse
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default", help="tiny, small or default")
    parser.add_argument("--per_source", type=int, default=12)
    parser.add_argument("--num_workers", type=int, default=2)
    args = parser.parse_args()

    from amt_jax.data.builders.synthetic import AmtSynthetic
    from amt_jax.data.synth import pieces

    configs = {config.name: config for config in AmtSynthetic.BUILDER_CONFIGS}
    c = configs[args.config]
    all_pieces = pieces.list_pieces(
        c.seed,
        c.n_generated,
        c.n_piano,
        c.n_mma,
        c.music21_composers,
        c.max_music21_works,
        c.seconds_range,
    )
    by_source: dict[str, list] = {}
    for piece in all_pieces:
        by_source.setdefault(piece.source, []).append(piece)
    sample = [p for members in by_source.values() for p in members[: args.per_source]]
    jobs = [pieces.RenderJob(p, "FluidR3_GM", c.seed, c.sample_rate) for p in sample]
    start = time.time()
    seconds: dict[str, float] = {}
    for result in pieces.render_jobs(jobs, args.num_workers):
        if "error" in result:
            print("error:", result)
            continue
        seconds[result["source"]] = seconds.get(result["source"], 0.0) + (
            len(result["audio"]) / c.sample_rate
        )
    wall = time.time() - start
    rendered = sum(seconds.values())
    speed = rendered / wall
    total = sum(seconds[s] / args.per_source * len(by_source[s]) for s in seconds)
    test_fraction = dict(c.split_fractions)["test"]
    build_minutes = total * (1 + test_fraction) / speed / 60
    print(f"pieces per source: { {s: len(v) for s, v in by_source.items()} }")
    print(
        f"rendered {rendered / 60:.1f} min of audio in {wall:.1f} s with "
        f"{args.num_workers} workers: {speed:.0f}x real time"
    )
    print(
        f"estimated {c.name} dataset: {total / 3600:.1f} h of audio "
        f"({total * dict(c.split_fractions)['train'] / 3600:.1f} h train), "
        f"build ≈ {build_minutes:.0f} min"
    )


if __name__ == "__main__":
    main()

"""Time a whole synthetic build: plain (render processes) vs Apache Beam (FnApiRunner).

Usage:
  python tools/time_synthetic_build.py --config small                 # plain, beam1, beam2
  python tools/time_synthetic_build.py --config default --modes plain beam2t

Each mode builds the config into its own temporary data_dir. `plain` renders with
`--plain_workers` processes; `beamN` builds on Beam's FnApiRunner with N worker processes
(`--direct_running_mode=multi_processing`), `beamNt` with N threads (`multi_threading`).
The music21 corpus conversion is cached, so it is done (and timed) once up front and every
build starts with a warm cache. At the end the builds are compared: same splits, and at
every index the same key and the same bytes (a digest of every field), which is the
property the Beam path promises. A build whose runner lost examples fails (see
`amt_jax.data.builders.beam_build.check_written`) and is reported as such.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _convert(work) -> str:
    from amt_jax.data.synth import music21_corpus  # noqa: PLC0415

    try:
        music21_corpus.cached_midi(work)
    except Exception as e:  # noqa: BLE001  (the build reports such pieces itself)
        return f"{work.name}: {type(e).__name__}: {e}"
    return ""


def warm_music21_cache(config, workers: int) -> tuple[int, float]:
    """Convert (and cache) every music21 work the config uses; (works, seconds)."""
    import concurrent.futures  # noqa: PLC0415
    import multiprocessing  # noqa: PLC0415

    from amt_jax.data.synth import music21_corpus, pieces  # noqa: PLC0415

    c = config
    specs = pieces.list_pieces(
        c.seed,
        c.n_generated,
        c.n_piano,
        c.n_mma,
        c.music21_composers,
        c.max_music21_works,
        c.seconds_range,
    )
    works = [
        music21_corpus.Work(s.key.split("/")[0], s.music21_path, s.key, s.group)
        for s in specs
        if s.source == "music21"
    ]
    start = time.time()
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        for error in pool.map(_convert, works):
            if error:
                print("  music21", error)
    return len(works), time.time() - start


def digest(builder) -> dict[str, list[tuple[str, str]]]:
    """Per split, (key, sha256 of all fields) in index order."""
    out = {}
    for split in builder.info.splits.keys():
        source = builder.as_data_source(split)
        rows = []
        for i in range(len(source)):
            example = source[i]
            h = hashlib.sha256()
            for field in sorted(example):
                value = example[field]
                if isinstance(value, dict):
                    for sub in sorted(value):
                        h.update(repr(list(value[sub])).encode())
                elif hasattr(value, "tobytes"):
                    h.update(value.tobytes())
                else:
                    h.update(repr(value).encode())
            rows.append((example["id"].decode(), h.hexdigest()))
        out[split] = rows
    return out


def _beam_mode(mode: str) -> tuple[int, str]:
    """'beam2' -> (2, multi_processing); 'beam2t' -> (2, multi_threading)."""
    threads = mode.endswith("t")
    return int(mode.removeprefix("beam").removesuffix("t")), (
        "multi_threading" if threads else "multi_processing"
    )


def build(config_name: str, mode: str, data_dir: str, plain_workers: int):
    import tensorflow_datasets as tfds  # noqa: PLC0415

    from amt_jax.data.builders.synthetic import AmtSynthetic  # noqa: PLC0415

    builder = AmtSynthetic(config=config_name, data_dir=data_dir)
    if mode == "plain":
        os.environ["AMT_JAX_RENDER_WORKERS"] = str(plain_workers)
        download_config = tfds.download.DownloadConfig()
    else:
        from apache_beam.options.pipeline_options import PipelineOptions  # noqa: PLC0415

        workers, running_mode = _beam_mode(mode)
        flags = [
            "--runner=FnApiRunner",
            f"--direct_num_workers={workers}",
            f"--direct_running_mode={running_mode}",
        ]
        download_config = tfds.download.DownloadConfig(beam_options=PipelineOptions(flags=flags))
    start = time.time()
    builder.download_and_prepare(download_config=download_config)
    return builder, time.time() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="small", help="tiny, small or default")
    parser.add_argument("--modes", nargs="+", default=["plain", "beam1", "beam2"])
    parser.add_argument("--plain_workers", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the built data_dirs")
    args = parser.parse_args()

    import logging  # noqa: PLC0415

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    logging.getLogger("amt_jax").setLevel(logging.INFO)  # skip counts of each build
    from amt_jax.data.builders.synthetic import AmtSynthetic  # noqa: PLC0415

    config = {c.name: c for c in AmtSynthetic.BUILDER_CONFIGS}[args.config]
    n_works, seconds = warm_music21_cache(config, args.plain_workers)
    print(f"music21 cache: {n_works} works ready in {seconds:.1f} s (not in the build times)")
    root = tempfile.mkdtemp(prefix=f"amt_synth_{config.name}_")
    results, digests = {}, {}
    try:
        for mode in args.modes:
            load_before = os.getloadavg()[0]
            try:
                builder, wall = build(
                    config.name, mode, os.path.join(root, mode), args.plain_workers
                )
            except RuntimeError as e:
                print(f"{mode}: FAILED (1-min load {os.getloadavg()[0]:.1f}): {e}", flush=True)
                continue
            splits = builder.info.splits
            audio_s = sum(  # from the records: what was actually built
                len(ex["audio"]) / ex["sample_rate"]
                for split in splits.keys()
                for ex in (
                    builder.as_data_source(split)[i] for i in range(splits[split].num_examples)
                )
            )
            digests[mode] = digest(builder)
            jobs = builder.split_jobs()
            for split, rows in digests[mode].items():
                wanted = {f"{j.spec.name}__{j.soundfont}" for j in jobs[split]}
                missing = sorted(wanted - {key for key, _ in rows})
                print(f"  {split}: {len(rows)} of {len(wanted)} pieces", *missing[:5])
            results[mode] = wall
            load_after = os.getloadavg()[0]
            workers = args.plain_workers if mode == "plain" else _beam_mode(mode)[0]
            print(
                f"{mode:6s} ({workers} worker{'s' * (workers > 1)}): {wall:7.1f} s for "
                f"{sum(s.num_examples for s in splits.values())} examples, "
                f"{audio_s / 3600:.2f} h of audio ({audio_s / wall:.0f}x real time); "
                f"1-min load {load_before:.1f} -> {load_after:.1f}",
                flush=True,
            )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print("kept", root)
    if not results:
        raise SystemExit(1)
    first, *others = list(results)
    for mode in others:
        same = digests[mode] == digests[first]
        print(f"{mode} vs {first}: {'identical examples and order' if same else 'DIFFERENT'}")
        if not same:
            raise SystemExit(1)
    for mode in others:
        print(f"{mode} / {first} time: {results[mode] / results[first]:.2f}")


if __name__ == "__main__":
    main()

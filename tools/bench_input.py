"""Input pipeline speed and memory: against the tiny models' steps, and at dataset scale.

Usage:
  python tools/bench_input.py [--data_dir /tmp/amt_tfds] [--batch 8] [--steps 20]
  python tools/bench_input.py --scale [--scale_dir /tmp/amt_scale] [--hours 5 50]

Default: for each model family, host examples/s of the training pipeline
(`amt_jax.data.pipeline.TrainIterator`, one process, the tiny synthetic dataset; built into
--data_dir if missing) against a jitted forward+backward step of the family's tiny model
on those batches, measured in the same run. The pipeline must be >= 5x faster than the
step so it never starves training.

--scale: builds datasets of --hours hours in the real example format (amt_jax's tfds
features, ArrayRecord), cheaply: 10k-note tracks of generated MIDI rendered by additive
synthesis (a few decaying harmonics per note; no soundfont). Then, for every size, family
and worker count, a fresh process runs the trainer's input pipeline (chunk store + grain,
as `python -m amt_jax.train` does) and reports examples/s and peak RSS of the training
process and of each grain worker. Memory must not grow with the dataset.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SCALE_TRACK_NOTES = 10_000
SCALE_TRACK_SECONDS = 600.0  # 10k notes in 10 min: 16.7 notes/s, a dense multi-track mix
SCALE_SAMPLE_RATE = 16000
FAMILY_TASKS = {"mt3": "mt3_mt3", "onsets_frames": "onsets_frames", "nmp": "nmp"}


def _models():
    from amt_jax.models.nmp import NMP, NMPConfig
    from amt_jax.models.onsets_frames import ONSETS_FRAMES_TINY, OnsetsFrames
    from amt_jax.models.t5 import MT3Config, MT3Model

    return {
        "mt3_mt3": lambda rngs: MT3Model.from_config(MT3Config.tiny(), rngs=rngs),
        "onsets_frames": lambda rngs: OnsetsFrames.from_config(ONSETS_FRAMES_TINY, rngs=rngs),
        "nmp": lambda rngs: NMP.from_config(NMPConfig(), rngs=rngs),
    }


def against_the_model(args) -> None:
    import jax
    from flax import nnx

    from amt_jax.data import pipeline, tasks
    from amt_jax.data.builders.synthetic import AmtSynthetic

    AmtSynthetic(config="tiny", data_dir=args.data_dir).download_and_prepare()
    tasks.register_synthetic_tasks("tiny", args.data_dir)
    print(f"batch {args.batch}, {args.steps} steps, {jax.device_count()} device(s)")
    print(f"{'family':15s} {'pipeline ex/s':>14s} {'model ex/s':>11s} {'ratio':>7s}")
    for family, make_model in _models().items():
        iterator = pipeline.TrainIterator(f"synthetic_tiny_{family}_train", args.batch, seed=0)
        next(iterator)  # builds the chunk store once, starts the prefetch
        start = time.perf_counter()
        batches = [next(iterator) for _ in range(args.steps)]
        pipeline_rate = args.steps * args.batch / (time.perf_counter() - start)
        iterator.close()

        model = make_model(nnx.Rngs(0))
        model.train()

        @nnx.jit
        def step(model, batch):
            loss, grads = nnx.value_and_grad(lambda m: m.loss(batch)[0])(model)
            return loss, grads

        jax.block_until_ready(step(model, batches[0]))  # compile
        start = time.perf_counter()
        for batch in batches:
            jax.block_until_ready(step(model, batch))
        model_rate = args.steps * args.batch / (time.perf_counter() - start)
        print(
            f"{family:15s} {pipeline_rate:14.1f} {model_rate:11.1f} "
            f"{pipeline_rate / model_rate:6.1f}x"
        )


# ------------------------------------------------------------------------------- --scale


def _atoms(sample_rate: int, seconds: float = 0.5):
    """One decaying 4-harmonic tone per MIDI pitch 21..108 (float32 [88, samples])."""
    import numpy as np

    t = np.arange(int(seconds * sample_rate)) / sample_rate
    pitches = np.arange(21, 109)[:, None]
    f0 = 440.0 * 2.0 ** ((pitches - 69) / 12.0)
    tone = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 5))
    return (tone * np.exp(-4.0 * t) * 0.05).astype(np.float32)


def scale_track(index: int, atoms, sample_rate: int = SCALE_SAMPLE_RATE):
    """(audio float32, NoteSequence) of one generated 10k-note track (seeded by index)."""
    import note_seq
    import numpy as np

    rng = np.random.default_rng([2026, index])
    num_samples = int(SCALE_TRACK_SECONDS * sample_rate)
    onsets = np.sort(rng.uniform(0, SCALE_TRACK_SECONDS - 1.0, SCALE_TRACK_NOTES))
    durations = rng.uniform(0.05, 1.0, SCALE_TRACK_NOTES)
    pitches = rng.integers(21, 109, SCALE_TRACK_NOTES)
    velocities = rng.integers(30, 128, SCALE_TRACK_NOTES)
    programs = rng.choice([0, 24, 33, 40, 56, 73], SCALE_TRACK_NOTES)
    is_drum = rng.random(SCALE_TRACK_NOTES) < 0.1
    audio = np.zeros(num_samples + atoms.shape[1], np.float32)
    ns = note_seq.NoteSequence(ticks_per_quarter=220)
    for onset, duration, pitch, velocity, program, drum in zip(
        onsets, durations, pitches, velocities, programs, is_drum
    ):
        lo = int(onset * sample_rate)
        length = min(int(duration * sample_rate), atoms.shape[1])
        audio[lo : lo + length] += atoms[pitch - 21, :length] * (velocity / 127.0)
        ns.notes.add(
            start_time=float(onset),
            end_time=float(onset + duration),
            pitch=int(pitch),
            velocity=int(velocity),
            program=int(program),
            is_drum=bool(drum),
            instrument=9 if drum else int(program) % 8,
        )
    ns.total_time = float(SCALE_TRACK_SECONDS)
    return np.clip(audio[:num_samples], -1.0, 1.0), ns


@functools.cache
def _scale_builder_class():
    import tensorflow_datasets as tfds

    from amt_jax.data.builders import common

    class AmtScaleBench(common.RandomAccessBuilder):
        """Additive-synth 10k-note tracks in amt_jax's example format (benchmarks only)."""

        VERSION = tfds.core.Version("1.0.0")
        BUILDER_CONFIGS = [
            tfds.core.BuilderConfig(name=f"h{hours:g}", description=f"{hours:g} hours")
            for hours in (1, 5, 10, 50, 100)
        ]

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=common.features())

        def _split_generators(self, dl_manager):
            hours = float(self.builder_config.name[1:])
            num_tracks = int(round(hours * 3600 / SCALE_TRACK_SECONDS))
            return {"train": self._generate_examples(num_tracks)}

        def _generate_examples(self, num_tracks):
            from tqdm import tqdm

            atoms = _atoms(SCALE_SAMPLE_RATE)
            for index in tqdm(range(num_tracks), desc="synthesise", unit="track"):
                audio, ns = scale_track(index, atoms)
                track_id = f"scale_{index:05d}"
                yield (
                    track_id,
                    common.make_example(
                        track_id,
                        common.float_to_int16(audio),
                        SCALE_SAMPLE_RATE,
                        ns,
                        [{"name": "mix", "program": 0, "is_drum": False}],
                    ),
                )

    return AmtScaleBench


def build_scale_dataset(hours: float, scale_dir: str) -> str:
    """Build (once) the `amt_scale_bench/h<hours>` dataset; returns its dataset name."""
    builder = _scale_builder_class()(config=f"h{hours:g}", data_dir=scale_dir)
    if not builder.is_prepared():
        start = time.perf_counter()
        builder.download_and_prepare(
            download_config=__import__("tensorflow_datasets").download.DownloadConfig(
                num_shards=max(1, int(hours // 5))
            )
        )
        print(f"  built {hours:g} h in {time.perf_counter() - start:.0f} s", flush=True)
    return f"amt_scale_bench/h{hours:g}"


def _register(hours: float, scale_dir: str) -> dict[str, str]:
    from amt_jax.data import tasks

    _scale_builder_class()  # registers the builder with tfds
    names = tasks.register_dataset_tasks(
        f"scale_h{hours:g}", f"amt_scale_bench/h{hours:g}", ("train",), scale_dir
    )
    return {
        family: next(n for n in names if f"_{key}_" in n) for family, key in FAMILY_TASKS.items()
    }


class _WorkerRss:
    """Peak RSS of each child process, sampled every 0.1 s on a thread (the kernel's
    RUSAGE_CHILDREN maximum counts a spawned child's pages from before its exec, i.e. the
    parent's, so it cannot be used)."""

    def __init__(self):
        import threading

        import psutil

        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._me = psutil.Process()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import psutil

        while not self._stop.wait(0.1):
            for child in self._me.children(recursive=True):
                try:
                    rss = child.memory_info().rss
                except psutil.Error:
                    continue
                self.peak[child.pid] = max(self.peak.get(child.pid, 0), rss)

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join()
        # grain's workers, not multiprocessing's small resource tracker (< 100 MB)
        return sorted((v for v in self.peak.values() if v > 100 * 2**20), reverse=True)


def _own_peak_rss() -> int:
    """VmHWM of this process (getrusage's ru_maxrss survives exec: a child started by a
    big parent would report the parent's peak)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure(args) -> None:
    """One measurement in this fresh process; prints a JSON line."""
    from amt_jax.data import pipeline

    task = _register(args.hours[0], args.scale_dir)[args.family]
    sampler = _WorkerRss()
    iterator = pipeline.TrainIterator(task, args.batch, seed=0, num_workers=args.workers)
    for _ in range(args.warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(args.steps):
        next(iterator)
    seconds = time.perf_counter() - start
    worker_peaks = sampler.stop()
    iterator.close()
    print(
        "RESULT "
        + json.dumps(
            {
                "examples_per_s": args.steps * args.batch / seconds,
                "main_peak_rss": _own_peak_rss(),
                "worker_peak_rss": worker_peaks[: args.workers],
                "chunks": len(iterator.sources[0]),
            }
        ),
        flush=True,
    )


def scale(args) -> None:
    print(f"load average {os.getloadavg()[0]:.2f}; datasets in {args.scale_dir}")
    for hours in args.hours:
        build_scale_dataset(hours, args.scale_dir)
        names = _register(hours, args.scale_dir)
        from amt_jax.data import tasks

        for family, name in names.items():  # chunk stores, built once (timed)
            start = time.perf_counter()
            source = tasks.chunk_source(tasks.get_task(name))
            print(
                f"  {hours:g} h {family}: {source.meta.num_chunks} chunks of "
                f"{source.meta.num_tracks} tracks ({source.meta.hours:.1f} h) ready in "
                f"{time.perf_counter() - start:.0f} s",
                flush=True,
            )
    print(
        f"\n{'hours':>5s} {'family':14s} {'workers':>7s} {'ex/s':>7s} {'ex/s/worker':>11s} "
        f"{'main peak RSS':>13s} {'worker peak RSS':>15s}"
    )
    rows = []
    for hours in args.hours:
        for family in args.families:
            for workers in args.worker_counts:
                command = [
                    sys.executable,
                    os.path.abspath(__file__),
                    "--measure",
                    "--scale_dir",
                    args.scale_dir,
                    "--hours",
                    str(hours),
                    "--family",
                    family,
                    "--workers",
                    str(workers),
                    "--batch",
                    str(args.batch),
                    "--steps",
                    str(args.steps),
                    "--warmup",
                    str(args.warmup),
                ]
                out = subprocess.run(command, capture_output=True, text=True, check=False)
                lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
                if out.returncode or not lines:
                    print(out.stderr[-3000:])
                    raise SystemExit(f"measurement failed: {' '.join(command)}")
                result = json.loads(lines[-1][len("RESULT ") :])
                rate = result["examples_per_s"]
                per_worker = rate / workers if workers else rate
                worker_peak = max(result["worker_peak_rss"], default=0)
                rows.append((hours, family, workers, rate, result["main_peak_rss"], worker_peak))
                print(
                    f"{hours:5g} {family:14s} {workers:7d} {rate:7.0f} {per_worker:11.0f} "
                    f"{result['main_peak_rss'] / 2**30:11.2f} G "
                    f"{worker_peak / 2**30:13.2f} G",
                    flush=True,
                )
    if len(args.hours) > 1:
        small, large = min(args.hours), max(args.hours)
        for family in args.families:
            for workers in args.worker_counts:
                main_peak = {r[0]: r[4] for r in rows if r[1] == family and r[2] == workers}
                worker_peak = {r[0]: r[5] for r in rows if r[1] == family and r[2] == workers}
                print(
                    f"peak RSS {family}, {workers} worker(s), {large:g} h / {small:g} h: "
                    f"training process {main_peak[large] / main_peak[small]:.3f}, "
                    f"worker {worker_peak[large] / max(worker_peak[small], 1):.3f}"
                )
    print(f"load average {os.getloadavg()[0]:.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="/tmp/amt_tfds")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--scale", action="store_true", help="the dataset-scale benchmark")
    parser.add_argument("--scale_dir", default="/tmp/amt_scale")
    parser.add_argument("--hours", type=float, nargs="+", default=[5.0, 50.0])
    parser.add_argument("--families", nargs="+", default=list(FAMILY_TASKS))
    parser.add_argument("--worker_counts", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--family", default="mt3", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args)
    elif args.scale:
        scale(args)
    else:
        against_the_model(args)


if __name__ == "__main__":
    main()

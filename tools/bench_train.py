"""Train-step time and MFU on CPU of MT3, Onsets and Frames and NMP, against a matmul peak
measured in the same run.

Usage: python tools/bench_train.py [--family mt3|onsets_frames|nmp|all] [--batch N]
                                   [--steps 2] [--rounds 3] [--small] [--dtype float32]
                                   [--peak-seconds 1.0] [--default-heap]
                                   [--nmp-conv-impl auto|gemm|xla]

Every family is built the way ``python -m amt_jax.train`` builds it (the trainer, one
device, the family's optimizer and published config) and timed on random inputs:

* ``mt3``: the real full-size MT3 (T5.1.1-small, mt3 vocabulary, dropout 0.1, z-loss,
  MT3's Adafactor, on-device log-mel), random audio and 1024 non-padding target tokens
  (so every matmul FLOP is useful work); default batch 2.
* ``onsets_frames``: the MAESTRO-paper model (22.6 M parameters) on the synthetic tasks'
  4.992 s segments (156 frames), the O&F Adam with clipping; the paper's batch 8.
* ``nmp``: Basic Pitch's network (16,782 parameters, CQT front end inside), Adam and the
  unit-norm projection after every update; the paper's batch 16. ``--nmp-conv-impl``
  picks the heads' conv forms (default ``auto``: the GEMM forms on CPU).

Reported per family: step time, examples/s, model FLOPs per step and

  MFU = (model FLOPs per step / step time) / fp32 matmul FLOP/s.

Model FLOPs:

* MT3: a closed-form count of T5's matmuls (3x the forward, less the unneeded input
  gradient of the mel projection), cross-checked against the matmul FLOPs of the traced
  train step (every dot_general of the forward and backward pass, read off the jaxpr; it
  includes that mel input gradient, which XLA then drops as dead code) and against XLA's
  cost analysis of the compiled step (which also counts element-wise ops).
* O&F and NMP: the matmul + convolution FLOPs of the traced train step (jaxpr; scan
  bodies times their trip count, so the LSTMs are counted in full). For NMP the trace
  uses the reference convolution for every head conv (``conv_same``), so the work the
  CPU GEMM forms add (Toeplitz zeros) is not counted as useful; the count of the forms
  actually run and XLA's cost analysis are printed beside it (XLA counts a while loop's
  body once, so its figure for O&F misses most of the LSTM work).

Like ``python -m amt_jax.train`` it first keeps freed C-heap memory for reuse
(:func:`amt_jax.heap.retain_freed_heap`; ``--default-heap`` leaves glibc's policy alone,
as ``--no-retain_freed_heap`` does for training), and it prints the page faults per step.

This machine's matmul rate drifts by up to 2x within minutes (a shared host: the same
2048^3 matmul runs at 80-170 GFLOP/s), so the denominator is measured around every step:
a ~1 s back-to-back loop of N^3 float32 matmuls (N the fastest of --peak-sizes, probed
once per run) right before and right after it. Reported:

  MFU (sustained)   median over steps of step FLOP/s / mean of its two bracketing loops;
  MFU (burst)       median step FLOP/s / median of the fastest single matmul seen in each
                    loop, i.e. against the machine's best moments: the conservative figure.

Goals in float32: MFU >= 0.6 for MT3, >= 0.3 for O&F and NMP. ``--small`` (one round,
0.5 s matmul loops) keeps ``--family all`` to a few minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import resource
import sys
import time
from collections.abc import Callable
from unittest import mock

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from amt_jax import heap  # noqa: E402

HEAP_RETAINED = "--default-heap" not in sys.argv and heap.retain_freed_heap()  # as the trainer

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from amt_jax.models import nmp_convs  # noqa: E402
from amt_jax.models.nmp import NMP, NMP_CONFIG  # noqa: E402
from amt_jax.models.onsets_frames import ONSETS_FRAMES_CONFIG, OnsetsFrames  # noqa: E402
from amt_jax.models.t5 import T5_SMALL, MT3Config, MT3Model  # noqa: E402
from amt_jax.partitioning import mesh as mesh_lib  # noqa: E402
from amt_jax.train import precision  # noqa: E402
from amt_jax.train.optimizers import adam, mt3_adafactor, onsets_frames_adam  # noqa: E402
from amt_jax.train.trainer import Trainer, model_factory  # noqa: E402

FAMILY_NAMES = ("mt3", "onsets_frames", "nmp")
#: float32 MFU goals
GOAL_MFU = {"mt3": 0.6, "onsets_frames": 0.3, "nmp": 0.3}
#: MT3: what fits a 2-core CPU; O&F and NMP: the papers' batch sizes (gin_configs/*.gin)
DEFAULT_BATCH = {"mt3": 2, "onsets_frames": 8, "nmp": 16}
#: the synthetic tasks' O&F segments (gin_configs/model/onsets_frames.gin)
ONSETS_FRAMES_SEGMENT_SECONDS = 4.992


def matmul_rate(size: int, repeats: int = 2) -> float:
    """Best-of-``repeats`` FLOP/s of an N x N x N float32 matmul."""
    return matmul_loop(size, repeats=repeats)[1]


def matmul_loop(size: int, seconds: float = 0.0, repeats: int = 1) -> tuple[float, float]:
    """(sustained, best single) FLOP/s of back-to-back N^3 float32 matmuls.

    Runs at least ``repeats`` matmuls and keeps going until ``seconds`` have passed.
    """
    a = jnp.ones((size, size), jnp.float32)
    fn = _matmul_fn()
    fn(a).block_until_ready()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn(a).block_until_ready()
        times.append(time.perf_counter() - t0)
    flops = 2 * size**3
    return flops * len(times) / sum(times), flops / min(times)


@functools.cache
def _matmul_fn():
    """One jitted matmul for the whole run, so its compile is never timed twice."""
    return jax.jit(lambda x: x @ x)


def closed_form_flops(config: MT3Config, batch: int) -> float:
    """Matmul FLOPs of one fwd + bwd step of MT3's T5, counted by hand.

    Forward per example: projections 2*tokens*d_in*d_out, attention scores and context
    2 * 2*q*k*heads*head_dim (causal self-attention counted in full, as computed).
    Backward = 2x forward, except the mel projection, whose input needs no gradient.
    """
    d, hd, mlp = config.emb_dim, config.num_heads * config.head_dim, config.mlp_dim
    t, length = config.inputs_length, config.targets_length

    def attention(q: int, k: int) -> float:
        return 2 * q * d * hd + 2 * 2 * k * d * hd + 2 * 2 * q * k * hd + 2 * q * hd * d

    def ffn(n: int) -> float:
        return 3 * 2 * n * d * mlp

    mel_projection = 2 * t * config.input_depth * d
    encoder = config.num_encoder_layers * (attention(t, t) + ffn(t))
    decoder = config.num_decoder_layers * (
        attention(length, length) + attention(length, t) + ffn(length)
    )
    logits = 2 * length * d * config.vocab_size
    forward = mel_projection + encoder + decoder + logits
    return batch * (3 * forward - mel_projection)


@dataclasses.dataclass
class Peak:
    """The matmul size used for the denominator (probed once per run)."""

    size: int
    seconds: float


@dataclasses.dataclass
class Timing:
    step_times: list[float]
    sustained: list[float]  # mean matmul rate of the loops around each step
    bursts: list[float]  # fastest single matmul of the loops around each step
    faults: list[int]
    loss: float


@dataclasses.dataclass
class Result:
    family: str
    batch: int
    step_s: float
    flops: float
    mfu_sustained: float
    mfu_burst: float
    matmul_rate: float
    load: tuple[float, float, float]

    @property
    def examples_per_s(self) -> float:
        return self.batch / self.step_s


def probe_peak(sizes: list[int], seconds: float) -> Peak:
    probe = {size: matmul_rate(size) for size in sizes}
    size = max(probe, key=probe.get)
    print(
        "matmul probe: "
        + ", ".join(f"{n}^3 {rate / 1e9:.1f} GFLOP/s" for n, rate in probe.items())
        + f" -> peak size {size}"
    )
    return Peak(size, seconds)


def time_steps(trainer: Trainer, state, batch, peak: Peak, steps: int, rounds: int) -> Timing:
    """``rounds`` x ``steps`` timed train steps, each bracketed by matmul loops."""
    step_times, sustained, bursts, step_faults = [], [], [], []
    before = matmul_loop(peak.size, peak.seconds)
    metrics = None
    for r in range(rounds):
        for _ in range(steps):
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            state, metrics = trainer.train_step(state, batch)
            jax.block_until_ready(metrics)
            step_times.append(time.perf_counter() - t0)
            step_faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
            after = matmul_loop(peak.size, peak.seconds)
            sustained.append((before[0] + after[0]) / 2)
            bursts.append(max(before[1], after[1]))
            before = after
        print(
            f"round {r}: steps {[f'{t:.2f}' for t in step_times[-steps:]]} s, "
            f"sustained matmul around them "
            f"{[f'{p / 1e9:.0f}' for p in sustained[-steps:]]} GFLOP/s, "
            f"loss {float(metrics['loss']):.1f}"
        )
    return Timing(step_times, sustained, bursts, step_faults, float(metrics["loss"]))


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def summarize(family: str, batch: int, flops: float, timing: Timing, peak: Peak) -> Result:
    step = float(np.median(timing.step_times))
    per_step = [flops / t / p for t, p in zip(timing.step_times, timing.sustained, strict=True)]
    achieved = flops / step
    return Result(
        family,
        batch,
        step,
        flops,
        float(np.median(per_step)),
        achieved / float(np.median(timing.bursts)),
        float(np.median(timing.sustained)),
        load_average(),
    )


def mfu_lines(result: Result, timing: Timing, peak: Peak, dtype: str) -> str:
    per_step = [
        result.flops / t / p for t, p in zip(timing.step_times, timing.sustained, strict=True)
    ]
    goal = GOAL_MFU[result.family]
    burst = float(np.median(timing.bursts))
    return (
        f"MFU (sustained) {result.mfu_sustained:.2f}: per step "
        f"{[f'{m:.2f}' for m in per_step]}, against a "
        f"{peak.seconds:g} s loop of {peak.size}^3 fp32 matmuls before and after each step "
        f"(median {result.matmul_rate / 1e9:.1f} GFLOP/s)\n"
        f"MFU (burst) {result.mfu_burst:.2f}: against the fastest single {peak.size}^3 "
        f"matmul of each loop (median {burst / 1e9:.1f} GFLOP/s)\n"
        f"goal: MFU >= {goal} in float32: "
        f"sustained {'met' if result.mfu_sustained >= goal else 'NOT met'}, "
        f"burst {'met' if result.mfu_burst >= goal else 'NOT met'}"
        + ("" if dtype == "float32" else f" (this run is {dtype}: not the goal's figure)")
    )


def heap_note(timing: Timing) -> str:
    return (
        f"C heap {'retained (as python -m amt_jax.train)' if HEAP_RETAINED else 'glibc default'}"
        f", median {np.median(timing.faults):.0f} page faults per step"
    )


def one_device_trainer(factory, optimizer) -> Trainer:
    mesh = mesh_lib.make_mesh(data=1, model=1, devices=jax.devices()[:1])
    return Trainer(factory, optimizer, mesh)


def first_step(trainer: Trainer, state, batch):
    """The first (compiling) step: (state, seconds)."""
    t0 = time.perf_counter()
    state, metrics = trainer.train_step(state, batch)
    jax.block_until_ready(metrics)
    return state, time.perf_counter() - t0


# --- MT3 ------------------------------------------------------------------------------------


def bench_mt3(args, batch_size: int, peak_fn: Callable[[], Peak]) -> Result:
    config = dataclasses.replace(T5_SMALL, dtype=args.dtype)
    trainer = one_device_trainer(model_factory(MT3Model, config), mt3_adafactor())
    state = trainer.init_state()
    rng = np.random.default_rng(0)
    host = {
        "audio_bs": (0.1 * rng.standard_normal((batch_size, 32768))).astype(np.float32),
        "targets_bl": rng.integers(3, 1300, (batch_size, config.targets_length)).astype(np.int32),
    }
    host["targets_bl"][:, -1] = config.eos_id  # a full segment: no padding positions
    batch = trainer.global_batch(host)

    xla_flops = trainer.train_step_flops(state, batch) or float("nan")
    by_dtype = trainer.trace_train_step(precision.matmul_flops_by_dtype, state, batch)
    traced_flops = sum(by_dtype.values())
    hand_flops = closed_form_flops(config, batch_size)
    state, compile_s = first_step(trainer, state, batch)
    print(
        f"T5-small MT3 {args.dtype}, batch {batch_size}, "
        f"{sum(x.size for x in jax.tree.leaves(state.params))} params; compile + first step "
        f"{compile_s:.1f} s\nFLOPs per step: {traced_flops / 1e9:.1f} G matmul "
        f"(traced jaxpr; {', '.join(f'{k} {v / 1e9:.1f} G' for k, v in by_dtype.items())}), "
        f"{hand_flops / 1e9:.1f} G closed form, {xla_flops / 1e9:.1f} G XLA cost analysis "
        f"(incl. element-wise)"
    )
    peak = peak_fn()
    timing = time_steps(trainer, state, batch, peak, args.steps, args.rounds)
    result = summarize("mt3", batch_size, hand_flops, timing, peak)
    print(
        f"median step {result.step_s:.2f} s -> {hand_flops / result.step_s / 1e9:.1f} GFLOP/s "
        f"(closed-form matmul FLOPs); "
        f"{batch_size * config.inputs_length / result.step_s:.0f} encoder / "
        f"{batch_size * config.targets_length / result.step_s:.0f} decoder tokens/s; "
        f"load average {result.load[0]:.1f}; {heap_note(timing)}\n"
        + mfu_lines(result, timing, peak, args.dtype)
    )
    return result


# --- Onsets and Frames and NMP --------------------------------------------------------------


def onsets_frames_setup(args, batch_size: int, rng):
    config = dataclasses.replace(
        ONSETS_FRAMES_CONFIG, dtype=args.dtype, segment_seconds=ONSETS_FRAMES_SEGMENT_SECONDS
    )
    samples = int(round(config.segment_seconds * config.mel.sample_rate))
    frames = config.num_frames(samples)
    shape = (batch_size, frames, config.n_pitches)
    onsets = (rng.random(shape) < 0.02).astype(np.float32)
    host = {
        "audio_bs": (0.1 * rng.standard_normal((batch_size, samples))).astype(np.float32),
        "onset_btp": onsets,
        "offset_btp": (rng.random(shape) < 0.02).astype(np.float32),
        "frame_btp": (rng.random(shape) < 0.1).astype(np.float32),
        "velocity_btp": onsets * rng.random(shape).astype(np.float32),
    }
    trainer = one_device_trainer(model_factory(OnsetsFrames, config), onsets_frames_adam())
    describe = (
        f"Onsets and Frames (MAESTRO paper) {args.dtype}, batch {batch_size} x {samples} "
        f"samples ({frames} frames)"
    )
    return trainer, host, describe, None


def nmp_setup(args, batch_size: int, rng):
    config = dataclasses.replace(NMP_CONFIG, dtype=args.dtype, conv_impl=args.nmp_conv_impl)
    frames, pitches, bins = 172, config.n_pitches, config.n_contour_bins
    host = {
        "audio_bs": (0.1 * rng.standard_normal((batch_size, 43844))).astype(np.float32),
        "contour_btf": (rng.random((batch_size, frames, bins)) < 0.05).astype(np.float32),
        "note_btp": (rng.random((batch_size, frames, pitches)) < 0.05).astype(np.float32),
        "onset_btp": (rng.random((batch_size, frames, pitches)) < 0.01).astype(np.float32),
    }
    trainer = one_device_trainer(model_factory(NMP, config), adam(1e-3))
    reference = one_device_trainer(
        model_factory(NMP, dataclasses.replace(config, conv_impl="xla")), adam(1e-3)
    )
    describe = (
        f"NMP (Basic Pitch) {args.dtype}, conv_impl {args.nmp_conv_impl!r} "
        f"(-> {nmp_convs.resolve_conv_impl(args.nmp_conv_impl)!r} on cpu), batch {batch_size}"
    )
    return trainer, host, describe, reference


def reference_conv_flops(reference: Trainer, state, batch) -> dict[str, float]:
    """Traced matmul + conv FLOPs with every NMP head conv as the plain ``conv_same``."""
    plain = dict.fromkeys(nmp_convs.LAYER_FORMS["xla"], "xla")
    with mock.patch.dict(nmp_convs.LAYER_FORMS["xla"], plain):
        return reference.trace_train_step(precision.matmul_flops_by_dtype, state, batch)


def bench_conv_family(family: str, args, batch_size: int, peak_fn: Callable[[], Peak]) -> Result:
    rng = np.random.default_rng(0)
    setup = onsets_frames_setup if family == "onsets_frames" else nmp_setup
    trainer, host, describe, reference = setup(args, batch_size, rng)
    state = trainer.init_state()
    batch = trainer.global_batch(host)
    xla_flops = trainer.train_step_flops(state, batch) or float("nan")
    as_run = sum(trainer.trace_train_step(precision.matmul_flops_by_dtype, state, batch).values())
    if reference is None:
        model_flops, count = as_run, "traced jaxpr matmul + conv FLOPs"
        extra = ""
    else:
        model_flops = sum(reference_conv_flops(reference, state, batch).values())
        count = "traced jaxpr matmul + conv FLOPs, head convs as plain convs"
        extra = f", {as_run / 1e9:.2f} G as run (the conv forms' own FLOPs)"
    state, compile_s = first_step(trainer, state, batch)
    params = sum(x.size for x in jax.tree.leaves(state.params))
    print(
        f"{describe}, {params} params; compile + first step {compile_s:.1f} s\n"
        f"FLOPs per step: {model_flops / 1e9:.2f} G model ({count}){extra}, "
        f"{xla_flops / 1e9:.2f} G XLA cost analysis (incl. element-wise; while-loop bodies "
        f"once)"
    )
    peak = peak_fn()
    timing = time_steps(trainer, state, batch, peak, args.steps, args.rounds)
    result = summarize(family, batch_size, model_flops, timing, peak)
    print(
        f"median step {result.step_s:.3f} s -> {model_flops / result.step_s / 1e9:.1f} "
        f"GFLOP/s (model FLOPs); {result.examples_per_s:.1f} examples/s; "
        f"load average {result.load[0]:.1f}; {heap_note(timing)}\n"
        + mfu_lines(result, timing, peak, args.dtype)
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="mt3", choices=FAMILY_NAMES + ("all",))
    parser.add_argument(
        "--batch", type=int, default=None, help=f"default per family: {DEFAULT_BATCH}"
    )
    parser.add_argument("--steps", type=int, default=2, help="train steps per round")
    parser.add_argument("--rounds", type=int, default=None, help="default 3 (1 with --small)")
    parser.add_argument(
        "--small", action="store_true", help="one round and 0.5 s matmul loops (a quick run)"
    )
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument(
        "--nmp-conv-impl", default="auto", choices=nmp_convs.CONV_IMPLS, help="NMPConfig.conv_impl"
    )
    parser.add_argument(
        "--peak-sizes", default="2048,3072,4096", help="matmul sizes probed for the fp32 peak"
    )
    parser.add_argument(
        "--peak-seconds",
        type=float,
        default=None,
        help="length of each bracketing matmul loop (default 1.0, 0.5 with --small)",
    )
    parser.add_argument(
        "--default-heap",
        action="store_true",
        help="leave glibc's heap policy alone (python -m amt_jax.train --no-retain_freed_heap)",
    )
    args = parser.parse_args()
    if args.rounds is None:
        args.rounds = 1 if args.small else 3
    if args.peak_seconds is None:
        args.peak_seconds = 0.5 if args.small else 1.0
    families = FAMILY_NAMES if args.family == "all" else (args.family,)

    peak: Peak | None = None

    def peak_fn() -> Peak:  # probed after the first compile, once per run
        nonlocal peak
        if peak is None:
            peak = probe_peak([int(s) for s in args.peak_sizes.split(",")], args.peak_seconds)
        return peak

    results = []
    for family in families:
        batch_size = args.batch or DEFAULT_BATCH[family]
        if len(families) > 1:
            print(f"\n== {family} ==")
        if family == "mt3":
            results.append(bench_mt3(args, batch_size, peak_fn))
        else:
            results.append(bench_conv_family(family, args, batch_size, peak_fn))
    if len(results) > 1:
        print(
            "\n| family | batch | median step | examples/s | model GFLOP/step | matmul GFLOP/s "
            "| MFU sustained | MFU burst | goal | load average (1/5/15 min) |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in results:
            print(
                f"| {r.family} | {r.batch} | {r.step_s:.3f} s | {r.examples_per_s:.2f} | "
                f"{r.flops / 1e9:.2f} | {r.matmul_rate / 1e9:.0f} | {r.mfu_sustained:.2f} | "
                f"{r.mfu_burst:.2f} | >= {GOAL_MFU[r.family]} | "
                f"{' / '.join(f'{x:.1f}' for x in r.load)} |"
            )


if __name__ == "__main__":
    main()

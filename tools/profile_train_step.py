"""Where an XLA:CPU train step spends its time: per-HLO-op (thunk) times from a profile.

Usage: python tools/profile_train_step.py [--family nmp|onsets_frames|mt3] [--batch N]
                                          [--steps 2] [--top 25] [--nmp-conv-impl auto]

Builds the family's train step exactly as ``tools/bench_train.py`` does (trainer, paper
batch, random inputs), runs one compiling step, then ``--steps`` steps under
``jax.profiler`` and reads the trace back (``jax.profiler.ProfileData``). XLA:CPU records
one event per executed thunk, named after its HLO instruction; the compiled HLO text gives
each instruction's opcode, shape and, for fusions, whether they contain a convolution or
a dot. Printed: the busy time of the XLA threads per step, the time per op class
(convolution, dot, fusions, copies, ...) and the top ops, each as ms per step and share of
the busy time (both threads summed, so two ops that overlap both count in full).
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_train  # noqa: E402  (sets JAX_PLATFORMS and the heap policy first)
import jax  # noqa: E402
import numpy as np  # noqa: E402

_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S+(?:\[[^\]]*\])?(?:\{[^}]*\})?)\s+([\w\-]+)\("
)
_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s*(?:\([^)]*\))?.*\{\s*$")


def hlo_ops(hlo_text: str) -> dict[str, tuple[str, str]]:
    """HLO instruction name -> (op class, shape), fusions classed by what they contain."""
    computations: dict[str, list[tuple[str, str, str, str]]] = collections.defaultdict(list)
    current = None
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if match and current is not None:
            name, shape, opcode = match.groups()
            called = re.search(r"calls=%?([\w.\-]+)", line)
            computations[current].append((name, shape, opcode, called.group(1) if called else ""))
            continue
        header = _COMPUTATION.match(line)
        if header and "=" not in line.split("{")[0]:
            current = header.group(1)

    def contents(computation: str, seen=()) -> set[str]:
        found = set()
        for _, _, opcode, called in computations.get(computation, ()):
            found.add(opcode)
            if called and called not in seen:
                found |= contents(called, seen + (called,))
        return found

    ops = {}
    for instructions in computations.values():
        for name, shape, opcode, called in instructions:
            op_class = opcode
            if opcode == "fusion":
                inner = contents(called)
                if "convolution" in inner:
                    op_class = "fusion(convolution)"
                elif "dot" in inner:
                    op_class = "fusion(dot)"
                elif "reduce" in inner:
                    op_class = "fusion(reduce)"
                else:
                    op_class = "fusion(elementwise)"
            ops[name] = (op_class, shape)
    return ops


def thunk_times(trace_dir: str) -> tuple[dict[str, float], float]:
    """(ns per HLO op summed over the XLA threads, total busy ns of those threads)."""
    path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))[-1]
    profile = jax.profiler.ProfileData.from_file(path)
    per_op: dict[str, float] = collections.defaultdict(float)
    busy = 0.0
    for plane in profile.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLA"):
                continue
            for event in line.events:
                if event.name == "ThunkExecutor::Execute":
                    busy += event.duration_ns
                if event.name.startswith(("end: ", "ThreadpoolListener", "ThunkExecutor")):
                    continue
                per_op[event.name] += event.duration_ns
    return per_op, busy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="nmp", choices=bench_train.FAMILY_NAMES)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--nmp-conv-impl", default="auto")
    args = parser.parse_args()
    batch_size = args.batch or bench_train.DEFAULT_BATCH[args.family]
    rng = np.random.default_rng(0)
    if args.family == "mt3":
        raise SystemExit("mt3: see docs/benchmarks.md (profile of the T5-small step)")
    setup = (
        bench_train.onsets_frames_setup if args.family == "onsets_frames" else bench_train.nmp_setup
    )
    trainer, host, describe, _ = setup(args, batch_size, rng)
    state = trainer.init_state()
    batch = trainer.global_batch(host)
    hlo = trainer.lower_train_step(state, batch).compile().as_text()
    ops = hlo_ops(hlo)
    state, compile_s = bench_train.first_step(trainer, state, batch)
    with tempfile.TemporaryDirectory(prefix="profile_train_step_") as trace_dir:
        jax.profiler.start_trace(trace_dir)
        for _ in range(args.steps):
            state, metrics = trainer.train_step(state, batch)
            jax.block_until_ready(metrics)
        jax.profiler.stop_trace()
        per_op, busy = thunk_times(trace_dir)
    steps = args.steps
    counted = sum(per_op.values())
    print(
        f"{describe}; {steps} profiled steps; load average "
        f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())}\n"
        f"XLA threads busy {busy / steps / 1e6:.0f} ms per step (both threads), "
        f"{counted / steps / 1e6:.0f} ms in named ops"
    )
    by_class: dict[str, float] = collections.defaultdict(float)
    for name, ns in per_op.items():
        by_class[ops.get(name, ("other",))[0]] += ns
    print("\n| op class | ms per step | share |\n|---|---|---|")
    for op_class, ns in sorted(by_class.items(), key=lambda kv: -kv[1]):
        if ns / counted >= 0.005:
            print(f"| {op_class} | {ns / steps / 1e6:.0f} | {ns / counted:.1%} |")
    print("\n| op | class | shape | ms per step | share |\n|---|---|---|---|---|")
    for name, ns in sorted(per_op.items(), key=lambda kv: -kv[1])[: args.top]:
        op_class, shape = ops.get(name, ("?", "?"))
        print(f"| {name} | {op_class} | {shape} | {ns / steps / 1e6:.1f} | {ns / counted:.1%} |")


if __name__ == "__main__":
    main()

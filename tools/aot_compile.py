"""Compile the full-size train step for a TPU slice this machine does not have.

    pip install -e .[tpu-aot]      # libtpu from PyPI (describes TPUs; needs none)
    python tools/aot_compile.py --gin_file=mt3.gin --topology=v5e:4x4
    python tools/aot_compile.py --gin_file=mt3.gin --topology=v5e:4x4 \\
        --gin.MT3Config.dtype="'bfloat16'" --gin.MESH_MODEL=1

The mesh and rules come from the gin config (MESH_DATA, MESH_MODEL, RULES), laid over
the topology's devices; state and batch are abstract (nothing is allocated). Prints
per-device memory (arguments, outputs, temporaries), FLOPs and HBM traffic per step, the
roofline (compute time, HBM time, the bound and the roofline MFU = compute / bound) against
the datasheet peaks of TPU v5e, v5p and v6e (``amt_jax.train.aot.CHIPS``: dense bf16
197 / 459 / 918 TFLOP/s, HBM 819 / 2765 / 1640 GB/s), and a plan table (steps/s, days to
1M steps) for v5e-16, v5e-64 and 8x H100.

``--compare "BINDING[; BINDING...]"`` compiles a second variant (the same gin files and
bindings plus these) and prints the two side by side, e.g.

    python tools/aot_compile.py --gin_file=mt3.gin --topology=v5e:4x4 \
        --compare "MT3Config.dtype='bfloat16'"

Exits 1 with a one-line error when the topology name is bad, the mesh does not fit the
topology, or the step does not fit the chip's HBM.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the host runs nothing; TPUs are only described
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gin_file", action="append", default=[], help="gin config (repeatable)")
    parser.add_argument("--gin_search_path", action="append", default=[])
    parser.add_argument("--topology", default="v5e:4x4", help="TPU slice, e.g. v5e:2x2, v5e:4x4")
    parser.add_argument(
        "--mfu", type=float, default=0.4, help="assumed model-FLOPs utilisation for the plan"
    )
    parser.add_argument("--steps", type=int, default=1_000_000, help="steps for the plan table")
    parser.add_argument(
        "--compare",
        default=None,
        help="gin bindings ('; '-separated) of a second variant to compile side by side",
    )
    parser.add_argument(
        "--top_ops",
        type=int,
        default=0,
        help="print the N top-level instructions that move the most HBM data (estimate)",
    )
    parser.add_argument("--hlo_out", default=None, help="write the compiled program's HLO here")
    bindings, rest = [], []
    for arg in argv:
        if arg.startswith("--gin.") and "=" in arg:
            bindings.append(arg[len("--gin.") :])
        else:
            rest.append(arg)
    return parser.parse_args(rest), bindings


ROOFLINE_CHIPS = ("v5e", "v5p", "v6e")


def compile_variant(args: argparse.Namespace, bindings: list[str], label: str):
    """Parse the gin files with ``bindings``, build the trainer on the topology, compile."""
    import gin

    from amt_jax.train import aot
    from amt_jax.train.main import parse_gin

    gin.clear_config()
    chip, devices = aot.topology_devices(args.topology)
    parse_gin(args.gin_file, bindings, args.gin_search_path)
    job = aot.train_job_from_gin()
    trainer = aot.build_trainer(job, devices)
    return aot.compile_train_step(trainer, job.batch_size, chip, label=label)


def roofline_table(report) -> str:
    from amt_jax.train import aot

    lines = [
        "\nRoofline of this per-device program on each chip's datasheet peaks:",
        f"  {'chip':<8} {'compute ms':>11} {'HBM ms':>9} {'bound ms':>9} {'bound by':>9} "
        f"{'roofline MFU':>13}",
    ]
    for key in ROOFLINE_CHIPS:
        row = report.roofline_on(aot.CHIPS[key])
        lines.append(
            f"  {key:<8} {row['compute_seconds'] * 1e3:>11.3g} {row['memory_seconds'] * 1e3:>9.3g} "
            f"{row['bound_seconds'] * 1e3:>9.3g} {row['bound_by']:>9} {row['roofline_mfu']:>13.2f}"
        )
    return "\n".join(lines)


def top_ops_table(report, count: int) -> str:
    """The instructions of the compiled program that move the most HBM data."""
    from amt_jax.train import aot

    rows = aot.traffic_by_op(report.hlo_text, top=count)
    lines = [f"\nTop {len(rows)} instructions by operand + result bytes (an HBM-traffic estimate):"]
    for num_bytes, opcode, name in rows:
        lines.append(f"  {num_bytes / 1024**2:>10.1f} MiB  {opcode:<14} {name[-110:]}")
    return "\n".join(lines)


def comparison_table(base, other, base_name: str, other_name: str) -> str:
    """Two compiled variants side by side, with other / base."""
    gib = 1024**3
    rows = [
        ("peak HBM per device (GiB)", base.peak_bytes / gib, other.peak_bytes / gib),
        ("temporaries (GiB)", base.temp_bytes / gib, other.temp_bytes / gib),
        ("FLOPs per device (T)", base.flops_per_device / 1e12, other.flops_per_device / 1e12),
        (
            "HBM traffic per device (GiB)",
            base.bytes_accessed_per_device / gib,
            other.bytes_accessed_per_device / gib,
        ),
        ("compute time (ms)", base.compute_seconds * 1e3, other.compute_seconds * 1e3),
        ("HBM time (ms)", base.memory_seconds * 1e3, other.memory_seconds * 1e3),
        (
            "roofline bound (ms)",
            base.step_seconds_lower_bound * 1e3,
            other.step_seconds_lower_bound * 1e3,
        ),
        ("roofline MFU", base.roofline_mfu, other.roofline_mfu),
        ("compile (s)", base.compile_seconds, other.compile_seconds),
    ]
    width = max(len(base_name), len(other_name), 10)
    lines = [
        f"\nSide by side on {base.chip.name}:",
        f"  {'':<30} {base_name:>{width}} {other_name:>{width}} {'ratio':>7}",
    ]
    for name, a, b in rows:
        ratio = f"{b / a:7.3f}" if a else "      -"
        lines.append(f"  {name:<30} {a:>{width}.4g} {b:>{width}.4g} {ratio}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args, bindings = parse_args(sys.argv[1:] if argv is None else argv)
    from amt_jax.train import aot
    from amt_jax.train.main import ConfigError

    label = f"{' + '.join(args.gin_file)} on {args.topology}"
    extra = [b.strip() for b in (args.compare or "").split(";") if b.strip()]
    try:
        report = compile_variant(args, bindings, label)
        print(report.format())
        print(roofline_table(report))
        if args.top_ops:
            print(top_ops_table(report, args.top_ops))
        if args.hlo_out:
            with open(args.hlo_out, "w") as handle:
                handle.write(report.hlo_text)
        if extra:
            other = compile_variant(args, bindings + extra, f"{label} + {'; '.join(extra)}")
            print("\n" + other.format())
            print(roofline_table(other))
            print(comparison_table(report, other, "base", "compare"))
        report.check_fits()
    except (aot.AOTError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"  fits               yes ({report.peak_bytes / report.chip.hbm_bytes:.0%} of HBM)")
    print(
        f"\nPlan for {args.steps:,} steps: the total compiled FLOPs spread over the chips at "
        f"{args.mfu:.0%} MFU of the dense bf16 peak, or the HBM roofline where that is slower:"
    )
    print(
        f"  {'system':<10} {'peak TFLOP/s/chip':>18} {'step s':>8} {'steps/s':>8} {'days':>7}"
        "  bound by"
    )
    for row in aot.plan_rows(report, mfu=args.mfu, steps=args.steps):
        unfilled = row["examples_per_chip"] < 1
        print(
            f"  {row['system']:<10} {row['peak_tflops']:>18.0f} {row['step_seconds']:>8.3f} "
            f"{row['steps_per_second']:>8.2f} {row['days']:>7.1f}  {row['bound_by']}"
            + (f"  (batch {report.global_batch_size} < chips: not reachable)" if unfilled else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

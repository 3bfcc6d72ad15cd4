"""Compile the full-size train step for a TPU slice this machine does not have.

    pip install -e .[tpu-aot]      # libtpu from PyPI (describes TPUs; needs none)
    python tools/aot_compile.py --gin_file=mt3.gin --topology=v5e:4x4
    python tools/aot_compile.py --gin_file=mt3.gin --topology=v5e:4x4 \\
        --gin.MT3Config.dtype="'bfloat16'" --gin.MESH_MODEL=1

The mesh and rules come from the gin config (MESH_DATA, MESH_MODEL, RULES), laid over
the topology's devices; state and batch are abstract (nothing is allocated). Prints
per-device memory (arguments, outputs, temporaries), FLOPs per step, a roofline step-time
bound from the chip's datasheet peak, and a plan table (steps/s, days to 1M steps) for
v5e-16, v5e-64 and 8x H100. Exits 1 with a one-line error when the topology name is bad,
the mesh does not fit the topology, or the step does not fit the chip's HBM.
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
    bindings, rest = [], []
    for arg in argv:
        if arg.startswith("--gin.") and "=" in arg:
            bindings.append(arg[len("--gin.") :])
        else:
            rest.append(arg)
    return parser.parse_args(rest), bindings


def main(argv: list[str] | None = None) -> int:
    args, bindings = parse_args(sys.argv[1:] if argv is None else argv)
    from amt_jax.train import aot
    from amt_jax.train.main import ConfigError, parse_gin

    try:
        chip, devices = aot.topology_devices(args.topology)
        parse_gin(args.gin_file, bindings, args.gin_search_path)
        job = aot.train_job_from_gin()
        trainer = aot.build_trainer(job, devices)
        label = f"{' + '.join(args.gin_file)} on {args.topology}"
        report = aot.compile_train_step(trainer, job.batch_size, chip, label=label)
        print(report.format())
        report.check_fits()
    except (aot.AOTError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"  fits               yes ({report.peak_bytes / chip.hbm_bytes:.0%} of HBM)")
    print(
        f"\nPlan for {args.steps:,} steps at {args.mfu:.0%} MFU "
        "(total compiled FLOPs spread over the chips; dense bf16 peaks):"
    )
    print(f"  {'system':<10} {'peak TFLOP/s/chip':>18} {'step s':>8} {'steps/s':>8} {'days':>7}")
    for row in aot.plan_rows(report, mfu=args.mfu, steps=args.steps):
        unfilled = row["examples_per_chip"] < 1
        print(
            f"  {row['system']:<10} {row['peak_tflops']:>18.0f} {row['step_seconds']:>8.3f} "
            f"{row['steps_per_second']:>8.2f} {row['days']:>7.1f}"
            + (f"  (batch {report.global_batch_size} < chips: not reachable)" if unfilled else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

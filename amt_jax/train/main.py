"""``python -m amt_jax.train``: flags -> gin -> :func:`amt_jax.train.loop.train`.

Kept import-light until the flags are parsed, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_SEARCH_PATHS = (os.path.join(_PACKAGE_ROOT, "gin_configs"), "gin_configs")

USAGE_EXAMPLE = """\
example:
  python -m amt_jax.train --gin_file=mt3.gin --gin_file=tiny/mt3_cpu.gin \\
      --gin.NUM_STEPS=200 --workdir=/tmp/mt3_tiny

Gin files are searched in gin_configs/ (and --gin_search_path); every --gin.KEY=VALUE
is applied after all files (e.g. --gin.BATCH_SIZE=8, --gin.train.log_every=10).
The full gin config is written to WORKDIR/config.gin and the operative one (what
was actually used) to WORKDIR/operative_config.gin.
"""


class ConfigError(ValueError):
    """A configuration problem reported as one line."""


def parse_flags(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m amt_jax.train",
        description="Train and evaluate a transcription model (MT3, Onsets and Frames, NMP).",
        epilog=USAGE_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--gin_file",
        action="append",
        default=[],
        help="gin config file (repeatable; later files override earlier ones)",
    )
    parser.add_argument(
        "--gin.KEY",
        dest="gin_binding_help",
        metavar="VALUE",
        help="a gin binding, e.g. --gin.NUM_STEPS=1000 or --gin.train.eval_every=500 (repeatable)",
    )
    parser.add_argument(
        "--gin_search_path", action="append", default=[], help="extra directory for gin files"
    )
    parser.add_argument(
        "--workdir",
        help="checkpoints, TensorBoard logs, configs (required): a local path or a URL such "
        "as gs://bucket/run",
    )
    parser.add_argument(
        "--print_config", action="store_true", help="print the parsed gin config and exit"
    )
    parser.add_argument(
        "--retain_freed_heap",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep freed C-heap memory mapped for the next step instead of unmapping it: "
        "saves ~700k page faults per T5-small step on CPU (see amt_jax.heap); does nothing "
        "unless JAX's default backend is CPU (JAX_PLATFORMS, else no accelerator plugin)",
    )
    parser.add_argument(
        "--profile_steps",
        metavar="FIRST:LAST",
        help="trace these train steps (1-based, inclusive) with jax.profiler into "
        "WORKDIR/profile, e.g. --profile_steps=10:12",
    )
    bindings, rest = [], []
    for arg in argv:
        if arg.startswith("--gin.") and not arg.startswith("--gin.KEY"):
            binding = arg[len("--gin.") :]
            if "=" not in binding:
                raise ConfigError(f"Gin flag {arg!r} needs a value: --gin.KEY=VALUE")
            bindings.append(binding)
        else:
            rest.append(arg)
    args = parser.parse_args(rest)
    if args.profile_steps:
        first, sep, last = args.profile_steps.partition(":")
        if not (sep and first.isdigit() and last.isdigit() and 1 <= int(first) <= int(last)):
            raise ConfigError(
                f"--profile_steps={args.profile_steps!r}: expected FIRST:LAST with "
                "1 <= FIRST <= LAST, e.g. --profile_steps=10:12"
            )
        bindings.append(f"train.profile_steps = ({int(first)}, {int(last)})")
    return args, bindings


def configure_logging() -> None:
    """The trainer's own progress at INFO; tfds' and orbax's per-call absl INFO lines (a
    CheckpointManager's whole options repr, each dataset read) only from WARNING up."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)


def parse_gin(files: list[str], bindings: list[str], search_paths: list[str]) -> None:
    """Parse gin files and bindings; every gin error becomes a one-line :class:`ConfigError`."""
    import gin

    import amt_jax.train.configurables  # noqa: F401  (registers the configurables)

    directories = [p for p in list(DEFAULT_SEARCH_PATHS) + list(search_paths) if os.path.isdir(p)]
    for path in directories:
        gin.add_config_file_search_path(path)
    if not files:
        raise ConfigError("No --gin_file given; e.g. --gin_file=mt3.gin (see gin_configs/).")
    for name in files:
        if not any(os.path.isfile(os.path.join(d, name)) for d in [""] + directories):
            raise ConfigError(
                f"Gin file {name!r} not found here or in {', '.join(directories)}; "
                "check the name or add --gin_search_path."
            )
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(logging.CRITICAL)  # gin logs every search-path miss as an error
    try:
        gin.parse_config_files_and_bindings(files, bindings)
    except OSError as error:
        raise ConfigError(
            f"Gin file not found: {error}; files are searched in gin_configs/."
        ) from None
    except (ValueError, TypeError, SyntaxError) as error:
        first_line = str(error).strip().splitlines()[0]
        raise ConfigError(f"Bad gin config: {first_line}") from None
    finally:
        root_logger.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args, bindings = parse_flags(argv)
        heap_retained = False
        if args.retain_freed_heap:
            from amt_jax import heap

            # before anything starts JAX's threads; a no-op unless JAX will run on CPU
            heap_retained = heap.retain_freed_heap()
        parse_gin(args.gin_file, bindings, args.gin_search_path)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import gin

    if args.print_config:
        print(gin.config_str())
        return 0
    if not args.workdir:
        print("error: --workdir is required", file=sys.stderr)
        return 2
    configure_logging()
    if args.retain_freed_heap and not heap_retained:
        reason = heap.default_backend_is_cpu()[1]
        logging.info("C heap left as is (retaining is for glibc CPU training; %s)", reason)
    from amt_jax import storage

    try:  # a local path, file:// or a usable URL such as gs://; nothing written otherwise
        args.workdir = storage.resolve(args.workdir, "workdir", checkpoints=True)
        storage.makedirs(args.workdir)
        storage.write_text(storage.join(args.workdir, "config.gin"), gin.config_str())
    except storage.StorageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    from amt_jax.train import loop

    try:
        result = gin.get_configurable("amt_jax.train")(workdir=args.workdir)
    except (ValueError, loop.NonFiniteLossError) as error:
        # gin appends "In call to configurable ..." lines; the first line says what to change
        print(f"error: {str(error).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    finally:
        operative = storage.join(args.workdir, "operative_config.gin")
        try:
            storage.write_text(operative, gin.operative_config_str())
        except (OSError, storage.StorageError) as error:  # do not hide the run's own error
            logging.warning("Could not write %s: %s", operative, error)
    print(f"Finished at step {result.step}.")
    for name, value in sorted(result.eval_metrics.items()):
        print(f"  eval/{name}: {value:.4f}")
    return 0

"""Build an amt_jax tfds dataset (synthetic or real) into a data_dir.

Usage:
  python tools/build_dataset.py amt_synthetic/tiny --data_dir ~/tensorflow_datasets
  python tools/build_dataset.py amt_synthetic/default --num_workers 2
  python tools/build_dataset.py maestro_v3 --manual_dir /data/maestro-v3.0.0
  python tools/build_dataset.py amt_synthetic/small --beam_runner=FnApiRunner \
    --beam_options="--direct_num_workers=2 --direct_running_mode=multi_processing"

Real datasets read their own on-disk layout from --manual_dir (nothing is downloaded).
--beam_runner / --beam_options build on Apache Beam (`pip install -e .[beam]`) instead of
in this process; the examples are the same, and a build whose runner loses examples fails
(the local FnApiRunner does on `default`-sized splits). See docs/datasets.md ("Big builds
on Beam") for layouts, sizes and the Dataflow / Spark / Flink commands.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def beam_config(runner: str | None, options: str | None) -> dict:
    """DownloadConfig kwargs for a Beam build ({} for the plain build)."""
    if runner is None and options is None:
        return {}
    import shlex  # noqa: PLC0415

    from apache_beam.options.pipeline_options import PipelineOptions  # noqa: PLC0415

    flags = shlex.split(options or "")
    if runner is not None:
        flags = [f for f in flags if not f.startswith("--runner")] + [f"--runner={runner}"]
    return {"beam_options": PipelineOptions(flags=flags)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="tfds name[/config], e.g. amt_synthetic/tiny")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--manual_dir", default=None)
    parser.add_argument(
        "--num_workers", type=int, default=None, help="amt_synthetic: render processes"
    )
    parser.add_argument(
        "--beam_runner",
        default=None,
        help="build on Apache Beam with this runner, e.g. FnApiRunner, DataflowRunner",
    )
    parser.add_argument(
        "--beam_options",
        default=None,
        help="Beam pipeline flags in one string (shell-split), e.g. "
        '"--runner=FnApiRunner --direct_num_workers=2 --direct_running_mode=multi_processing"',
    )
    parser.add_argument(
        "--num_shards", type=int, default=None, help="shards per split (default: by size)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)  # per-bundle INFO chatter

    import tensorflow_datasets as tfds

    import amt_jax.data.builders  # noqa: F401  (registers the builders)

    builder_kwargs = {}
    name, _, config = args.name.partition("/")
    if args.num_workers is not None:
        os.environ["AMT_JAX_RENDER_WORKERS"] = str(args.num_workers)  # amt_synthetic only
    if config:
        builder_kwargs["config"] = config
    builder = tfds.builder_cls(name)(data_dir=args.data_dir, **builder_kwargs)
    download_config = tfds.download.DownloadConfig(
        manual_dir=args.manual_dir,
        num_shards=args.num_shards,
        **beam_config(args.beam_runner, args.beam_options),
    )
    start = time.time()
    builder.download_and_prepare(download_config=download_config)
    how = "on Beam" if download_config.beam_options is not None else "locally"
    print(
        f"built {builder.info.full_name} {how} in {time.time() - start:.1f} s "
        f"into {builder.data_dir}"
    )
    for split, info in builder.info.splits.items():
        print(f"  {split}: {info.num_examples} examples")


if __name__ == "__main__":
    main()

"""``python -m amt_jax.evaluate --workdir WORKDIR``: score a training run's checkpoints.

The evaluation job that runs beside training (as t5x's separate eval job): it reads the
workdir's ``config.gin`` (the eval task, frame convention, velocity and program options the
run was configured with), restores each checkpoint's parameters on this host, transcribes
the eval tracks through the same path as the CLI and the in-training evaluator (the
model's ``segment`` / ``predict`` / ``outputs_to_notes``), and scores them with mir_eval in
worker processes while the next track is transcribed. Each step's mean metrics go to
``WORKDIR/eval/step_<N>.json`` and to stdout.

    python -m amt_jax.evaluate --workdir runs/of_cpu                 # the latest step
    python -m amt_jax.evaluate --workdir runs/of_cpu --all_steps     # every saved step
    python -m amt_jax.evaluate --workdir runs/of_cpu --watch         # new steps as they land

The tracks stream from disk (one in memory at a time). On several hosts, start one
process per host with ``--distributed`` (and ``--coordinator_address``,
``--num_processes``, ``--process_id`` where ``jax.distributed`` cannot detect them): each
process restores the parameters, transcribes its own share of the tracks on its own
devices and scores them; the per-track metrics are gathered so the mean is the one a
single process computes, and process 0 writes it.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

EVAL_DIR = "eval"


def _train_defaults() -> dict[str, Any]:
    from amt_jax.train import loop

    parameters = inspect.signature(loop.train).parameters
    return {name: p.default for name, p in parameters.items()}


def options_from_gin(config_file: str) -> dict[str, Any]:
    """The eval settings a run's ``config.gin`` binds (``train.*``, ``task_eval_tracks.*``),
    with ``loop.train``'s defaults where it binds nothing."""
    import gin

    from amt_jax.train.main import parse_gin

    gin.clear_config()
    parse_gin([config_file], [], [])
    defaults = _train_defaults()

    def query(name: str, default: Any) -> Any:
        try:
            return gin.query_parameter(name)
        except ValueError:
            return default

    options = {
        name: query(f"train.{name}", defaults[name])
        for name in (
            "frame_convention",
            "with_velocity",
            "program_granularities",
            "decode_options",
            "max_eval_tracks",
            "eval_batch_size",
        )
    }
    options["task_name"] = query("task_eval_tracks.task_name", None)
    options["synthetic_config"] = query("task_eval_tracks.synthetic_config", None)
    options["data_dir"] = query("task_eval_tracks.data_dir", None)
    gin.clear_config()
    return options


def evaluate_step(
    workdir: str,
    step: int | None,
    tracks: Iterable[Any],
    *,
    frame_convention: str = "mt3",
    with_velocity: bool = False,
    program_granularities: Sequence[str] = (),
    decode_options: dict[str, Any] | None = None,
    batch_size: int | None = None,
    scoring_workers: int = 1,
    scorer: Any = None,
) -> dict[str, float]:
    """Mean metrics of one checkpoint step over ``tracks`` (``EvalTrack``s).

    With several processes (``jax.distributed``), ``tracks`` is this process's share
    (:func:`amt_jax.train.evaluation.host_share`: global tracks ``process_index::
    process_count``); each process restores the parameters and transcribes its share on
    its own devices (no collectives), and the per-track metrics are gathered so every
    process returns the mean over all tracks. ``scorer``: a
    :class:`~amt_jax.metrics.scoring.TrackScorer` to reuse (else one with
    ``scoring_workers`` processes for this call).
    """
    import jax

    from amt_jax.infer import transcribe as transcribe_lib
    from amt_jax.metrics import scoring, transcription
    from amt_jax.train import evaluation

    own_scorer = scorer is None
    if own_scorer:
        scorer = scoring.TrackScorer(
            scoring_workers,
            with_velocity=with_velocity,
            program_granularities=program_granularities,
            frame_convention=frame_convention,
        )
    processes, index = jax.process_count(), jax.process_index()
    options = dict(decode_options or {})
    pending, per_track, error, transcriber = [], [], None, None
    try:
        tracks = iter(tracks)
        first = next(tracks, None)  # a task that does not resolve fails before the restore
        tracks = itertools.chain([] if first is None else [first], tracks)
        transcriber = transcribe_lib.Transcriber(
            checkpoint=workdir, step=step, **({"batch_size": batch_size} if batch_size else {})
        )
        for local, track in enumerate(tracks):
            result = transcriber.transcribe(track.audio_s, transcriber.sample_rate, **options)
            # scored in a worker while the next track is transcribed
            pending.append(
                (index + local * processes, scorer.submit(track.reference, result.sequence))
            )
        per_track = [(i, future.result()) for i, future in pending]
    except Exception as exc:  # the other processes wait for this one's metrics
        if processes == 1:
            raise
        error = exc
    finally:
        if own_scorer:
            scorer.close()
    everything = evaluation.gather_track_metrics(per_track, error)
    if not everything:
        raise ValueError(f"no eval tracks to score for '{workdir}'")
    metrics = transcription.aggregate_track_metrics(everything)
    metrics["tracks"] = float(len(everything))
    metrics["step"] = float(transcriber.step)
    return metrics


def write_metrics(workdir: str, step: int, metrics: dict[str, float]) -> str:
    """``WORKDIR/eval/step_<N>.json``, written whole (local path or e.g. gs:// URL)."""
    from amt_jax import storage

    directory = storage.join(workdir, EVAL_DIR)
    storage.makedirs(directory)
    path = storage.join(directory, f"step_{step}.json")
    storage.write_text(path, json.dumps(metrics, indent=2, sort_keys=True))
    return path


def _local_config(workdir: str, scratch: str) -> str:
    """The run's config.gin as a local file gin can parse (copied when the workdir is a
    URL); a clear error when it is missing."""
    from amt_jax import storage

    config_file = storage.join(workdir, "config.gin")
    if not storage.isfile(config_file):
        raise ValueError(f"'{workdir}' has no config.gin: not a python -m amt_jax.train run")
    if not storage.is_remote(config_file):
        return config_file
    local = os.path.join(scratch, "config.gin")
    with open(local, "w", encoding="utf-8") as f:
        f.write(storage.read_text(config_file))
    return local


def _tracks_from_options(options: dict[str, Any]) -> Callable[..., Iterable[Any]]:
    from amt_jax.train import inputs

    if options["task_name"] is None:
        raise ValueError(
            "the run's config.gin names no eval task (task_eval_tracks.task_name); pass "
            "--eval_task NAME"
        )
    return inputs.task_eval_tracks(
        options["task_name"],
        synthetic_config=options["synthetic_config"],
        data_dir=options["data_dir"],
    )


def parse_flags(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m amt_jax.evaluate",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workdir", required=True, help="a training workdir")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--step", type=int, help="this checkpoint step (default: the latest)")
    which.add_argument("--all_steps", action="store_true", help="every saved step")
    which.add_argument(
        "--watch", action="store_true", help="score each new step as it lands (Ctrl-C stops)"
    )
    parser.add_argument("--eval_task", help="score on this task instead of the run's")
    parser.add_argument("--max_tracks", type=int, help="at most this many tracks")
    parser.add_argument("--batch_size", type=int, help="windows per model call")
    parser.add_argument(
        "--scoring_workers",
        type=int,
        default=2,
        help="mir_eval processes (default 2; 0 scores in this process)",
    )
    parser.add_argument("--poll_seconds", type=float, default=60.0, help="--watch interval")
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="one process per host (jax.distributed): each transcribes its share of the tracks",
    )
    parser.add_argument("--coordinator_address", help="with --distributed: HOST:PORT")
    parser.add_argument("--num_processes", type=int, help="with --distributed")
    parser.add_argument("--process_id", type=int, help="with --distributed")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_flags(sys.argv[1:] if argv is None else argv)
    import jax

    from amt_jax.infer.transcribe import TranscriptionError
    from amt_jax.metrics import scoring
    from amt_jax.models import checkpoints
    from amt_jax.partitioning import mesh as mesh_lib
    from amt_jax.train import evaluation

    if args.distributed:
        mesh_lib.initialize_distributed(
            args.coordinator_address, args.num_processes, args.process_id
        )
    scorer = None
    try:
        workdir = checkpoints.directory(args.workdir, orbax=True)  # local, file:// or gs://
        with tempfile.TemporaryDirectory() as scratch:
            options = options_from_gin(_local_config(workdir, scratch))
        if args.eval_task:
            options["task_name"] = args.eval_task
        load_tracks = _tracks_from_options(options)
        limit = args.max_tracks or options["max_eval_tracks"]
        scorer = scoring.TrackScorer(  # its workers stay up from step to step
            args.scoring_workers,
            with_velocity=options["with_velocity"],
            program_granularities=options["program_granularities"],
            frame_convention=options["frame_convention"],
        )
        settings = dict(
            decode_options=options["decode_options"], batch_size=args.batch_size, scorer=scorer
        )
        first_host = jax.process_index() == 0
        done: set[int] = set()
        while True:
            saved = checkpoints.checkpoint_steps(workdir)
            if args.step is not None:
                if args.step not in saved:
                    raise ValueError(f"'{workdir}' has no checkpoint at step {args.step}: {saved}")
                todo = [args.step]
            elif args.all_steps or args.watch:
                todo = [step for step in saved if step not in done]
            else:
                todo = saved[-1:] if saved else [None]  # None: an export's own step
            todo = evaluation.allgather_objects(todo)[0]  # every host scores host 0's list
            for step in todo:
                # this host's share of the tracks, streamed from disk again for each step
                tracks = evaluation.host_share(load_tracks, max_tracks=limit)
                metrics = evaluate_step(workdir, step, tracks, **settings)
                if first_host:
                    path = write_metrics(workdir, int(metrics["step"]), metrics)
                    shown = {k: round(v, 4) for k, v in metrics.items() if k.endswith("F1")}
                    print(json.dumps({"step": int(metrics["step"]), **shown, "written": path}))
                done.add(step)
            if not args.watch:
                return 0
            time.sleep(args.poll_seconds)
    except KeyboardInterrupt:
        return 0
    except (ValueError, OSError, TranscriptionError) as error:  # CheckpointError is a ValueError
        print(f"error: {str(error).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    except KeyError as error:  # an unknown task name (amt_jax.data.tasks.get_task)
        print(f"error: {error.args[0] if error.args else error}", file=sys.stderr)
        return 1
    finally:
        if scorer is not None:
            scorer.close()


if __name__ == "__main__":
    sys.exit(main())

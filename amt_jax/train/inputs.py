"""Input factories for the loop: training batches and full eval tracks from the data tasks.

The loop only needs ``(shard_index=, num_shards=) -> iterator`` with ``state()`` /
``restore(state)`` and ``() -> iterable of EvalTrack``; these helpers build them from
registered tasks or mixtures (``amt_jax.data``), preparing the built-in synthetic dataset
first when asked to.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator

from amt_jax.train.evaluation import EvalTrack


def prepare_synthetic(config: str = "tiny", data_dir: str | None = None) -> list[str]:
    """Build (once; tfds skips prepared data) and register the synthetic dataset's tasks."""
    from amt_jax.data import tasks
    from amt_jax.data.builders.synthetic import AmtSynthetic

    builder = AmtSynthetic(config=config, data_dir=data_dir)
    if not builder.is_prepared():
        logging.info("Building the synthetic dataset %s in %s", config, builder.data_dir)
    builder.download_and_prepare()
    return tasks.register_synthetic_tasks(config, data_dir)


def _prepare(synthetic_config: str | None, data_dir: str | None) -> None:
    if synthetic_config is not None:
        prepare_synthetic(synthetic_config, data_dir)


def task_batches(
    name: str,
    batch_size: int,
    *,
    seed: int = 0,
    synthetic_config: str | None = None,
    data_dir: str | None = None,
    num_workers: int = 0,
    num_threads: int = 1,
) -> Callable:
    """Training data factory over a task or mixture (global batch ``batch_size``).

    ``num_workers``: grain worker processes per host making the crops (0: ``num_threads``
    prefetch threads in the training process). The batches do not depend on either.
    """
    return functools.partial(
        _make_iterator, name, batch_size, seed, synthetic_config, data_dir, num_workers, num_threads
    )


def _make_iterator(
    name,
    batch_size,
    seed,
    synthetic_config,
    data_dir,
    num_workers,
    num_threads,
    *,
    shard_index,
    num_shards,
):
    from amt_jax.data import pipeline

    _prepare(synthetic_config, data_dir)
    return pipeline.TrainIterator(
        name,
        batch_size,
        seed=seed,
        shard_index=shard_index,
        num_shards=num_shards,
        num_workers=num_workers,
        num_threads=num_threads,
    )


def task_eval_tracks(
    task_name: str,
    *,
    synthetic_config: str | None = None,
    data_dir: str | None = None,
) -> Callable[..., Iterator[EvalTrack]]:
    """Full tracks of a task's split (audio at the family's sample rate + reference),
    streamed one at a time: ``(shard_index=0, num_shards=1) -> iterator`` over this host's
    share (source indices ``shard_index::num_shards``), so hosts split the tracks."""
    return functools.partial(_tracks, task_name, synthetic_config, data_dir)


def _tracks(
    task_name, synthetic_config, data_dir, *, shard_index: int = 0, num_shards: int = 1
) -> Iterator[EvalTrack]:
    from amt_jax.data import tasks

    _prepare(synthetic_config, data_dir)
    spec = tasks.get_task(task_name)
    for track in tasks.iter_tracks(spec, shard_index=shard_index, num_shards=num_shards):
        yield EvalTrack(track.id, track.audio, track.sequence)

"""Apache Beam builds of the amt_jax tfds builders, only when the caller asks for one.

tfds writes with its BeamWriter when `_generate_examples` returns a `beam.PTransform`
instead of yielding. Our builders return one only while `download_and_prepare` runs with
a `DownloadConfig` that names a Beam runner or Beam options; otherwise they keep the
plain generator path, which does not need apache-beam installed:

    from apache_beam.options.pipeline_options import PipelineOptions
    flags = ["--runner=FnApiRunner", "--direct_num_workers=2",
             "--direct_running_mode=multi_processing"]
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        beam_options=PipelineOptions(flags=flags)))

Both paths turn each item (a render job, a track) into its example with the same
module-level function, and the BeamWriter orders examples by a hash of the key just as the
plain writer does, so the two builds hold the same examples in the same index order (the
shard boundaries may differ).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

import tensorflow_datasets as tfds

from amt_jax.data.builders import common

log = logging.getLogger(__name__)

SKIPPED_COUNTER = "skipped_examples"
EMITTED_NAMESPACE = "amt_jax_emitted_examples"  # one counter per split


def requested(download_config: tfds.download.DownloadConfig | None) -> bool:
    """True when the DownloadConfig asks for Beam (a runner or pipeline options)."""
    return download_config is not None and (
        download_config.beam_runner is not None or download_config.beam_options is not None
    )


class BeamWhenAsked:
    """Builder mixin: `self.use_beam` is True while the splits of a Beam build are made.

    Put it before the tfds base class (`class B(BeamWhenAsked, RandomAccessBuilder)`); the
    builder's `_generate_examples` then returns `examples_transform(...)` when
    `self.use_beam`, and its plain generator otherwise.
    """

    use_beam = False
    _emitted: dict[str, int] | None = None

    def _generate_splits(self, dl_manager, download_config):
        self.use_beam = requested(download_config)
        self._emitted = None
        if self.use_beam:
            log.info("%s: building on Apache Beam", self.name)
        try:  # the Beam pipeline runs (and ends) inside this call
            split_infos = super()._generate_splits(dl_manager, download_config)
            if self.use_beam:
                check_written(self.name, split_infos, self._emitted)
            return split_infos
        finally:
            self.use_beam = False

    def _process_pipeline_result(self, pipeline_result):
        self._emitted = count_emitted(pipeline_result)
        skipped = count_skipped(pipeline_result)
        (log.warning if skipped else log.info)(
            "%s: Beam build skipped %d examples (each is logged by its worker)",
            self.name,
            skipped,
        )
        return super()._process_pipeline_result(pipeline_result)


def examples_transform(items: Sequence, to_examples: Callable[..., Iterable], *args, split: str):
    """`beam.Create(items) | beam.FlatMap(to_examples, *args)`: the Beam twin of a loop
    that yields `to_examples(item, *args)` for each item. Each example is counted per
    split, so that `check_written` can compare what was made with what was written.

    `to_examples` must be a module-level function (it is pickled to the workers) returning
    the item's (key, example) pairs, none for an item it skips (it should then call
    `count_skip`).
    """
    beam = tfds.core.lazy_imports.apache_beam
    return (
        beam.Create(list(items))
        | beam.FlatMap(to_examples, *args)
        | "CountEmitted" >> beam.Map(_count_emitted, split)
    )


def _count_emitted(key_example, split: str):
    import apache_beam as beam  # noqa: PLC0415

    beam.metrics.Metrics.counter(EMITTED_NAMESPACE, split).inc()
    return key_example


def count_emitted(pipeline_result) -> dict[str, int] | None:
    """Examples made per split in a finished pipeline (None if the runner has no metrics)."""
    import apache_beam as beam  # noqa: PLC0415

    try:
        metrics = pipeline_result.metrics().query(
            beam.metrics.MetricsFilter().with_namespace(EMITTED_NAMESPACE)
        )
    except (AttributeError, NotImplementedError):
        return None
    counts: dict[str, int] = {}
    for c in metrics["counters"]:
        counts[c.key.metric.name] = counts.get(c.key.metric.name, 0) + int(c.committed or 0)
    return counts


def check_written(dataset: str, split_infos, emitted: dict[str, int] | None):
    """Raise if a split holds fewer examples than its workers made.

    Seen here with the local FnApiRunner on the synthetic `default` config (1263 examples,
    train 1.3 GB): with 2 worker processes 948 and then 1011 examples were written (a third
    run was complete), with 4 processes 836 of 887 train examples, and neither Beam nor
    tfds reported anything (Beam only logs "Data output stream buffer size ... exceeds
    536870912 bytes"). tfds leaves the data in its `incomplete` folder when this raises.
    """
    if emitted is None:
        log.warning("%s: the runner reports no metrics; written examples not checked", dataset)
        return
    lost = {
        info.name: (info.num_examples, emitted.get(info.name, 0))
        for info in split_infos
        if info.num_examples != emitted.get(info.name, 0)
    }
    if lost:
        raise RuntimeError(
            f"{dataset}: the Beam runner wrote fewer examples than its workers made: "
            + ", ".join(f"{s} {w} of {e}" for s, (w, e) in lost.items())
            + ". The local FnApiRunner loses examples on large splits: build without"
            " Beam, or on a cluster runner (docs/datasets.md, 'Big builds on Beam')."
        )


def count_skip(dataset: str, split: str, item_id: str, reason: str):
    """On a Beam worker: log a skipped item and count it in the pipeline's metrics."""
    BeamSkipCounter(dataset, split).skip(item_id, reason)


class BeamSkipCounter(common.SkipCounter):
    """A SkipCounter for Beam workers: each skip is logged and counted in the pipeline's
    metrics, which `BeamWhenAsked` sums up once the pipeline is done."""

    def skip(self, track_id: str, reason: str):
        import apache_beam as beam  # noqa: PLC0415  (only on the Beam path)

        super().skip(track_id, reason)
        beam.metrics.Metrics.counter(self.dataset, SKIPPED_COUNTER).inc()


def per_item(builder, split: str, items: Sequence, item_examples: Callable[..., Iterable], *args):
    """The examples of `item_examples(item, skips, *args)` for each item: a generator on the
    plain path, a Beam transform when `builder.use_beam`.

    `item_examples` is a module-level function yielding the item's (key, example) pairs and
    reporting what it skips to `skips` (a `common.SkipCounter`); `args` must pickle.
    """
    if getattr(builder, "use_beam", False):
        return examples_transform(
            items, _item_on_worker, item_examples, builder.name, split, *args, split=split
        )
    return _items_locally(builder.name, split, items, item_examples, *args)


def _items_locally(dataset, split, items, item_examples, *args):
    skips = common.SkipCounter(dataset, split)
    written = 0
    for item in items:
        for key, example in item_examples(item, skips, *args):
            written += 1
            yield key, example
    skips.summary(written)


def _item_on_worker(item, item_examples, dataset, split, *args):
    return list(item_examples(item, BeamSkipCounter(dataset, split), *args))


def count_skipped(pipeline_result) -> int:
    """Sum of the `count_skip` counters of a finished pipeline (0 if the runner has none)."""
    import apache_beam as beam  # noqa: PLC0415

    try:
        metrics = pipeline_result.metrics().query(
            beam.metrics.MetricsFilter().with_name(SKIPPED_COUNTER)
        )
    except (AttributeError, NotImplementedError):  # some runners do not report metrics
        return 0
    return sum(int(c.committed or 0) for c in metrics["counters"])

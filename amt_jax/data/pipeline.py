"""The training input: a grain pipeline over chunk stores, deterministic and resumable.

For a task or mixture (resolved through the seqio registry, `mixtures.get_mixture`):

    per task: chunk records (ArrayRecord, `chunks`) -> seeded global shuffle, repeated with
              a new order every epoch -> a random crop of each chunk + its targets
    mix the tasks by the mixture's rates (n_i^τ / Σ n_j^τ; grain's deterministic
    proportional interleave) -> batches of the per-host size -> host h takes batches
    h, h + H, h + 2H, ... -> from step s on -> prefetch (threads, or worker processes)

Why this shape:
- Memory does not depend on the dataset's size: records are read by index from disk,
  a crop reads one chunk, and the shuffle is an index permutation.
- A crop's cost does not depend on the track's length: it encodes one chunk's notes.
- Worker processes unpickle only `chunks` and `feature_converters` (no TensorFlow).
- Global batch s is the concatenation over hosts of their batch s, whatever the number of
  hosts H, so the position is just the step number: `state()` is ``{"step": s, ...}``, and
  a resume at step s is exact with any number of hosts and of worker processes (batches
  are made before the prefetch splits the work, so workers never change the order).
"""

from __future__ import annotations

import logging

import numpy as np

from amt_jax.data import chunks, feature_converters, mixtures, preprocessors, tasks, worker_init

log = logging.getLogger(__name__)

DEFAULT_NUM_THREADS = 1  # prefetch threads when no worker processes are used
DEFAULT_PREFETCH_BATCHES = 2


def _task_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def task_records(source, seed: int):
    """Infinite grain MapDataset of one chunk source's records: every chunk once per
    epoch, in a new seeded order each epoch."""
    import grain  # noqa: PLC0415

    return grain.MapDataset.source(source).seed(seed).shuffle().repeat()


def task_examples(source, family: preprocessors.FamilySpec, seed: int):
    """Infinite grain MapDataset of crops of one chunk source (`task_records` + a seeded
    random crop of each)."""
    return task_records(source, seed).random_map(chunks.CropTransform(family))


class TrainIterator:
    """Infinite iterator of this host's training batches of a task or mixture.

    ``num_workers`` > 0 runs the crops in that many grain worker processes (spawned, each
    with its own copy of the pipeline); 0 computes them in ``num_threads`` prefetch
    threads of this process.
    """

    def __init__(
        self,
        name: str,
        global_batch_size: int,
        *,
        seed: int = 0,
        shard_index: int = 0,
        num_shards: int = 1,
        step: int = 0,
        num_workers: int = 0,
        num_threads: int = DEFAULT_NUM_THREADS,
        prefetch_batches: int = DEFAULT_PREFETCH_BATCHES,
        build_missing: bool = True,
    ):
        if global_batch_size <= 0 or global_batch_size % num_shards:
            raise ValueError(
                f"global batch {global_batch_size} is not a positive multiple of "
                f"{num_shards} shards (one per process)"
            )
        if not 0 <= shard_index < num_shards:
            raise ValueError(f"shard_index {shard_index} not in [0, {num_shards})")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.name, self.global_batch_size, self.seed = name, global_batch_size, seed
        self.shard_index, self.num_shards = shard_index, num_shards
        self.num_workers, self.num_threads = num_workers, max(1, num_threads)
        self.prefetch_batches = max(1, prefetch_batches)
        self.mixture = mixtures.get_mixture(name)
        self.task_specs = [tasks.get_task(n) for n in self.mixture.task_names]
        self.family = self.mixture.family()
        self.sources = [tasks.chunk_source(s, build_missing=build_missing) for s in self.task_specs]
        for spec, source in zip(self.task_specs, self.sources):
            if source.meta.sample_rate != self.family.sample_rate:
                raise chunks.ChunkStoreError(
                    f"{spec.name}: {source.directory} holds {source.meta.sample_rate} Hz "
                    f"audio, {self.family.name} needs {self.family.sample_rate} Hz"
                )
            window = self.family.window_samples
            if window > source.meta.tail_samples + 1:
                raise chunks.ChunkStoreError(
                    f"{spec.name}: {self.family.name} windows of {window} samples need a "
                    f"chunk tail of at least that; {source.directory} has "
                    f"{source.meta.tail_samples}"
                )
        self.step = int(step)
        self._iterator = None

    @property
    def local_batch_size(self) -> int:
        return self.global_batch_size // self.num_shards

    def host_batches(self):
        """This host's batches as a grain MapDataset (index s = the batch of step s)."""
        import grain  # noqa: PLC0415

        per_task = [
            task_examples(source, self.family, _task_seed(self.seed, i))
            for i, source in enumerate(self.sources)
        ]
        if len(per_task) == 1:
            examples = per_task[0]
        else:
            examples = grain.MapDataset.mix(per_task, weights=list(self.mixture.rates))
        batches = examples.batch(
            self.local_batch_size, drop_remainder=True, batch_fn=feature_converters.stack_examples
        )
        return batches[self.shard_index :: self.num_shards]

    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        """The batch of `step`, computed directly (random access; no prefetch)."""
        return self.host_batches()[step]

    def _start(self):
        import grain  # noqa: PLC0415

        dataset = self.host_batches()[self.step :].to_iter_dataset(
            grain.ReadOptions(
                num_threads=0 if self.num_workers else self.num_threads,
                prefetch_buffer_size=self.prefetch_batches,
            )
        )
        if self.num_workers:
            _allow_grain_flags()
            dataset = dataset.mp_prefetch(
                grain.MultiprocessingOptions(
                    num_workers=self.num_workers, per_worker_buffer_size=self.prefetch_batches
                ),
                worker_init_fn=worker_init.die_with_parent,
            )
        return iter(dataset)

    def state(self) -> dict:
        """Position after the batches handed out so far (what a checkpoint stores)."""
        return {
            "step": int(self.step),
            "seed": int(self.seed),
            "name": self.name,
            "global_batch_size": int(self.global_batch_size),
        }

    def restore(self, state: dict) -> None:
        for key in ("name", "seed", "global_batch_size"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"the checkpointed input state has {key}={state[key]!r}, this run has "
                    f"{getattr(self, key)!r}; resume with the run's settings or a new workdir"
                )
        self.close()
        self.step = int(state["step"])

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._iterator is None:
            self._iterator = self._start()
        batch = next(self._iterator)
        self.step += 1
        return batch

    def close(self) -> None:
        iterator, self._iterator = self._iterator, None
        if iterator is not None and hasattr(iterator, "close"):
            iterator.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001  (interpreter shutdown)
            pass


def _allow_grain_flags() -> None:
    """grain <= 0.2.18 reads an absl flag in mp_prefetch and fails in programs that did
    not parse absl flags (google/grain#1355): mark them parsed, keeping the defaults."""
    from absl import flags  # noqa: PLC0415

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def eval_segments(task_name: str):
    """Every track of a task cut into consecutive windows, with ids and start times so
    predictions can be stitched back: yields dicts with `id`, `start_time`, `segment`,
    `num_segments`, the family's features and the full reference `sequence`. Streams one
    track at a time."""
    spec = tasks.get_task(task_name)
    family = spec.family
    for track in tasks.iter_tracks(spec):
        starts = preprocessors.segment_starts(len(track.audio), family.window_samples)
        for index, start in enumerate(starts):
            features = preprocessors.make_example(
                track.audio, track.sequence, start, family, track.id
            )
            yield {
                "id": track.id,
                "start_time": start / family.sample_rate,
                "segment": index,
                "num_segments": len(starts),
                "sequence": track.sequence,
                **features,
            }


def eval_batches(task_name: str, batch_size: int):
    """`eval_segments` grouped into host batches (the last one smaller); the metadata
    (`id`, `start_time`, `segment`) travel as lists next to the arrays."""
    buffer = []
    for segment in eval_segments(task_name):
        buffer.append(segment)
        if len(buffer) == batch_size:
            yield _eval_batch(buffer)
            buffer = []
    if buffer:
        yield _eval_batch(buffer)


def _eval_batch(segments):
    array_keys = [k for k, v in segments[0].items() if isinstance(v, np.ndarray)]
    batch = feature_converters.stack_examples([{k: s[k] for k in array_keys} for s in segments])
    for key in ("id", "start_time", "segment", "sequence"):
        batch[key] = [s[key] for s in segments]
    return batch

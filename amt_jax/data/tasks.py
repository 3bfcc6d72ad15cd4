"""Tasks: one per dataset × model family × split, registered by name.

A task names a tfds dataset split and a model family (`preprocessors.FamilySpec`).
Task names follow MT3's habit of encoding the target format in the name:
`<dataset>_mt3_<vocab layout>_<split>`, `<dataset>_onsets_frames_<split>`,
`<dataset>_nmp_<split>` (e.g. `synthetic_tiny_mt3_mt3_train`).

Each task is also registered as a `seqio.Task` whose source is the task's chunk store
(`amt_jax.data.chunks`), so seqio's registry is where users find tasks, vocabularies and
mixture rates; the trainer resolves names there (`mixtures.get_mixture`) and reads the
same chunk stores through grain (`amt_jax.data.pipeline`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os

import numpy as np

from amt_jax.data import chunks, preprocessors
from amt_jax.data.builders import common

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    name: str
    tfds_name: str  # "<builder>/<config>", e.g. "amt_synthetic/tiny"
    split: str
    family: preprocessors.FamilySpec
    data_dir: str | None = None
    # A chunk store made elsewhere (`chunks.write_store`), read instead of the one built
    # beside the tfds dataset.
    chunk_dir: str | None = None


@dataclasses.dataclass(frozen=True)
class Track:
    id: str
    audio: np.ndarray  # float32 [samples] at the family's sample rate
    sequence: object  # note_seq.NoteSequence


TASKS: dict[str, TaskSpec] = {}


def task_name(dataset: str, family: preprocessors.FamilySpec, split: str) -> str:
    if family.name == "mt3":
        return f"{dataset}_mt3_{family.vocab_layout}_{split}"
    return f"{dataset}_{family.name}_{split}"


def register_task(spec: TaskSpec, *, with_seqio: bool = True) -> TaskSpec:
    TASKS[spec.name] = spec
    if with_seqio:
        _register_seqio_task(spec)
    return spec


def register_dataset_tasks(
    dataset: str,
    tfds_name: str,
    splits: tuple[str, ...],
    data_dir: str | None = None,
    families: tuple[preprocessors.FamilySpec, ...] = tuple(preprocessors.FAMILIES.values()),
) -> list[str]:
    """Register every (family, split) task of one dataset; returns the task names."""
    names = []
    for family in families:
        for split in splits:
            name = task_name(dataset, family, split)
            register_task(TaskSpec(name, tfds_name, split, family, data_dir))
            names.append(name)
    return names


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; registered: {sorted(TASKS)}")
    return TASKS[name]


def _builder(tfds_name: str, data_dir: str | None):
    import tensorflow_datasets as tfds  # noqa: PLC0415

    import amt_jax.data.builders  # noqa: F401, PLC0415  (registers the builders)

    return tfds.builder(tfds_name, data_dir=data_dir)


def num_examples(spec: TaskSpec) -> int:
    return int(_builder(spec.tfds_name, spec.data_dir).info.splits[spec.split].num_examples)


def track_source(spec: TaskSpec):
    """The split's tracks as a random-access source (tfds ArrayRecord): `len`, `[i]`.

    Nothing is loaded until an index is read; a clear error if the dataset was prepared in
    a format without random access (tfds' TFRecord default, from before amt_jax's builders
    wrote ArrayRecord).
    """
    builder = _builder(spec.tfds_name, spec.data_dir)
    try:
        return builder.as_data_source(split=spec.split)
    except NotImplementedError as e:
        raise ValueError(
            f"{spec.tfds_name} in {builder.data_dir} was prepared as "
            f"{builder.info.file_format}, which cannot be read by index; rebuild it with "
            "file_format='array_record' (the default of amt_jax's builders), e.g. "
            f"`python tools/build_dataset.py {spec.tfds_name} --data_dir NEW_DIR`"
        ) from e


def decode_track(example: dict, sample_rate: int) -> Track:
    """One tfds example as a Track: float32 audio at `sample_rate`, sustain applied.

    Sustain-pedal extension is done once per track (MT3 applies it before tokenising; the
    rolls need the same sounding notes), so crops need not redo it.
    """
    from amt_jax.audio.io import resample  # noqa: PLC0415
    from amt_jax.music.sequences import apply_sustain  # noqa: PLC0415

    audio = example["audio"].astype(np.float32) / 32768.0
    audio = resample(audio, int(example["sample_rate"]), sample_rate)
    sequence = apply_sustain(common.decode_sequence(example["sequence"]))
    track_id = example["id"]
    return Track(
        track_id.decode() if isinstance(track_id, bytes) else str(track_id), audio, sequence
    )


def iter_tracks(spec: TaskSpec, *, shard_index: int = 0, num_shards: int = 1):
    """Stream this shard's tracks (source indices shard_index, shard_index + num_shards, ...)
    one at a time, at the family's sample rate: memory holds one track, whatever the split's
    size, and `num_shards` hosts together see every track exactly once."""
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index {shard_index} not in [0, {num_shards})")
    source = track_source(spec)
    if len(source) == 0:
        raise ValueError(f"{spec.tfds_name} split {spec.split} has no examples")
    for index in range(shard_index, len(source), num_shards):
        yield decode_track(source[index], spec.family.sample_rate)


def chunk_source(
    spec: TaskSpec,
    *,
    build_missing: bool = True,
    chunk_seconds: float = chunks.DEFAULT_CHUNK_SECONDS,
    tail_seconds: float = chunks.DEFAULT_TAIL_SECONDS,
) -> chunks.ChunkSource:
    """The task's chunk store (`amt_jax.data.chunks`), built on first use beside the tfds
    dataset: the split streamed one track at a time, resampled to the family's rate."""
    if spec.chunk_dir is not None:
        return chunks.ChunkSource(spec.chunk_dir)
    builder = _builder(spec.tfds_name, spec.data_dir)
    dataset_dir = os.fspath(builder.data_dir)
    if "://" in dataset_dir:
        raise chunks.ChunkStoreError(
            f"{spec.name}: the dataset is at {dataset_dir}; chunk stores are written and "
            "read by index (ArrayRecord) on a local or mounted filesystem. Mount the bucket "
            "(e.g. gcsfuse) and pass the mount point as data_dir"
        )
    directory = chunks.store_directory(
        dataset_dir, spec.split, spec.family.sample_rate, chunk_seconds
    )
    if chunks.read_meta(directory) is None:
        if not build_missing:
            raise chunks.ChunkStoreError(
                f"no chunk store for {spec.name} in {directory}; build it with "
                f"`python -m amt_jax.data.chunks {spec.name}`"
            )
        num_tracks = len(track_source(spec))
        log.info("%s: chunking %d tracks into %s", spec.name, num_tracks, directory)
        chunks.write_store(
            directory,
            iter_tracks(spec),
            spec.family.sample_rate,
            chunk_seconds=chunk_seconds,
            tail_seconds=tail_seconds,
            num_tracks=num_tracks,
            description=f"{spec.tfds_name} {spec.split} @ {spec.family.sample_rate} Hz",
        )
    source = chunks.ChunkSource(directory)
    if source.meta.tail_seconds != tail_seconds:
        log.info("%s: using the store's tail of %g s", directory, source.meta.tail_seconds)
    return source


def load_tracks(spec: TaskSpec) -> tuple[Track, ...]:
    """All tracks of the task's split in memory, sorted by id (small datasets and tests
    only: training and evaluation stream through `iter_tracks` and the chunk store)."""
    return tuple(sorted(iter_tracks(spec), key=lambda t: t.id))


def output_shapes(family: preprocessors.FamilySpec) -> dict[str, tuple[tuple[int, ...], str]]:
    """Per-example feature shapes and dtypes (no batch axis)."""
    shapes = {"audio_bs": ((family.window_samples,), "float32")}
    if family.name == "mt3":
        shapes["targets_bl"] = ((family.target_length,), "int32")
    elif family.name == "nmp":
        shapes["contour_btf"] = ((family.num_frames, 3 * preprocessors.NUM_PITCHES), "float32")
        for key in ("note_btp", "onset_btp"):
            shapes[key] = ((family.num_frames, preprocessors.NUM_PITCHES), "float32")
    else:
        for key in ("onset_btp", "offset_btp", "frame_btp", "velocity_btp"):
            shapes[key] = ((family.num_frames, preprocessors.NUM_PITCHES), "float32")
    return shapes


def _seqio_examples(task_name: str, split: str, shuffle_files: bool = False, seed=None):
    """tf.data of the task's training crops, read from its chunk store through the same
    grain transform as the trainer's pipeline (seed None: seed 0, still reproducible)."""
    import tensorflow as tf  # noqa: PLC0415

    spec = get_task(task_name)
    shapes = output_shapes(spec.family)
    source = chunk_source(spec)

    def generate():
        import grain  # noqa: PLC0415

        dataset = grain.MapDataset.source(source).seed(0 if seed is None else int(seed))
        if shuffle_files:
            dataset = dataset.shuffle()
        for example in dataset.random_map(chunks.CropTransform(spec.family)):
            yield {key: example[key].astype(dtype) for key, (_, dtype) in shapes.items()}

    signature = {
        key: tf.TensorSpec(shape, tf.as_dtype(dtype)) for key, (shape, dtype) in shapes.items()
    }
    return tf.data.Dataset.from_generator(generate, output_signature=signature)


def _register_seqio_task(spec: TaskSpec):
    """The task in seqio's registry (names, vocabulary, output features), its source the
    chunk store: `seqio.get_mixture_or_task(name).get_dataset(...)` yields the crops the
    trainer trains on."""
    import seqio  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    from amt_jax.vocab.vocabularies import MT3Vocabulary, VocabularyConfig  # noqa: PLC0415

    family = spec.family
    shapes = output_shapes(family)
    features = {
        key: seqio.ContinuousFeature(dtype=tf.as_dtype(dtype), rank=len(shape))
        for key, (shape, dtype) in shapes.items()
        if key != "targets_bl"
    }
    if family.name == "mt3":
        vocab = MT3Vocabulary(VocabularyConfig.named(family.vocab_layout))
        features["targets_bl"] = seqio.Feature(vocab, add_eos=False, dtype=tf.int32)
    if spec.name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(spec.name)
    seqio.TaskRegistry.add(
        spec.name,
        source=seqio.FunctionDataSource(
            dataset_fn=functools.partial(_seqio_examples, spec.name),
            splits=(spec.split,),
            caching_permitted=False,
        ),
        preprocessors=[],
        output_features=features,
        shuffle_buffer_size=None,
    )


def register_synthetic_tasks(config: str = "tiny", data_dir: str | None = None) -> list[str]:
    """Tasks of the built-in synthetic dataset: `synthetic_<config>_*`."""
    from amt_jax.data.builders.synthetic.synthetic_dataset_builder import (  # noqa: PLC0415
        UNSEEN_SPLIT,
    )

    return register_dataset_tasks(
        f"synthetic_{config}",
        f"amt_synthetic/{config}",
        ("train", "validation", "test", UNSEEN_SPLIT),
        data_dir,
    )

"""Beam builds: the tiny synthetic config built on Apache Beam (FnApiRunner, 2 worker
processes) holds exactly the examples of the plain build, in the same index order."""

import apache_beam as beam
import numpy as np
import pytest
import tensorflow_datasets as tfds
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import util as beam_util

from amt_jax.data.builders import beam_build
from amt_jax.data.builders.synthetic import AmtSynthetic
from amt_jax.data.builders.synthetic import synthetic_dataset_builder as module
from amt_jax.data.synth import pieces

TWO_PROCESSES = [
    "--runner=FnApiRunner",  # DirectRunner would first try to download the Prism runner
    "--direct_num_workers=2",
    "--direct_running_mode=multi_processing",
]


def assert_same_example(a: dict, b: dict, where: str):
    assert set(a) == set(b), where
    for field in a:
        if field == "tracks":
            assert set(a[field]) == set(b[field]), where
            for sub in a[field]:
                np.testing.assert_array_equal(a[field][sub], b[field][sub], err_msg=where)
        elif isinstance(a[field], np.ndarray):
            assert a[field].dtype == b[field].dtype, f"{where} {field}"
            np.testing.assert_array_equal(a[field], b[field], err_msg=f"{where} {field}")
        else:
            assert a[field] == b[field], f"{where} {field}"


def assert_same_builds(plain, on_beam, min_examples: int = 1):
    """Same splits; at every index of every split the same key and every field equal."""
    assert set(on_beam.info.splits.keys()) == set(plain.info.splits.keys())
    for split in plain.info.splits.keys():
        a, b = plain.as_data_source(split), on_beam.as_data_source(split)
        assert len(a) == len(b) >= min_examples, split
        for i in range(len(a)):
            x, y = a[i], b[i]
            assert x["id"] == y["id"], f"{split}[{i}]"
            assert x["audio"].size > 0
            assert_same_example(x, y, f"{split}[{i}] {x['id']!r}")


def test_beam_build_of_tiny_equals_the_plain_build(tiny_synthetic, tmp_path, monkeypatch):
    plain, _ = tiny_synthetic
    # A fresh music21 cache: the Beam workers convert the corpus pieces themselves.
    monkeypatch.setenv("AMT_JAX_CACHE", str(tmp_path / "cache"))

    def no_local_rendering(self, split, jobs):
        raise AssertionError("the Beam build rendered in the launching process")

    monkeypatch.setattr(AmtSynthetic, "_render_locally", no_local_rendering)
    on_beam = AmtSynthetic(config="tiny", data_dir=str(tmp_path / "tfds"))
    on_beam.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            beam_options=PipelineOptions(flags=TWO_PROCESSES), num_shards=2
        )
    )
    # BeamWriter cut train into 2 shards (7 + 3; the plain build has 1): the index order
    # must still match, since both writers sort by a hash of the key.
    assert on_beam.info.splits["train"].num_shards == 2
    assert_same_builds(plain, on_beam, min_examples=2)
    for i in range(len(train := on_beam.as_data_source("train"))):  # real audio, not silence
        assert train[i]["audio"].size > 16000 and np.abs(train[i]["audio"]).max() > 1000


def test_plain_path_unless_the_download_config_asks_for_beam(tmp_path):
    assert not beam_build.requested(None)
    assert not beam_build.requested(tfds.download.DownloadConfig())
    assert beam_build.requested(tfds.download.DownloadConfig(beam_runner="FnApiRunner"))
    options = PipelineOptions(flags=TWO_PROCESSES)
    assert beam_build.requested(tfds.download.DownloadConfig(beam_options=options))

    builder = AmtSynthetic(config="tiny", data_dir=str(tmp_path))
    job = builder.split_jobs()["validation"][0]
    generated = builder._generate_examples("validation", [job])
    assert not isinstance(generated, beam.PTransform)
    builder.use_beam = True
    transform = builder._generate_examples("validation", [job])
    assert isinstance(transform, beam.PTransform)


def test_skipped_piece_is_counted_on_beam(tmp_path):
    """A piece that fails to render is logged and counted, not silently dropped."""
    builder = AmtSynthetic(config="tiny", data_dir=str(tmp_path))
    job = builder.split_jobs()["validation"][0]
    bad = pieces.RenderJob(job.spec, "NoSuchFont", job.seed, job.sample_rate)
    flags = ["--runner=FnApiRunner", "--direct_num_workers=2"]
    pipeline = beam.Pipeline(options=PipelineOptions(flags=flags))
    keys = (
        pipeline
        | beam_build.examples_transform(
            [bad], module._job_examples, "amt_synthetic", "x", split="x"
        )
        | beam.Map(lambda key_example: key_example[0])
    )
    beam_util.assert_that(keys, beam_util.equal_to([]))
    result = pipeline.run()
    result.wait_until_finish()
    assert beam_build.count_skipped(result) == 1


def test_a_split_with_fewer_examples_than_were_made_fails_the_build():
    """The guard against a runner losing examples silently (seen on FnApiRunner with two
    worker processes at the scale of the `default` config)."""
    infos = [
        tfds.core.SplitInfo(name=n, shard_lengths=[k], num_bytes=0) for n, k in [("a", 3), ("b", 2)]
    ]
    beam_build.check_written("d", infos, {"a": 3, "b": 2})  # complete: no error
    with pytest.raises(RuntimeError, match="b 2 of 5"):
        beam_build.check_written("d", infos, {"a": 3, "b": 5})


def test_emitted_examples_are_counted_per_split(tmp_path):
    builder = AmtSynthetic(config="tiny", data_dir=str(tmp_path))
    jobs = builder.split_jobs()["validation"]
    pipeline = beam.Pipeline(options=PipelineOptions(flags=["--runner=FnApiRunner"]))
    _ = pipeline | beam_build.examples_transform(
        jobs, module._job_examples, "amt_synthetic", "validation", split="validation"
    )
    result = pipeline.run()
    result.wait_until_finish()
    assert beam_build.count_emitted(result) == {"validation": len(jobs)}

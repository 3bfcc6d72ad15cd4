"""amt_jax: automatic music transcription (MT3, Onsets and Frames, NMP) in JAX/Flax."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.10,<0.13",
    "flax>=0.12,<0.13",
    "optax>=0.2.4,<0.3",
    "orbax-checkpoint>=0.11,<0.13",
    "tensorflow>=2.20,<2.22",
    "tensorflow-datasets>=4.9.7,<5",
    "seqio>=0.0.19,<0.1",
    "note-seq>=0.0.5,<0.1",
    "librosa>=0.10.2,<0.12",
    "mir_eval>=0.7,<0.9",
    "pretty_midi>=0.2.10,<0.3",
    "gin-config>=0.5,<0.6",
    "soundfile>=0.12,<0.14",
    "soxr>=0.3.7,<2",
    "numpy>=1.26,<3",
    "scipy>=1.11,<2",
    "matplotlib>=3.7,<4",
    "tqdm>=4.66,<5",
    "tensorboard>=2.20,<2.22",
    "pyfluidsynth>=1.3,<2",
    "music21>=9,<11",
    "pyyaml>=6,<7",
    # the streaming training input: index sampling, per-host shards, worker processes
    "grain>=0.2.12,<0.3",
    # tools/import_mt3.py reads t5x checkpoints (msgpack file + zarr arrays)
    "msgpack>=1.0,<2",
    "tensorstore>=0.1.60,<0.2",
    "ml_dtypes>=0.4,<1",
]

# Beam builds (amt_jax/data/builders/beam_build.py; docs/datasets.md "Big builds on Beam").
# apache-beam 2.77 requires protobuf<7, and sentencepiece 0.2.3 (seqio's tokenizer) ships
# code generated for protobuf>=7.36, which then fails to import: hold it below 0.2.3.
BEAM_REQUIRES = ["apache-beam>=2.60,<3", "sentencepiece>=0.2.1,<0.2.3"]

EXTRAS_REQUIRE = {
    "beam": BEAM_REQUIRES,
    "test": [
        *BEAM_REQUIRES,  # tests/data/test_beam_build.py builds on Beam's FnApiRunner
        "pytest>=8,<10",
        "pytest-xdist>=3.6,<4",  # `make test` runs on two processes
        "hypothesis>=6.100,<7",
        "ruff>=0.17,<0.18",  # `make lint` checks formatting: one formatter version
    ],
    # libtpu describes TPU topologies on any host, for tools/aot_compile.py (no TPU needed)
    "tpu-aot": ["jax[tpu]>=0.10,<0.13"],
    "gcs": ["google-cloud-storage>=2.14,<4"],  # orbax checkpoints in gs:// workdirs
}

setup(
    name="amt_jax",
    version="0.1.0",
    description="Automatic music transcription in JAX/Flax: MT3, Onsets and Frames, NMP.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["amt_jax", "amt_jax.*"]),
    python_requires=">=3.10,<3.14",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["amt-jax = amt_jax.infer.cli:console_main"]},
    include_package_data=True,
    package_data={"amt_jax.audio": ["filterbanks/*.npz"]},
)

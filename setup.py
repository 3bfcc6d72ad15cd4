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
    # tools/import_mt3.py reads t5x checkpoints (msgpack file + zarr arrays)
    "msgpack>=1.0,<2",
    "tensorstore>=0.1.60,<0.2",
    "ml_dtypes>=0.4,<1",
]

EXTRAS_REQUIRE = {
    "test": [
        "pytest>=8,<10",
        "pytest-xdist>=3.6,<4",  # `make test` runs on two processes
        "hypothesis>=6.100,<7",
        "ruff>=0.17,<0.18",  # `make lint` checks formatting: one formatter version
    ],
    # libtpu describes TPU topologies on any host, for tools/aot_compile.py (no TPU needed)
    "tpu-aot": ["jax[tpu]>=0.10,<0.13"],
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

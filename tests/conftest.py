"""Test session setup: 8 fake CPU devices before jax starts, quiet TensorFlow."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["JAX_NUM_CPU_DEVICES"] = "8"
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import importlib.util  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

_NO_LIBTPU = pytest.mark.skip(
    reason="needs libtpu to describe TPU topologies: pip install -e '.[tpu-aot]' "
    "(CI's perf step installs it and runs `pytest -m 'perf or tpu'`)"
)


def pytest_collection_modifyitems(config, items):
    """Skips the ``tpu`` tests, saying why, where the tpu-aot extra is not installed."""
    if importlib.util.find_spec("libtpu") is not None:
        return
    for item in items:
        if item.get_closest_marker("tpu") is not None:
            item.add_marker(_NO_LIBTPU)


@pytest.fixture(scope="session")
def shared_dir():
    """Path of ../shared (fixtures, references) next to the repository."""
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.abspath(os.path.join(here, "..", "..", "shared"))
    if not os.path.isdir(path):
        pytest.skip(f"../shared not found at {path}")
    return path


@pytest.fixture(scope="module")
def fast_compile():
    """Compile without XLA's heavy optimisation passes for the requesting module.

    Compile time dominates the tiny-model CPU tests; the numerics they check do not need
    -O. Modules opt in with ``pytestmark = pytest.mark.usefixtures("fast_compile")``;
    tests/train and tests/partitioning do so for every module in their conftest.
    """
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)

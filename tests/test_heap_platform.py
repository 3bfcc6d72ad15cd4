"""The retained C heap is for CPU training only: which backend JAX will use is decided from
JAX_PLATFORMS / jax.config, else from whether an accelerator plugin is installed."""

import logging
import subprocess
import sys
import types

import pytest

from amt_jax import heap


@pytest.fixture
def no_mallopt(monkeypatch):
    """Count mallopt calls instead of changing the test process's malloc."""
    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(heap, "_glibc", lambda: FakeLibc())
    return calls


@pytest.fixture
def unset_jax_config(monkeypatch):
    """As if JAX were not imported yet (other tests import it): only the environment counts."""
    monkeypatch.delitem(sys.modules, "jax", raising=False)


@pytest.mark.parametrize(
    ("platforms", "on_cpu"),
    [("cpu", True), ("tpu", False), ("cuda,cpu", False), ("cpu,cuda", True), (" CPU ", True)],
)
def test_jax_platforms_decides(monkeypatch, unset_jax_config, platforms, on_cpu):
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    monkeypatch.setattr(heap, "accelerator_plugins", lambda: ["cuda12"])  # not consulted
    assert heap.default_backend_is_cpu()[0] is on_cpu


def test_without_jax_platforms_an_installed_plugin_means_an_accelerator(
    monkeypatch, unset_jax_config
):
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.setattr(heap, "accelerator_plugins", lambda: ["libtpu"])
    on_cpu, reason = heap.default_backend_is_cpu()
    assert not on_cpu and "libtpu" in reason
    monkeypatch.setattr(heap, "accelerator_plugins", lambda: [])
    assert heap.default_backend_is_cpu()[0]


def test_jax_config_wins_over_the_environment(monkeypatch):
    imported_jax = types.SimpleNamespace(config=types.SimpleNamespace(jax_platforms="tpu"))
    monkeypatch.setitem(sys.modules, "jax", imported_jax)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert not heap.default_backend_is_cpu()[0]
    imported_jax.config.jax_platforms = None  # unset in jax.config: the environment decides
    assert heap.default_backend_is_cpu()[0]


def test_retain_is_a_logged_no_op_off_cpu(monkeypatch, unset_jax_config, no_mallopt, caplog):
    monkeypatch.setenv("JAX_PLATFORMS", "tpu")
    with caplog.at_level(logging.INFO, logger="amt_jax.heap"):
        assert heap.retain_freed_heap() is False
    assert no_mallopt == []
    assert "not CPU" in caplog.text and "tpu" in caplog.text
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert heap.retain_freed_heap() is True
    assert len(no_mallopt) == 4


def test_the_decision_does_not_import_jax():
    probe = (
        "import sys; from amt_jax import heap; heap.default_backend_is_cpu(); "
        "print('jax' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"

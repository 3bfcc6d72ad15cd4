"""Which platform a step is compiled for, so a model can pick a platform-specific form.

Some computations are written two ways: a form XLA:CPU runs fast (large GEMMs, custom
backwards) and the plain form every other backend compiles well. Models take a config
string with ``"auto"`` among its values and resolve it here *while tracing*, so the choice
follows where the step will run, not where the Python process happens to live.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import jax

_state = threading.local()


@contextlib.contextmanager
def building_for(platform: str) -> Iterator[str]:
    """Context in which :func:`target_platform` is ``platform``: a trainer builds its model
    in it, so settings resolved at build time (``dtype="auto"``) follow the mesh's devices
    (TPU in an ahead-of-time compile from a CPU host) without building under the mesh."""
    previous = getattr(_state, "platform", None)
    _state.platform = platform
    try:
        yield platform
    finally:
        _state.platform = previous


def target_platform() -> str:
    """Platform the code being traced is compiled for: the current mesh's devices (under
    ``jax.set_mesh``; in ahead-of-time compiles for TPU the host backend is CPU), else the
    platform of :func:`building_for`, else ``jax.default_backend()``."""
    device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
    platform = getattr(device, "platform", None)
    return platform or getattr(_state, "platform", None) or jax.default_backend()


def resolve_auto(choice: str, *, cpu: str, other: str) -> str:
    """``choice`` itself, or for ``"auto"``: ``cpu`` when compiling for CPU, else ``other``."""
    if choice != "auto":
        return choice
    return cpu if target_platform() == "cpu" else other


#: values of the models' ``dtype`` setting
DTYPES = ("auto", "float32", "bfloat16")


def resolve_dtype(choice: str) -> str:
    """A model's activation / matmul dtype: ``"auto"`` is float32 when compiling for CPU and
    bfloat16 elsewhere (t5x's mixed precision on accelerators; parameters, optimizer state,
    softmax statistics, logits and losses stay float32 either way)."""
    if choice not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {choice!r}")
    return resolve_auto(choice, cpu="float32", other="bfloat16")

"""Which platform a step is compiled for, so a model can pick a platform-specific form.

Some computations are written two ways: a form XLA:CPU runs fast (large GEMMs, custom
backwards) and the plain form every other backend compiles well. Models take a config
string with ``"auto"`` among its values and resolve it here *while tracing*, so the choice
follows where the step will run, not where the Python process happens to live.
"""

from __future__ import annotations

import jax


def target_platform() -> str:
    """Platform the code being traced is compiled for: the current mesh's devices (under
    ``jax.set_mesh``; in ahead-of-time compiles for TPU the host backend is CPU), else
    ``jax.default_backend()``."""
    device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
    platform = getattr(device, "platform", None)
    return platform or jax.default_backend()


def resolve_auto(choice: str, *, cpu: str, other: str) -> str:
    """``choice`` itself, or for ``"auto"``: ``cpu`` when compiling for CPU, else ``other``."""
    if choice != "auto":
        return choice
    return cpu if target_platform() == "cpu" else other

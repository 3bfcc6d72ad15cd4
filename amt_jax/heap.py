"""How an amt_jax process uses the C heap (glibc malloc; every function is a no-op elsewhere).

XLA:CPU allocates every call's temporaries with ``malloc``: a T5-small train step at batch 2
needs 2.1 GB of them. Two policies, one per kind of process:

- a **training** process on CPU runs the same step thousands of times, so it should keep
  what it freed (:func:`retain_freed_heap`; on an accelerator the step's temporaries live
  in device memory, so it does nothing there);
- a **transcription** process should give back what a model call left behind, so a long
  file's peak stays low (:func:`release_freed_heap`).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import importlib.util
import logging
import os
import pkgutil
import sys

_LOG = logging.getLogger(__name__)

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim  # noqa: B018  (glibc has both)
    except (OSError, AttributeError):
        return None
    return libc


def release_freed_heap() -> None:
    """Hand the C heap's free pages back to the OS (glibc ``malloc_trim``).

    glibc keeps freed chunks mapped, so without this the resident set of a transcription
    process drifts up by 100-150 MB and the next call's temporaries stack on top of it.
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def accelerator_plugins() -> list[str]:
    """JAX accelerator plugins installed here, found without importing JAX: ``jax_plugins``
    entry points and modules (CUDA, ROCm, Metal plugins) and ``libtpu``."""
    found = {entry.name for entry in importlib.metadata.entry_points(group="jax_plugins")}
    namespace = importlib.util.find_spec("jax_plugins")
    if namespace is not None and namespace.submodule_search_locations:
        found.update(
            module.name for module in pkgutil.iter_modules(namespace.submodule_search_locations)
        )
    if importlib.util.find_spec("libtpu") is not None:
        found.add("libtpu")
    return sorted(found)


def default_backend_is_cpu() -> tuple[bool, str]:
    """Whether JAX's default backend will be CPU, and why, decided without starting JAX.

    The first of the configured platforms (``jax.config.jax_platforms`` when JAX is already
    imported, else the ``JAX_PLATFORMS`` environment variable) when any are set; otherwise
    CPU exactly when no accelerator plugin is installed (:func:`accelerator_plugins`).
    """
    jax = sys.modules.get("jax")
    platforms = getattr(jax.config, "jax_platforms", None) if jax is not None else None
    platforms = platforms or os.environ.get("JAX_PLATFORMS", "")
    if platforms.strip():
        first = platforms.split(",")[0].strip().lower()
        return first == "cpu", f"jax_platforms={platforms!r}"
    plugins = accelerator_plugins()
    if plugins:
        return False, f"accelerator plugins installed: {', '.join(plugins)}"
    return True, "no JAX_PLATFORMS and no accelerator plugin installed"


def retain_freed_heap() -> bool:
    """Keep freed memory mapped for reuse (CPU training); call once, before JAX starts its
    threads. A no-op, logged at INFO, when JAX's default backend will not be CPU
    (:func:`default_backend_is_cpu`): there the step's temporaries live on the device.

    By default glibc serves blocks this large with ``mmap`` (or from per-thread arenas that
    it shrinks) and unmaps them on ``free``, so every step touches every page of its
    temporaries anew: ~700k page faults and ~2.5 s of kernel time per T5-small step on a
    2-core machine, a fifth of the step. One arena, no ``mmap`` and no trimming make the
    second step's temporaries reuse the first's pages. The cost: the process keeps its peak
    heap mapped, which a training process does anyway. Returns whether it took effect.
    """
    on_cpu, reason = default_backend_is_cpu()
    if not on_cpu:
        _LOG.info("Leaving the C heap to glibc: JAX's default backend is not CPU (%s)", reason)
        return False
    libc = _glibc()
    if libc is None:
        return False
    settings = (
        (_M_ARENA_MAX, 1),  # XLA's worker threads allocate from the main heap too
        (_M_MMAP_MAX, 0),  # large blocks come from the heap, not fresh mappings
        (_M_TRIM_THRESHOLD, -1),  # free() never returns the heap top to the OS
        (_M_TOP_PAD, 64 << 20),
    )
    return all(libc.mallopt(param, value) == 1 for param, value in settings)

"""Set-up of grain's input worker processes (imported by them: keep it light)."""

from __future__ import annotations

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(worker_index: int = 0, worker_count: int = 0) -> None:
    """Ask Linux to kill this worker when the training process dies, even by SIGKILL
    (preemption, OOM killer), so no orphaned workers are left holding memory or the
    parent's output pipes. A no-op elsewhere."""
    del worker_index, worker_count
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass

"""C-heap policy: a retained heap serves a repeated large allocation without page faults."""

import subprocess
import sys

import pytest

from amt_jax import heap

# Allocates, touches and frees 256 MB twice on a worker thread (as XLA's threads do) and
# prints the minor page faults of the second round.
_PROBE = """
import ctypes, resource, sys, threading
from amt_jax import heap
if sys.argv[1] == "retain":
    assert heap.retain_freed_heap()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 256 << 20
faults = []
def step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    pointer = libc.malloc(size)
    ctypes.memset(pointer, 1, size)
    libc.free(pointer)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
for _ in range(2):
    worker = threading.Thread(target=step)
    worker.start()
    worker.join()
print(faults[1])
"""


def _second_round_faults(mode: str) -> int:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True
    )
    return int(result.stdout.strip())


@pytest.mark.perf
@pytest.mark.skipif(heap._glibc() is None, reason="glibc malloc only")
def test_retained_heap_reuses_pages_that_glibc_would_unmap():
    pages = (256 << 20) // 4096
    assert _second_round_faults("default") > pages // 2  # glibc unmapped the block on free
    assert _second_round_faults("retain") < pages // 100  # the same pages, already mapped

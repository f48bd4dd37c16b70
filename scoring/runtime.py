"""Process-wide runtime settings, applied by entry points (the `clipmem` command, tests, benchmarks)."""

from __future__ import annotations

import ctypes
import os

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MiB = 1 << 20


def prefer_passive_openmp() -> None:
    """Let idle OpenMP threads sleep instead of spinning, unless the user chose otherwise.

    Spinning threads collapse torch's CPU throughput up to tenfold as soon as anything else wants a
    core (measured on 2 loaded cores: 370-1,500 against 2,000 samples/s); waiting passively costs
    little on an idle machine. It only takes effect before torch loads, so entry points call it first.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def keep_freed_memory() -> bool:
    """Keep memory torch frees for its next tensors instead of handing it back to the kernel (glibc only).

    A forward pass allocates activations of a few MiB per batch and frees them; glibc's defaults return
    such blocks to the kernel (large blocks by munmap, the heap's top beyond 128 KiB by trimming), so the
    next batch page-faults the same memory back in, and that zeroing cost as much as the matrix products
    themselves: the scorer's tower stage spent 87,000 page faults and ~30% of its time on it
    (bench/score_throughput.py). Blocks up to 32 MiB now come from the heap, and up to 1 GiB freed at its
    top is kept. Returns whether glibc took the settings (False elsewhere, where nothing changes).
    Skipped when the user set any MALLOC_* tuning variable, which this would override.
    """
    if any(k.startswith("MALLOC_") and k.endswith("_") for k in os.environ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, 32 * _MiB), (_M_TRIM_THRESHOLD, 1024 * _MiB), (_M_TOP_PAD, 64 * _MiB)))

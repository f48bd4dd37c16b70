"""Process-wide thread settings, applied by entry points (the `clipmem` command, tests, benchmarks)."""

from __future__ import annotations

import os


def prefer_passive_openmp() -> None:
    """Let idle OpenMP threads sleep instead of spinning, unless the user chose otherwise.

    Spinning threads collapse torch's CPU throughput up to tenfold as soon as anything else wants a
    core (measured on 2 loaded cores: 370-1,500 against 2,000 samples/s); waiting passively costs
    little on an idle machine. It only takes effect before torch loads, so entry points call it first.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

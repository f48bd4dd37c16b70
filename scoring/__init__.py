"""clipmem scoring: datasets, split plans, reference models f and g, CLIPMem scores, utility."""

import os

# OpenMP threads that spin while they wait collapse torch's CPU throughput up to tenfold as soon as
# anything else wants a core (measured on 2 loaded cores: 370-1,500 against 2,000 samples/s);
# waiting passively costs little on an idle machine. It must be set before torch loads, and every
# scoring module (CLI, tests, benchmarks, open_clip's trainer started from them) comes through here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

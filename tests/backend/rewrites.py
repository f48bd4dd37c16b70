"""Damage a run directory's Parquet files for the ingest-refusal tests, and read the run back sealed."""

from __future__ import annotations

import pandas as pd

from clipmem.backend.rundir import read_run
from clipmem.scoring.rundir import RunDir


def rewrite(path, change):
    """Rewrite a parquet file through `change`, which edits the frame in place or returns a new one."""
    frame = pd.read_parquet(path)
    changed = change(frame)
    (frame if changed is None else changed).to_parquet(path, index=False)


def read_sealed(path):
    """read_run after finishing the run again (fresh checksums), as a scorer that wrote the edited files
    would: the check under test answers, not the checksums (tested in test_ingest.py)."""
    RunDir(path).mark_finished()
    return read_run(path)


def rewritten(path, file, change):
    """read_sealed after `change` edited one Parquet file of the run at `path`."""
    rewrite(file, change)
    return read_sealed(path)

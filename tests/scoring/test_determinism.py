"""Same seed, same machine: identical split and scores."""

import numpy as np
import pandas as pd

from run_fixtures import tiny_run_config
from clipmem.scoring.pipeline import run_all
from clipmem.scoring.rundir import RunDir


def test_two_runs_with_one_seed_agree(tmp_path, tiny_data):
    frames, splits = [], []
    for name in ("a", "b"):
        run = RunDir(tmp_path / name)
        run.prepare_new(False)
        run_all(run, tiny_run_config(tiny_data, epochs=3, seed=11), show_progress=False)
        frames.append(pd.read_parquet(run.scores))
        splits.append(run.split.read_text())
    assert splits[0] == splits[1]
    a, b = frames
    assert a["sample_id"].tolist() == b["sample_id"].tolist()
    for col in ("clipmem", "clipmem_raw", "clipmem_contrastive", "align_f", "align_g", "clipscore_g"):
        np.testing.assert_allclose(a[col], b[col], atol=1e-5, rtol=0)

"""--replicas R: R independently seeded f/g pairs on one split; every score is their mean.

Two tiny runs of the same 2-epoch split and recipe, one with R = 1 and one with R = 2, scored with 2 views: replica 0
of the R = 2 run is the R = 1 run's f and g (same weights, same scores), replica 1 is another pair, and the R = 2
run's raw scores and null are the mean of the two pairs' scores computed here, one pair at a time. A run stopped
inside replica 1's training resumes to the same models and scores.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from run_fixtures import split_tiny_run
from clipmem.cli import app
from clipmem.scoring.columns import LAYER_UNIT_COLUMNS
from clipmem.scoring.models import Vocabulary, create_model
from clipmem.scoring.pipeline import load_corpus, run_all
from clipmem.scoring.score import score_null, score_run
from clipmem.scoring.train import load_model_weights

CPU = torch.device("cpu")


def _tiny(path, tiny_data, replicas):
    run, cfg = split_tiny_run(path, tiny_data, epochs=2)
    cfg.train = replace(cfg.train, replicas=replicas)
    cfg.score = replace(cfg.score, views=2)
    run.save_config(cfg)
    run_all(run, cfg, resume=True, show_progress=False)  # resume: the split is already planned
    return run, cfg


def _replica(run, cfg, replica):
    """Replica `replica`'s models of the run, loaded from its files, and the run's corpus."""
    corpus, _, model_cfg = load_corpus(run, cfg, Vocabulary.from_json(json.loads(run.vocab.read_text())))
    models = {}
    for name in ("f", "g"):
        models[name] = create_model(model_cfg, 0)
        load_model_weights(models[name], run.model_checkpoint(name, replica))
    return corpus, models


def _state(path):
    return torch.load(path, weights_only=True)["state_dict"]


def test_replicas_average_independent_pairs_and_resume(tmp_path, tiny_data):
    one, _ = _tiny(tmp_path / "one", tiny_data, replicas=1)
    two, cfg = _tiny(tmp_path / "two", tiny_data, replicas=2)
    for name in ("f", "g"):  # replica 0 is the R = 1 run's model; replica 1 another one
        a, b, c = _state(one.model_checkpoint(name)), _state(two.model_checkpoint(name)), _state(two.path / f"{name}.r1.pt")
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert not all(torch.equal(a[k], c[k]) for k in a)

    scores = pd.read_parquet(two.scores)
    single = pd.read_parquet(one.scores)
    raw, null = [], []
    for replica in (0, 1):
        corpus, models = _replica(two, cfg, replica)
        frame = score_run(models, corpus, cfg.score, cfg.train, CPU, embed=False).frame
        raw.append(frame["clipmem_raw"].to_numpy())
        null.append(score_null(models, corpus, cfg.score, cfg.train, CPU)["clipmem_raw"].to_numpy())
    assert np.array_equal(raw[0], single["clipmem_raw"].to_numpy())  # replica 0 scores as the R = 1 run
    assert np.abs(raw[0] - raw[1]).max() > 1e-3
    np.testing.assert_allclose(scores["clipmem_raw"], (raw[0] + raw[1]) / 2, atol=1e-7, rtol=0)
    np.testing.assert_allclose(scores["clipmem_raw_sd"], np.abs(raw[0] - raw[1]) / np.sqrt(2), atol=1e-7, rtol=0)
    np.testing.assert_allclose(scores["clipmem_raw"], scores["align_f"] - scores["align_g"], atol=1e-6)
    np.testing.assert_allclose(pd.read_parquet(two.null)["clipmem_raw"], (null[0] + null[1]) / 2, atol=1e-7, rtol=0)
    assert "clipmem_raw_sd" not in single and scores["clipmem_p"].notna().all()
    # UnitMem is per model: a mean over replicas' unrelated units has none; the R = 1 run's is defined
    units = list(LAYER_UNIT_COLUMNS)
    assert pd.read_parquet(two.layers)[units].isna().all().all()
    one_layers = pd.read_parquet(one.layers)
    assert one_layers.loc[one_layers["truth"] == "all", units].notna().all().all()
    metrics = json.loads(two.metrics.read_text())
    assert metrics["scoring"]["replicas"] == 2
    assert json.loads((two.path / "train_summary.json").read_text())["replicas"] == 2

    refused = CliRunner().invoke(app, ["score", str(two.path), "--shard", "0", "--num-shards", "2"])
    assert refused.exit_code == 2 and "has 2 replicas (--replicas): score it in one process" in refused.output

    # stopped during replica 1's second epoch: its final models and last per-epoch checkpoint are gone
    before = {name: _state(two.path / f"{name}.r1.pt") for name in ("f", "g")}
    (two.path / "f.r1.pt").unlink()
    (two.path / "g.r1.pt").unlink()
    for leftover in (two.checkpoints / "replica1").glob("epoch_2.pt*"):
        leftover.unlink()
    two.mark_unfinished()
    run_all(two, cfg, resume=True, show_progress=False)
    for name in ("f", "g"):
        after = _state(two.path / f"{name}.r1.pt")
        assert all(torch.equal(before[name][k], after[k]) for k in after), name
    again = pd.read_parquet(two.scores)
    assert np.array_equal(again["clipmem_raw"].to_numpy(), scores["clipmem_raw"].to_numpy())

"""The k-fold scheme: plan, coupled slots, scores of every non-S_E pair, ingest, export, scheme comparison."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from clipmem.cli import app
from clipmem.scoring.columns import LAYER_UNIT_COLUMNS
from clipmem.scoring.errors import ClipmemError
from clipmem.scoring.splits import SplitPlan, SplitSizes, plan_kfold, plan_splits

runner = CliRunner()
K = 3
TINY = ["--model", "clipmem-tiny", "--epochs", "2", "--batch-size", "128", "--sizes", "600,120,120,60",
        "--views", "2"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _data(n=100, faulty=10):
    ids = [f"s{i}" for i in range(n)]
    return ids, ["swapped" if i < faulty else "clean" for i in range(n)]


def test_plan_holds_extra_out_and_partitions_the_rest(tmp_path):
    ids, truth = _data()
    plan = plan_kfold(ids, truth, SplitSizes(60, 15, 15, 10), folds=4, seed=3)
    pool = [sid for fold in plan.folds for sid in fold]
    assert len(pool) == len(set(pool)) == 90 and sorted(len(f) for f in plan.folds) == [22, 22, 23, 23]
    assert set(pool).isdisjoint(plan.ids["extra"]) and len(plan.ids["extra"]) == 10
    assert {f"s{i}" for i in range(10)} <= set(pool)  # faulty pairs are all scored...
    assert max(sum(sid in {f"s{i}" for i in range(10)} for sid in f) for f in plan.folds) == 3  # ...and spread
    assert plan.ids["shared"] == [] and plan.ids["independent"] == plan.folds[0]
    assert set(plan.ids["candidate"]) == set(pool) - set(plan.folds[0])
    (tmp_path / "split.json").write_text(json.dumps(plan.to_json()))
    assert SplitPlan.load(tmp_path / "split.json") == plan == plan_kfold(ids, truth, SplitSizes(60, 15, 15, 10), 4, 3)
    assert json.loads((tmp_path / "split.json").read_text())["scheme"] == "kfold"
    with pytest.raises(ClipmemError, match="--folds must be >= 2"):
        plan_kfold(ids, truth, SplitSizes(60, 15, 15, 10), folds=1, seed=0)


def test_published_plan_file_is_unchanged(tmp_path):
    ids, truth = _data()
    plan = plan_splits(ids, truth, SplitSizes(60, 15, 15, 10), seed=0)
    (tmp_path / "split.json").write_text(json.dumps(plan.to_json()))
    assert list(json.loads((tmp_path / "split.json").read_text())) == ["seed", "sizes", "ids"]
    assert SplitPlan.load(tmp_path / "split.json").folds is None


def test_damaged_fold_list_is_refused(tmp_path):
    ids, truth = _data()
    raw = json.loads(json.dumps({"seed": 0, "ids": plan_kfold(ids, truth, SplitSizes(60, 15, 15, 10), 3, 0).ids,
                                 "folds": [["s1"], ["s2"]]}))
    (tmp_path / "split.json").write_text(json.dumps(raw))
    with pytest.raises(ClipmemError, match="malformed.*partition"):
        SplitPlan.load(tmp_path / "split.json")


@pytest.fixture(scope="module")
def kfold_run(tmp_path_factory, tiny_data):
    out = tmp_path_factory.mktemp("kfold") / "run"
    result = invoke("run", "--out", out, "--dataset", "folder", "--data", tiny_data, "--scheme", "kfold",
                    "--folds", K, *TINY)
    assert result.exit_code == 0, result.output
    assert "kfold scheme, 3 fold models" in result.output
    return out


def _corpus_and_models(out):
    from clipmem.scoring.models import Vocabulary, create_model
    from clipmem.scoring.pipeline import load_corpus
    from clipmem.scoring.rundir import RunDir
    from clipmem.scoring.schemes import model_names
    from clipmem.scoring.train import load_model_weights

    run = RunDir(out)
    cfg = run.load_config()
    corpus, _, model_cfg = load_corpus(run, cfg, Vocabulary.from_json(json.loads(run.vocab.read_text())))
    models = {}
    for name in model_names(corpus):
        models[name] = create_model(model_cfg, 0).eval()
        load_model_weights(models[name], run.model_checkpoint(name))
    return cfg, corpus, models


def test_slots_couple_the_fold_models(kfold_run):
    from clipmem.scoring.schemes import slot_batch_size, slot_table, trained_on

    _, corpus, _ = _corpus_and_models(kfold_run)
    table = slot_table(corpus)
    assert table.shape == (K, 840)
    pool = table.max(0).values
    assert len(set(pool.tolist())) == 840  # one slot per pair, the same slot in every model that trains on it
    for k in range(K):
        assert torch.equal(table[k] < 0, corpus.fold[pool] == k)
    assert slot_batch_size(table, 128) == 192  # 128 * 3 / 2: each model averages the recipe's batch
    seen = trained_on(corpus, pool)
    assert torch.equal(seen.sum(1), torch.full((840,), K - 1))


def test_every_pair_scored_against_the_models_that_held_it_out(kfold_run):
    from clipmem.scoring.schemes import model_names
    from clipmem.scoring.score import encode_captions, scored_rows, view_alignments, view_draws, reference_set

    out = kfold_run
    scores = pd.read_parquet(out / "scores.parquet")
    samples = pd.read_parquet(out / "samples.parquet")
    assert set(scores["sample_id"]) == set(samples.loc[samples["split"] != "extra", "sample_id"])
    assert sorted(scores["fold"].unique()) == list(range(K))
    assert (scores["seen_by"] == np.where(scores["split"] == "candidate", "f", "g")).all()
    assert (scores.loc[scores["fold"] == 0, "split"] == "independent").all()
    assert scores["clipmem"].min() == 0 and scores["clipmem"].max() == pytest.approx(1)
    # recompute A for each fold model: raw = mean over the other models - model k
    cfg, corpus, models = _corpus_and_models(out)
    rows = scored_rows(corpus)
    views, captions = view_draws(corpus, rows, cfg.score, cfg.train)
    ref = reference_set(corpus, cfg.score.reference_captions, cfg.score.seed)
    align = torch.stack([view_alignments(m, corpus, rows, views, captions, encode_captions(m, corpus, None, 512,
                                                                                         torch.device("cpu")),
                                         ref, cfg.score, cfg.train, torch.device("cpu"))[0].mean(1)
                         for m in models.values()])  # (K, N)
    fold = corpus.fold[rows]
    without = align[fold, torch.arange(len(rows))]
    with_ = (align.sum(0) - without) / (K - 1)
    assert list(models) == list(model_names(corpus))
    np.testing.assert_allclose(scores["align_g"], without.numpy(), atol=1e-5)
    np.testing.assert_allclose(scores["align_f"], with_.numpy(), atol=1e-5)
    np.testing.assert_allclose(scores["clipmem_raw"], (with_ - without).numpy(), atol=1e-5)


def test_outputs_follow_the_run_contract(kfold_run):
    out = kfold_run
    for name in ("fold0.pt", "fold1.pt", "fold2.pt", "layers.parquet", "COMPLETE"):
        assert (out / name).is_file(), name
    emb = np.load(out / "embeddings.npz")
    assert emb["f_image"].shape == (900, 32) and emb["g_text"].shape == (900, 32)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["scheme"]["literal_models"] == {"f": "fold0", "g": "fold1"}
    assert metrics["f"] == metrics["folds"]["fold0"] and set(metrics["folds"]) == {"fold0", "fold1", "fold2"}
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert set(log[0]) >= {"loss_fold0", "loss_fold1", "loss_fold2"}
    scores = pd.read_parquet(out / "scores.parquet")
    assert {"mem_image", "mem_text"} <= set(scores.columns) and "mem_swap_text" not in scores
    # UnitMem is not defined when every pair is seen by several models: null columns (docs/layers.md)
    layers = pd.read_parquet(out / "layers.parquet")
    assert layers["layer_mem"].notna().all() and layers[list(LAYER_UNIT_COLUMNS)].isna().all().all()
    # the null of fold k's pairs: S_E pairs with the other fold models as "with" and model k as "without"
    null = pd.read_parquet(out / "null.parquet")
    assert sorted(null["null_for"].unique()) == ["fold0", "fold1", "fold2"] and len(null) == 3 * 60
    per_key = {key: rows.set_index("sample_id").sort_index() for key, rows in null.groupby("null_for")}
    alone = np.stack([per_key[f"fold{k}"]["align_g"].to_numpy() for k in range(K)])  # A of model k, (K, 60)
    for k in range(K):
        np.testing.assert_allclose(per_key[f"fold{k}"]["align_f"], np.delete(alone, k, 0).mean(0), atol=1e-6)
    np.testing.assert_allclose(sum(per_key[f"fold{k}"]["clipmem_raw"] for k in range(K)), 0, atol=1e-6)
    assert scores["clipmem_p"].notna().all() and metrics["significance"]["null_pairs"] == 60
    report = invoke("report", out, "--json")
    assert report.exit_code == 0, report.output
    by_fold = json.loads(report.output)["by_fold"]
    assert [row["fold"] for row in by_fold] == [0, 1, 2] and sum(row["pairs"] for row in by_fold) == 840


def test_kfold_run_ingests(kfold_run, tmp_path):
    from sqlalchemy import text

    from clipmem.backend.db import make_engine, migrate
    from clipmem.backend.ingest import ingest

    engine = make_engine(f"sqlite:///{tmp_path / 'clipmem.db'}", bulk_write=True)
    migrate(engine)
    result = ingest(engine, kfold_run, name="kfold")
    assert result.scored == 840 and result.embedded == 900
    with engine.connect() as conn:
        seen = dict(conn.execute(text("SELECT seen_by, count(*) FROM scores GROUP BY seen_by")).all())
    assert seen == {"f": 560, "g": 280}
    engine.dispose()


def test_export_writes_one_training_set_per_fold(kfold_run):
    result = invoke("export-splits", kfold_run)
    assert result.exit_code == 0, result.output
    split = json.loads((kfold_run / "split.json").read_text())
    for k in range(K):
        rows = pd.read_csv(kfold_run / "export" / f"train_fold{k}.csv", sep="\t")
        others = {sid for j, fold in enumerate(split["folds"]) if j != k for sid in fold}
        assert rows["filepath"].nunique() == len(others)
        assert f"clipmem-fold{k}" in result.output


def test_compare_schemes(kfold_run, tiny_run):
    from clipmem.scoring.report import compare_runs

    run, _ = tiny_run
    result = invoke("compare-schemes", run.path, kfold_run, "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    published = pd.read_parquet(run.path / "scores.parquet")
    kfold = pd.read_parquet(kfold_run / "scores.parquet")
    common = set(published["sample_id"]) & set(kfold["sample_id"])
    assert found["common_pairs"] == len(common) > 0 and found["pairs_b"] == 840
    assert -1 <= found["spearman_clipmem"] <= 1
    row = {r["score"]: r for r in found["swapped_auroc"]}["clipmem"]
    assert 0 <= row["a_own"] <= 1 and 0 <= row["b_common"] <= 1
    assert "published" in found["run_a"] and "kfold, K=3" in found["run_b"]
    same = compare_runs(kfold, kfold.sample(frac=1, random_state=0))
    assert same["spearman_clipmem"] == pytest.approx(1) and same["common_pairs"] == 840
    text = invoke("compare-schemes", run.path, kfold_run)
    assert text.exit_code == 0 and "Spearman" in text.output


@pytest.mark.parametrize("args, message", [
    (["--scheme", "kfold"], "needs --folds K with K >= 2"),
    (["--scheme", "kfold", "--folds", "1"], "needs --folds K with K >= 2"),
    (["--scheme", "published", "--folds", "3"], "--folds applies to --scheme kfold"),
    (["--scheme", "loo"], "unknown split scheme 'loo'"),
])
def test_bad_scheme_options(tmp_path, tiny_data, args, message):
    result = invoke("split", "--out", tmp_path / "run", "--dataset", "folder", "--data", tiny_data, *args)
    assert result.exit_code == 2 and message in result.output, result.output

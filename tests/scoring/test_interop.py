"""Real-data features end to end: skip lists, fault injection, export for open_clip, checkpoint import."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from clipmem.cli import app
from source_fixtures import make_csv, make_shards

runner = CliRunner()
TINY_TRAIN = ["--model", "clipmem-tiny", "--epochs", "2", "--batch-size", "128"]


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def test_skip_writes_list_and_report_counts(tmp_path, tiny_data):
    # a copy of the tiny set with one undecodable image
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    first = json.loads((data / "metadata.jsonl").read_text().splitlines()[0])
    (data / first["file_name"]).write_bytes(b"broken")
    out = tmp_path / "run"
    result = invoke("run", "--out", out, "--dataset", "folder", "--data", data, "--sizes", "600,120,120,59",
                    *TINY_TRAIN)
    assert result.exit_code == 2 and f"cannot decode image of pair {first['id']}" in result.output
    assert not (out / "COMPLETE").exists()
    result = invoke("run", "--out", out, "--overwrite", "--dataset", "folder", "--data", data,
                    "--sizes", "600,120,120,59", "--on-error", "skip", *TINY_TRAIN)
    assert result.exit_code == 0, result.output
    skipped = [json.loads(x) for x in (out / "skipped.jsonl").read_text().splitlines()]
    assert [s["sample_id"] for s in skipped] == [first["id"]]
    assert "1 source items were skipped" in result.output
    assert first["id"] not in set(pd.read_parquet(out / "samples.parquet")["sample_id"])


def test_inject_on_csv_source_records_truth(tmp_path):
    csv = make_csv(tmp_path / "src")
    out = tmp_path / "run"
    result = invoke("split", "--out", out, "--dataset", "csv", "--data", csv, "--sizes", "2,2,2,0",
                    "--inject", "swapped=0.5")
    assert result.exit_code == 0, result.output
    samples = pd.read_parquet(out / "samples.parquet")
    swapped = samples[samples["truth"] == "swapped"]
    assert len(swapped) == 2 and set(swapped["split"]) == {"candidate", "independent"}
    original = {f"images/{n}.png": c for n, c in __import__("source_fixtures").PAIRS}
    assert all(list(r.captions) != original[r.sample_id] for r in swapped.itertuples())
    # the same config and split corrupt the same pairs again
    again = tmp_path / "again"
    invoke("split", "--out", again, "--dataset", "csv", "--data", csv, "--sizes", "2,2,2,0", "--inject", "swapped=0.5")
    assert pd.read_parquet(again / "samples.parquet").equals(samples)
    result = invoke("split", "--out", tmp_path / "bad", "--dataset", "csv", "--data", csv, "--inject", "blurry=0.1")
    assert result.exit_code == 2 and "cannot inject ['blurry']" in result.output


def test_export_materialises_shard_images(tmp_path):
    pattern = make_shards(tmp_path / "shards")
    out = tmp_path / "run"
    assert invoke("split", "--out", out, "--dataset", "webdataset", "--data", pattern,
                  "--sizes", "2,1,1,1").exit_code == 0
    refs = pd.read_parquet(out / "samples.parquet")["image_ref"]
    assert all("#" in r and r.split("#")[0] in ("000000.tar", "000001.tar") for r in refs)
    result = invoke("export-splits", out)
    assert result.exit_code == 0, result.output
    assert "open_clip_train.main" in result.output and "train_f.csv" in result.output
    f_rows = pd.read_csv(out / "export" / "train_f.csv", sep="\t")
    assert list(f_rows.columns) == ["filepath", "title"]
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in f_rows["filepath"])
    split = json.loads((out / "split.json").read_text())
    assert f_rows["filepath"].nunique() == len(split["ids"]["shared"]) + len(split["ids"]["candidate"])


def _scores(path):
    return pd.read_parquet(path).set_index("sample_id").sort_index()


def test_imported_checkpoints_score_like_clipmem_trained(tmp_path, tiny_data):
    out = tmp_path / "run"
    result = invoke("run", "--out", out, "--dataset", "folder", "--data", tiny_data, "--sizes", "600,120,120,60",
                    "--full-vocab", "--views", "2", *TINY_TRAIN)
    assert result.exit_code == 0, result.output
    own = _scores(out / "scores.parquet")
    # plain state dicts with DistributedDataParallel's 'module.' prefix, as open_clip's trainer may save them
    for name in ("f", "g"):
        state = torch.load(out / f"{name}.pt", weights_only=True)["state_dict"]
        torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / f"{name}_plain.pt")
    result = invoke("score", out, "--model", "clipmem-tiny", "--checkpoint-f", tmp_path / "f_plain.pt",
                    "--checkpoint-g", tmp_path / "g_plain.pt")
    assert result.exit_code == 0, result.output
    imported = _scores(out / "scores.parquet")
    for col in ("clipmem", "clipmem_raw", "clipmem_contrastive", "clipscore_g"):
        np.testing.assert_allclose(imported[col], own[col], atol=1e-6)
    result = invoke("score", out, "--model", "clipmem-demo", "--checkpoint-f", tmp_path / "f_plain.pt",
                    "--checkpoint-g", tmp_path / "g_plain.pt")
    assert result.exit_code == 2 and "does not fit the model architecture" in result.output


def test_open_clip_trainer_round_trip(tmp_path, tiny_data):
    """Export a tiny run, train f and g for one epoch with open_clip's own trainer, import and score them."""
    out = tmp_path / "run"
    assert invoke("split", "--out", out, "--dataset", "folder", "--data", tiny_data,
                  "--sizes", "600,120,120,60").exit_code == 0
    assert invoke("export-splits", out).exit_code == 0
    export = out / "export"
    # f and g train at once, as two jobs would: each trainer spends most of its time importing, on one core
    trainers = {}
    for name in ("f", "g"):
        cmd = [sys.executable, "-m", "open_clip_train.main", "--model", f"local-dir:{export / 'model'}",
               "--train-data", str(export / f"train_{name}.csv"), "--dataset-type", "csv",
               "--csv-img-key", "filepath", "--csv-caption-key", "title", "--device", "cpu", "--precision", "fp32",
               "--workers", "0", "--batch-size", "256", "--epochs", "1", "--lr", "1e-3", "--warmup", "2",
               "--logs", str(export / "logs"), "--name", f"clipmem-{name}", "--seed", "0"]
        with open(tmp_path / f"trainer_{name}.err", "w") as err:
            trainers[name] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    try:
        for name, proc in trainers.items():
            assert proc.wait(timeout=600) == 0, (tmp_path / f"trainer_{name}.err").read_text()[-2000:]
    finally:
        for proc in trainers.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    ckpt = {n: export / "logs" / f"clipmem-{n}" / "checkpoints" / "epoch_1.pt" for n in ("f", "g")}
    result = invoke("score", out, "--model", export / "model" / "open_clip_config.json",
                    "--checkpoint-f", ckpt["f"], "--checkpoint-g", ckpt["g"], "--views", "2")
    assert result.exit_code == 0, result.output
    scores = pd.read_parquet(out / "scores.parquet")
    assert len(scores) == 240
    raw = scores["clipmem_raw"]  # the scaled score is raw min-max scaled over the run
    np.testing.assert_allclose(scores["clipmem"], (raw - raw.min()) / (raw.max() - raw.min()), atol=1e-6)
    np.testing.assert_allclose(raw, scores["align_f"] - scores["align_g"], atol=1e-6)
    assert (out / "COMPLETE").exists()

"""The CLI end to end on tiny inputs, and its one-line errors for bad input."""

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from clipmem.cli import app
from clipmem.scoring.columns import DETECTOR_SCORES

runner = CliRunner()
TINY = ["--model", "clipmem-tiny", "--epochs", "2", "--batch-size", "128", "--sizes", "600,120,120,60"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, tiny_data):
    out = tmp_path_factory.mktemp("cli") / "run"
    result = invoke("run", "--out", out, "--dataset", "folder", "--data", tiny_data, *TINY)
    assert result.exit_code == 0, result.output
    return out, result.output


def test_run_writes_contract_and_prints_report(cli_run):
    out, output = cli_run
    for name in ("config.json", "split.json", "f.pt", "g.pt", "scores.parquet", "embeddings.npz", "metrics.json",
                 "COMPLETE"):
        assert (out / name).exists(), name
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["model"] == "clipmem-tiny" and "torch" in config["versions"]
    assert "Finding swapped pairs" in output and "clipscore_g" in output


def test_report_json(cli_run):
    out, _ = cli_run
    result = invoke("report", out, "--json")
    assert result.exit_code == 0
    summary = json.loads(result.output)
    assert {row["truth"] for row in summary["by_truth"]} >= {"clean", "swapped"}
    # the detectors of the run-directory contract the run has, as the backend evaluates them
    scores = pd.read_parquet(out / "scores.parquet")
    assert [row["score"] for row in summary["detection_swapped"]] == [s for s in DETECTOR_SCORES if s in scores]
    assert {"mem_image", "mem_swap_text"} <= {row["score"] for row in summary["detection_faulty"]}


def test_finished_run_refused_without_overwrite(cli_run):
    out, _ = cli_run
    before = (out / "scores.parquet").read_bytes()
    result = invoke("run", "--out", out, *TINY)
    assert result.exit_code == 2
    assert "already holds a finished run; pass --overwrite" in result.output
    assert (out / "scores.parquet").read_bytes() == before


def test_step_by_step_commands(tmp_path, tiny_data):
    out = tmp_path / "steps"
    assert invoke("split", "--out", out, "--dataset", "folder", "--data", tiny_data,
                  "--sizes", "600,120,120,60").exit_code == 0
    result = invoke("report", out)
    assert result.exit_code == 2 and "not a finished run" in result.output
    assert invoke("train", out, "--model", "clipmem-tiny", "--epochs", "1").exit_code == 0
    result = invoke("score", out, "--views", "2", "--fdr", "1")
    assert result.exit_code == 2 and "--fdr must lie strictly between 0 and 1, got 1.0" in result.output
    result = invoke("score", out, "--views", "2", "--fdr", "0.5")
    assert result.exit_code == 0, result.output
    scores = pd.read_parquet(out / "scores.parquet")
    assert len(scores) == 240 and (scores["memorized"] == (scores["clipmem_q"] <= 0.5)).all()
    assert json.loads((out / "metrics.json").read_text())["significance"]["fdr"] == 0.5


@pytest.mark.parametrize("args, message", [
    (["--sizes", "5000,100,100,100"], "need 5300 pairs but the dataset has 900"),
    (["--model", "ViT-Z-99"], "unknown model 'ViT-Z-99'"),
    (["--sizes", "1,2,3"], "expected four comma-separated numbers"),
    (["--fdr", "0"], "--fdr must lie strictly between 0 and 1, got 0.0"),
    (["--replicas", "0"], "--replicas must be >= 1, got 0"),
])
def test_bad_run_options(tmp_path, tiny_data, args, message):
    out = tmp_path / "bad"
    result = invoke("run", "--out", out, "--dataset", "folder", "--data", tiny_data, *args)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert not (out / "COMPLETE").exists() and not (out / "scores.parquet").exists()


def test_empty_dataset(tmp_path):
    data = tmp_path / "empty"
    data.mkdir()
    (data / "metadata.jsonl").write_text("")
    result = invoke("split", "--out", tmp_path / "run", "--dataset", "folder", "--data", data)
    assert result.exit_code == 2 and "the dataset is empty" in result.output


def test_corrupt_checkpoint_on_resume(tmp_path, tiny_data):
    out = tmp_path / "run"
    assert invoke("split", "--out", out, "--dataset", "folder", "--data", tiny_data,
                  "--sizes", "600,120,120,60").exit_code == 0
    assert invoke("train", out, "--model", "clipmem-tiny", "--epochs", "1").exit_code == 0
    (out / "checkpoints" / "epoch_1.pt").write_bytes(b"\x00garbage")
    result = invoke("train", out, "--resume")
    assert result.exit_code == 2
    assert "epoch_1.pt is corrupt" in result.output
    assert not (out / "COMPLETE").exists()


def test_synth_command(tmp_path):
    result = invoke("synth", "--out", tmp_path / "d", "--n", "40", "--faults", "swapped=0.1")
    assert result.exit_code == 0
    rows = [json.loads(x) for x in (tmp_path / "d" / "metadata.jsonl").read_text().splitlines()]
    assert sum(r["truth"] == "swapped" for r in rows) == 4
    result = invoke("synth", "--out", tmp_path / "e", "--faults", "swapped")
    assert result.exit_code == 2 and "bad rate" in result.output


def test_help_explains_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("synth", "split", "train", "score", "run", "report"):
        assert command in result.output

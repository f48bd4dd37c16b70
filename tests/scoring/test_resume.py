"""`--resume` of `clipmem run` and `clipmem train`: it continues with the settings the run saved, says plainly
when there is nothing to resume, and refuses options that would change the settings instead of ignoring them.

The steps themselves (and resuming them exactly) are tested elsewhere; here the pipeline function the
command calls is replaced by one that records what it was asked to do.
"""

from pathlib import Path

import pytest
from typer.testing import CliRunner

import clipmem.scoring.pipeline as pipeline
from clipmem.cli import app
from clipmem.scoring.errors import ClipmemError

REAL_RUN_ALL = pipeline.run_all
TINY = ["--model", "clipmem-tiny", "--epochs", "3", "--batch-size", "128"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def steps(monkeypatch):
    """The calls of run_all and train_step; each stops there with an error of its own."""
    calls = []

    def record(name):
        def step(run, cfg, resume=False, **_):
            calls.append({"step": name, "path": Path(run.path), "cfg": cfg, "resume": resume})
            raise ClipmemError("stopped by the test")
        return step

    monkeypatch.setattr(pipeline, "run_all", record("run_all"))
    monkeypatch.setattr(pipeline, "train_step", record("train_step"))
    return calls


def interrupted_while_generating_data(out: Path, monkeypatch) -> None:
    """`clipmem run --out OUT` on the built-in data, stopped (Ctrl+C) while the data set is being written."""
    def killed(cfg, path):
        (Path(f"{path}.partial") / "images").mkdir(parents=True)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "write_synthetic", killed)
        patch.setattr(pipeline, "run_all", REAL_RUN_ALL)
        result = invoke("run", "--out", out, *TINY)
    assert result.exit_code != 0 and (out / "data.partial").is_dir() and not (out / "data").exists()


def test_resume_of_a_run_directory_that_does_not_exist(tmp_path, steps):
    """Killed before the run directory exists: --resume does not start a new run with default settings."""
    out = tmp_path / "never-started"
    result = invoke("run", "--out", out, "--resume")
    assert result.exit_code == 2
    assert f"{out} holds no run to resume; start it without --resume" in result.output
    assert not steps and not out.exists()


def test_resume_after_a_kill_while_the_data_is_written(tmp_path, monkeypatch, steps):
    """Killed while only data.partial/ exists: the settings were saved first, so --resume continues with them."""
    out = tmp_path / "run"
    interrupted_while_generating_data(out, monkeypatch)
    result = invoke("run", "--out", out)
    assert result.exit_code == 2 and f"`clipmem run --out {out} --resume` continues it" in result.output
    result = invoke("run", "--out", out, "--resume")
    assert "stopped by the test" in result.output, result.output
    [call] = steps
    assert call["resume"] and call["path"] == out
    assert (call["cfg"].train.model, call["cfg"].train.epochs, call["cfg"].train.batch_size) == ("clipmem-tiny", 3, 128)


def test_a_directory_without_settings_is_not_offered_resume(tmp_path, steps):
    """A folder holding files but no config.json (left by a clipmem that saved the settings only after the
    split): neither command tells the user to use --resume, and --resume says why it cannot."""
    out = tmp_path / "run"
    (out / "data.partial" / "images").mkdir(parents=True)
    result = invoke("run", "--out", out)
    assert result.exit_code == 2 and "--resume" not in result.output
    assert "holds files but no run settings (config.json); pass --overwrite to replace it" in result.output
    result = invoke("run", "--out", out, "--resume")
    assert result.exit_code == 2
    assert "holds no config.json: its run stopped before its settings were saved" in result.output
    assert "start it again with its options and --overwrite" in result.output
    assert not steps


def test_run_resume_refuses_options_that_change_the_settings(tmp_path, monkeypatch, steps):
    out = tmp_path / "run"
    interrupted_while_generating_data(out, monkeypatch)
    result = invoke("run", "--out", out, "--resume", "--epochs", "50", "--model", "clipmem-demo")
    assert result.exit_code == 2
    assert "--resume continues with the run's saved settings; drop --model, --epochs" in result.output
    for extra in (["--dataset", "synthetic"], ["--no-augment"], ["--views", "2"], ["--sizes", "0.7,0.1,0.1,0.1"],
                  ["--replicas", "2"], ["--fdr", "0.1"]):
        result = invoke("run", "--out", out, "--resume", *extra)
        assert result.exit_code == 2 and f"drop {extra[0]} " in result.output, extra
    result = invoke("run", "--out", out, "--resume", "--overwrite")
    assert result.exit_code == 2 and "--resume continues RUN_DIR and --overwrite replaces it" in result.output
    assert not steps
    # where the run continues is no setting of the run
    result = invoke("run", "--out", out, "--resume", "--device", "cpu")
    assert "stopped by the test" in result.output
    assert steps[0]["cfg"].train.device == "cpu" and steps[0]["cfg"].train.epochs == 3


def test_train_resume_refuses_every_option_that_changes_the_recipe(tmp_path, tiny_data, steps):
    out = tmp_path / "run"
    assert invoke("split", "--out", out, "--dataset", "folder", "--data", tiny_data,
                  "--sizes", "600,120,120,60").exit_code == 0
    for extra in (["--no-augment"], ["--full-vocab"], ["--epochs", "5"], ["--replicas", "3"]):
        result = invoke("train", out, "--resume", *extra)
        assert result.exit_code == 2 and f"saved settings; drop {extra[0]} " in result.output, extra
    assert not steps
    result = invoke("train", out, "--resume", "--device", "cpu", "--only", "f", "--no-progress")
    assert "stopped by the test" in result.output
    assert steps[0]["resume"] and steps[0]["cfg"].train.device == "cpu"

import json

import pytest
import torch

from clipmem.scoring.config import TrainConfig
from clipmem.scoring.errors import ClipmemError
from clipmem.scoring.schemes import published_slots
from clipmem.scoring.train import latest_checkpoint, load_training_state, lr_at
from clipmem.scoring.pipeline import load_corpus
from clipmem.scoring.rundir import RunDir


def test_schedule_warms_up_then_decays():
    cfg = TrainConfig(lr=1.0, warmup_steps=10)
    assert lr_at(0, 100, cfg) == pytest.approx(0.1)
    assert lr_at(9, 100, cfg) == pytest.approx(1.0)
    assert lr_at(99, 100, cfg) < 0.01


def test_slots_pair_candidates_with_independents(tiny_run):
    run, cfg = tiny_run
    corpus, _, _ = load_corpus(run, cfg, vocab=None)
    f_rows, g_rows = published_slots(corpus)
    n_shared = len(corpus.rows("shared"))
    assert torch.equal(f_rows[:n_shared], g_rows[:n_shared])
    assert {corpus.split[r] for r in f_rows[n_shared:].tolist()} == {"candidate"}
    assert {corpus.split[r] for r in g_rows[n_shared:].tolist()} == {"independent"}


def test_training_log_and_checkpoints(tiny_run):
    run, cfg = tiny_run
    log = [json.loads(line) for line in run.train_log.read_text().splitlines()]
    assert [e["epoch"] for e in log] == list(range(1, cfg.train.epochs + 1))
    assert log[-1]["loss_f"] < log[0]["loss_f"] and log[-1]["loss_g"] < log[0]["loss_g"]
    kept = sorted(p.name for p in run.checkpoints.glob("epoch_*.pt"))
    assert kept == [f"epoch_{cfg.train.epochs - 1}.pt", f"epoch_{cfg.train.epochs}.pt"]
    f = torch.load(run.model_checkpoint("f"), weights_only=True)
    assert set(f) == {"epoch", "name", "state_dict"}


def test_resume_matches_uninterrupted(tmp_path, tiny_data):
    """Interrupted after epoch 2 of 4 and resumed, training ends on the same weights."""
    from dataclasses import replace

    from run_fixtures import tiny_run_config
    from clipmem.scoring.pipeline import split_step, train_step

    run = RunDir(tmp_path / "run")
    run.prepare_new(False)
    cfg = tiny_run_config(tiny_data, epochs=4)
    cfg.train = replace(cfg.train, keep_checkpoints=4)
    split_step(run, cfg)
    train_step(run, cfg, show_progress=False)
    straight = torch.load(run.model_checkpoint("g"), weights_only=True)["state_dict"]
    for name in ("epoch_3.pt", "epoch_4.pt", "f.pt", "g.pt"):
        (run.checkpoints / name if name.startswith("epoch") else run.path / name).unlink()
    train_step(run, cfg, resume=True, show_progress=False)
    resumed = torch.load(run.model_checkpoint("g"), weights_only=True)["state_dict"]
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_corrupt_checkpoint_is_named(tmp_path):
    bad = tmp_path / "epoch_3.pt"
    bad.write_bytes(b"not a checkpoint")
    assert latest_checkpoint(tmp_path) == bad
    with pytest.raises(ClipmemError, match="epoch_3.pt is corrupt"):
        load_training_state(bad)


def flip_tensor_bit(path, member_index: int = 0) -> None:
    """Flip one bit in the middle of a stored tensor of a torch checkpoint: the zip entries are stored
    uncompressed and torch.load does not check their CRC, so the file still loads, with one weight changed."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        entries = sorted((i for i in archive.infolist() if "/data/" in i.filename and i.file_size >= 64),
                         key=lambda i: -i.file_size)
        entry = entries[member_index]
    with open(path, "r+b") as fh:
        fh.seek(entry.header_offset + 26)
        name_len, extra_len = int.from_bytes(fh.read(2), "little"), int.from_bytes(fh.read(2), "little")
        at = entry.header_offset + 30 + name_len + extra_len + entry.file_size // 2 + 3
        fh.seek(at)
        byte = fh.read(1)[0]
        fh.seek(at)
        fh.write(bytes([byte ^ 0x40]))


def test_bit_flipped_checkpoint_refused_on_resume_and_score(tmp_path, tiny_data):
    """Issue 12: a checkpoint with flipped tensor bytes still loads (torch.load checks no CRC) and resumed
    to different scores with exit 0. Its recorded SHA-256 now refuses it, naming the file."""
    import hashlib
    import shutil

    from run_fixtures import split_tiny_run
    from clipmem.scoring.pipeline import train_step
    from clipmem.scoring.train import load_model_weights

    run, cfg = split_tiny_run(tmp_path / "run", tiny_data, epochs=2)
    train_step(run, cfg, show_progress=False)
    model_file = tmp_path / "f.pt"
    shutil.copy(run.model_checkpoint("f"), model_file)
    flip_tensor_bit(run.checkpoints / "epoch_1.pt")
    torch.load(run.checkpoints / "epoch_1.pt", weights_only=False)  # the damage goes unnoticed by torch
    # as if killed after epoch 1: resume starts from the damaged checkpoint
    for name in ("f.pt", "g.pt", "checkpoints/epoch_2.pt"):
        (run.path / name).unlink()
    with pytest.raises(ClipmemError, match=r"checkpoint .*epoch_1\.pt is corrupt: its SHA-256 differs"):
        train_step(run, cfg, resume=True, show_progress=False)

    # the final models have theirs too (in sha256sum's format), checked when scoring loads them
    from clipmem.scoring.models import create_model

    shutil.copy(run.path / "f.pt.sha256", tmp_path / "f.pt.sha256")
    assert (tmp_path / "f.pt.sha256").read_text() == f"{hashlib.sha256(model_file.read_bytes()).hexdigest()}  f.pt\n"
    flip_tensor_bit(model_file)
    model_cfg = json.loads((run.path / "model_config.json").read_text())
    with pytest.raises(ClipmemError, match=r"checkpoint .*f\.pt is corrupt"):
        load_model_weights(create_model(model_cfg, 0), model_file)


def test_finished_run_records_every_artifact_checksum(tiny_run):
    """The COMPLETE marker vouches for every file of the run, metrics.json as run_all last rewrites it."""
    import hashlib

    run, _ = tiny_run
    marker = json.loads(run.marker.read_text())
    files = sorted(p.name for p in run.path.iterdir() if p.is_file() and p.name != "COMPLETE")
    assert sorted(marker["sha256"]) == files
    assert {"scores.parquet", "embeddings.npz", "metrics.json", "f.pt", "samples.parquet"} <= set(files)
    for name in files:
        assert marker["sha256"][name] == hashlib.sha256((run.path / name).read_bytes()).hexdigest(), name

"""Reading a run directory: every contract violation is refused with a message naming the problem."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from backend.rundir import read_run
from backend.synthetic_run import write_synthetic_run
from scoring.errors import ClipmemError


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return write_synthetic_run(tmp_path_factory.mktemp("pristine") / "run", 20, 20, 20, 5, seed=7)


@pytest.fixture
def run_dir(pristine, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(pristine, copy)
    # data_root.json points at the pristine data folder, which tests never modify
    return copy


def rewrite(path, change):
    """Rewrite a parquet file through `change`, which edits the frame in place or returns a new one."""
    frame = pd.read_parquet(path)
    changed = change(frame)
    (frame if changed is None else changed).to_parquet(path, index=False)


def test_reads_contract(run_dir):
    contents = read_run(run_dir)
    assert contents.split_sizes == {"shared": 20, "candidate": 20, "independent": 20, "extra": 5}
    assert len(contents.scores) == 40 and len(contents.embedding_pair_index) == 45
    assert contents.score_names[:2] == ["clipmem", "clipmem_raw"] and "mem_image" not in contents.score_names
    views = np.frombuffer(contents.scores["views_f"].iloc[0], dtype="<f4")
    assert views.shape == (4,)


def test_requires_complete_marker(run_dir):
    (run_dir / "COMPLETE").unlink()
    with pytest.raises(ClipmemError, match="not a finished run"):
        read_run(run_dir)


def test_corrupt_parquet(run_dir):
    (run_dir / "scores.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ClipmemError, match="scores.parquet cannot be read as Parquet"):
        read_run(run_dir)


def test_missing_column(run_dir):
    rewrite(run_dir / "scores.parquet", lambda f: f.drop(columns=["clipscore_g"]))
    with pytest.raises(ClipmemError, match="scores.parquet lacks column.*clipscore_g"):
        read_run(run_dir)


def test_non_finite_score_names_sample(run_dir):
    def poison(frame):
        frame.loc[3, "clipmem"] = np.nan

    rewrite(run_dir / "scores.parquet", poison)
    sid = pd.read_parquet(run_dir / "scores.parquet")["sample_id"][3]
    with pytest.raises(ClipmemError, match=f"clipmem is NaN or infinite for sample {sid}"):
        read_run(run_dir)


@pytest.mark.parametrize("ref", ["/etc/passwd", "../outside.png", "images/../../x.png", "shards/a.tar#/abs.png",
                                 "a\\b.png", ""])
def test_image_ref_must_stay_inside_root(run_dir, ref):
    def change(frame):
        frame.loc[0, "image_ref"] = ref

    rewrite(run_dir / "samples.parquet", change)
    with pytest.raises(ClipmemError, match="image_ref of sample pair-0000000 .* must be a relative path"):
        read_run(run_dir)


def test_split_plan_must_agree(run_dir):
    plan = json.loads((run_dir / "split.json").read_text())
    moved = plan["ids"]["shared"].pop()
    plan["ids"]["extra"].append(moved)
    (run_dir / "split.json").write_text(json.dumps(plan))
    with pytest.raises(ClipmemError, match=f"disagree on the split plan.*{moved}"):
        read_run(run_dir)


def test_every_scored_pair_needs_scores(run_dir):
    rewrite(run_dir / "scores.parquet", lambda f: f.drop(index=[0]))
    with pytest.raises(ClipmemError, match="has no scores for sample"):
        read_run(run_dir)


def test_seen_by_must_match_split(run_dir):
    def change(frame):
        frame.loc[0, "seen_by"] = "g" if frame.loc[0, "seen_by"] == "f" else "f"

    rewrite(run_dir / "scores.parquet", change)
    with pytest.raises(ClipmemError, match="seen_by of sample .* does not match its split"):
        read_run(run_dir)


def test_embeddings_must_cover_scored_pairs(run_dir):
    with np.load(run_dir / "embeddings.npz") as npz:
        arrays = {k: npz[k][1:] for k in npz.files}
    np.savez(run_dir / "embeddings.npz", **arrays)
    with pytest.raises(ClipmemError, match="has no embeddings for scored sample"):
        read_run(run_dir)


def test_embeddings_shapes_checked(run_dir):
    with np.load(run_dir / "embeddings.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["g_text"] = arrays["g_text"][:, :3]
    np.savez(run_dir / "embeddings.npz", **arrays)
    with pytest.raises(ClipmemError, match="array g_text has shape"):
        read_run(run_dir)


def test_data_root_must_exist(run_dir):
    (run_dir / "data_root.json").write_text(json.dumps({"data_root": str(run_dir / "nowhere"), "kind": "folder"}))
    with pytest.raises(ClipmemError, match="nowhere.*is not an existing absolute folder"):
        read_run(run_dir)


def test_captions_must_be_lists_of_strings(run_dir):
    def change(frame):
        frame["captions"] = [[] if i == 2 else list(c) for i, c in enumerate(frame["captions"])]

    rewrite(run_dir / "samples.parquet", change)
    with pytest.raises(ClipmemError, match="captions of sample pair-0000002 should be a non-empty list"):
        read_run(run_dir)

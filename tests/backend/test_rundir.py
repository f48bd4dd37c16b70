"""Reading a run directory: every contract violation is refused with a message naming the problem."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from clipmem.backend.rundir import read_run
from clipmem.backend.synthetic_run import write_synthetic_run
from clipmem.scoring.errors import ClipmemError
from tests.backend.rewrites import read_sealed, rewrite


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return write_synthetic_run(tmp_path_factory.mktemp("pristine") / "run", 20, 20, 20, 5, seed=7)


@pytest.fixture
def run_dir(pristine, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(pristine, copy)
    # data_root.json points at the pristine data folder, which tests never modify
    return copy




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
        read_sealed(run_dir)


def test_missing_column(run_dir):
    rewrite(run_dir / "scores.parquet", lambda f: f.drop(columns=["clipscore_g"]))
    with pytest.raises(ClipmemError, match="scores.parquet lacks column.*clipscore_g"):
        read_sealed(run_dir)


def test_non_finite_score_names_sample(run_dir):
    def poison(frame):
        frame.loc[3, "clipmem"] = np.nan

    rewrite(run_dir / "scores.parquet", poison)
    sid = pd.read_parquet(run_dir / "scores.parquet")["sample_id"][3]
    with pytest.raises(ClipmemError, match=f"clipmem is NaN or infinite for sample {sid}"):
        read_sealed(run_dir)


@pytest.mark.parametrize("ref", ["/etc/passwd", "../outside.png", "images/../../x.png", "shards/a.tar#/abs.png",
                                 "a\\b.png", ""])
def test_image_ref_must_stay_inside_root(run_dir, ref):
    def change(frame):
        frame.loc[0, "image_ref"] = ref

    rewrite(run_dir / "samples.parquet", change)
    with pytest.raises(ClipmemError, match="image_ref of sample pair-0000000 .* must be a relative path"):
        read_sealed(run_dir)


def test_split_plan_must_agree(run_dir):
    plan = json.loads((run_dir / "split.json").read_text())
    moved = plan["ids"]["shared"].pop()
    plan["ids"]["extra"].append(moved)
    (run_dir / "split.json").write_text(json.dumps(plan))
    with pytest.raises(ClipmemError, match=f"disagree on the split plan.*{moved}"):
        read_sealed(run_dir)


def test_every_scored_pair_needs_scores(run_dir):
    rewrite(run_dir / "scores.parquet", lambda f: f.drop(index=[0]))
    with pytest.raises(ClipmemError, match="has no scores for sample"):
        read_sealed(run_dir)


def test_seen_by_must_match_split(run_dir):
    def change(frame):
        frame.loc[0, "seen_by"] = "g" if frame.loc[0, "seen_by"] == "f" else "f"

    rewrite(run_dir / "scores.parquet", change)
    with pytest.raises(ClipmemError, match="seen_by of sample .* does not match its split"):
        read_sealed(run_dir)


def test_embeddings_must_cover_scored_pairs(run_dir):
    with np.load(run_dir / "embeddings.npz") as npz:
        arrays = {k: npz[k][1:] for k in npz.files}
    np.savez(run_dir / "embeddings.npz", **arrays)
    with pytest.raises(ClipmemError, match="has no embeddings for scored sample"):
        read_sealed(run_dir)


def test_embeddings_shapes_checked(run_dir):
    with np.load(run_dir / "embeddings.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["g_text"] = arrays["g_text"][:, :3]
    np.savez(run_dir / "embeddings.npz", **arrays)
    with pytest.raises(ClipmemError, match="array g_text has shape"):
        read_sealed(run_dir)


def test_data_root_must_exist(run_dir):
    (run_dir / "data_root.json").write_text(json.dumps({"data_root": str(run_dir / "nowhere"), "kind": "folder"}))
    with pytest.raises(ClipmemError, match="nowhere.*is not an existing absolute folder"):
        read_sealed(run_dir)


def test_captions_must_be_lists_of_strings(run_dir):
    def change(frame):
        frame["captions"] = [[] if i == 2 else list(c) for i, c in enumerate(frame["captions"])]

    rewrite(run_dir / "samples.parquet", change)
    with pytest.raises(ClipmemError, match="captions of sample pair-0000002 should be a non-empty list"):
        read_sealed(run_dir)


@pytest.mark.parametrize(("column", "value", "allowed"), [
    ("clipmem", 1.2, "[0, 1]"), ("clipmem_raw", 27.89, "[-2, 2]"), ("align_g", -1.5, "[-1, 1]"),
    ("contrastive_f", 0.3, "[-inf, 0]"), ("clipscore_g", 2.5, "[0, 2]"),
])
def test_scores_outside_their_range_are_refused(run_dir, column, value, allowed):
    """Issue 12: a value no score's definition allows (a cosine of 27.89) is refused, naming column and sample,
    even when the checksums vouch for the file (a faulty scorer, or a run finished before checksums)."""
    def change(frame):
        frame.loc[5, column] = value

    rewrite(run_dir / "scores.parquet", change)
    sid = pd.read_parquet(run_dir / "scores.parquet")["sample_id"][5]
    with pytest.raises(ClipmemError, match=f"column {column} is {value:g} for sample {sid}, outside "
                                           f"{re.escape(allowed)}"):
        read_sealed(run_dir)


def test_view_cosines_outside_their_range_are_refused(run_dir):
    def change(frame):
        views = [np.array(v, dtype=np.float32) for v in frame["views_f"]]
        views[7][2] = 1.75
        frame["views_f"] = views

    rewrite(run_dir / "scores.parquet", change)
    sid = pd.read_parquet(run_dir / "scores.parquet")["sample_id"][7]
    with pytest.raises(ClipmemError, match=f"column views_f is 1.75 for sample {sid}, outside \\[-1, 1\\]"):
        read_sealed(run_dir)


def test_rounding_at_the_edge_of_a_range_is_accepted(run_dir):
    def change(frame):
        frame.loc[0, "clipmem"] = 1 + 1e-7
        frame.loc[1, "align_f"] = -1 - 1e-7

    rewrite(run_dir / "scores.parquet", change)
    assert read_sealed(run_dir).scores["clipmem"].max() == pytest.approx(1 + 1e-7)


def test_files_added_after_the_run_finished_are_refused(run_dir):
    (run_dir / "experiment.json").write_text(json.dumps({"experiment": "later", "seed": 0}))
    with pytest.raises(ClipmemError, match="experiment.json has no checksum in .*COMPLETE: it was added after"):
        read_run(run_dir)

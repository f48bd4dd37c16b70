import numpy as np
import pandas as pd
import pytest
import torch

from clipmem.scoring.config import ScoreConfig, TrainConfig
from clipmem.scoring.pipeline import load_corpus
from clipmem.scoring.score import minmax, score_run

CONTRACT = ["sample_id", "split", "truth", "caption", "clipmem", "clipmem_raw", "clipmem_contrastive",
            "align_f", "align_g", "clipscore_f", "clipscore_g"]


def test_output_contract(tiny_run):
    run, cfg = tiny_run
    scores = pd.read_parquet(run.scores)
    assert set(CONTRACT) <= set(scores.columns)
    assert set(scores["split"]) == {"candidate", "independent"} and len(scores) == 240
    assert scores["clipmem"].min() == 0 and scores["clipmem"].max() == pytest.approx(1)
    np.testing.assert_allclose(scores["clipmem_raw"], scores["align_f"] - scores["align_g"], atol=1e-6)
    np.testing.assert_allclose(scores["align_f"], np.stack(scores["views_f"]).mean(1), atol=1e-6)
    assert (scores.loc[scores["split"] == "candidate", "seen_by"] == "f").all()
    emb = np.load(run.embeddings)
    assert emb["f_image"].shape == (300, 32) and emb["g_text"].shape == (300, 32)
    np.testing.assert_allclose(np.linalg.norm(emb["f_image"], axis=1), 1, atol=1e-5)
    assert run.is_finished()


# Swapped-vs-clean AUROC of the tiny run (tests/run_fixtures.py, 25 epochs, 45 swapped and 168 clean scored
# pairs), measured over split/init/data seeds 0-4: clipmem_raw 0.600, 0.708, 0.574, 0.619, 0.685;
# clipmem_contrastive_raw 0.576, 0.809, 0.643, 0.663, 0.668. The fixture uses seed 0. The floors sit below the
# worst seed, and above what a sign error gives (1 - AUROC: 0.42 for the contrastive score at seed 0).
DETECTION_FLOOR = {"clipmem_raw": 0.55, "clipmem_contrastive_raw": 0.53}


def test_swapped_pairs_rank_above_clean(tiny_run):
    """On the fixed-seed tiny run, injected swaps rank above clean pairs: AUROC (scikit-learn's, computed here)
    above the stated floor for both scores, and the scaled score ranks exactly as the raw one."""
    from sklearn.metrics import roc_auc_score

    run, _ = tiny_run
    scores = pd.read_parquet(run.scores)
    pairs = scores[scores["truth"].isin(["clean", "swapped"])]
    swapped = (pairs["truth"] == "swapped").to_numpy()
    assert swapped.sum() >= 30 and (~swapped).sum() >= 100
    for column, floor in DETECTION_FLOOR.items():
        assert roc_auc_score(swapped, pairs[column]) > floor, column
    assert roc_auc_score(swapped, pairs["clipmem"]) == pytest.approx(roc_auc_score(swapped, pairs["clipmem_raw"]))
    means = scores.groupby("truth")["clipmem_raw"].mean()
    assert means["swapped"] > 2 * max(means["clean"], 0.001)


def test_same_model_gives_zero_memorization(tiny_run):
    run, cfg = tiny_run
    from clipmem.scoring.models import create_model
    from clipmem.scoring.train import load_model_weights
    from clipmem.scoring.rundir import RunDir
    import json
    from clipmem.scoring.models import Vocabulary

    vocab = Vocabulary.from_json(json.loads(run.vocab.read_text()))
    corpus, _, model_cfg = load_corpus(run, cfg, vocab)
    model = create_model(model_cfg, 0)
    load_model_weights(model, run.model_checkpoint("f"))
    frame = score_run({"f": model, "g": model}, corpus, ScoreConfig(views=2), cfg.train, torch.device("cpu")).frame
    assert np.abs(frame["clipmem_raw"]).max() < 1e-6
    assert np.abs(frame["clipmem_contrastive_raw"]).max() < 1e-5


def test_minmax_constant_input():
    assert (minmax(np.array([2.0, 2.0])) == 0).all()
    assert minmax(np.array([1.0, 3.0, 2.0])).tolist() == [0.0, 1.0, 0.5]

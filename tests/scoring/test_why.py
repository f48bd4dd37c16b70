"""Why a pair is memorized (scoring/why.py): constructed embedding spaces whose answer is known by construction, a
brute-force check of the neighbour ranks, the "without" model, and the tiny run's files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from clipmem.scoring.columns import NEIGHBOUR_COLUMNS, REASON, REASONS, SCORE_BY_NAME
from clipmem.scoring.config import ScoreConfig
from clipmem.scoring.data.tensors import TensorCorpus
from clipmem.scoring.score import Embeddings
from clipmem.scoring.why import SIGNAL_COLUMNS, Space, explain, explain_run, neighbourhood

DIM = 32
CONCEPTS = 6
PER_CONCEPT = 14
NOISE = 0.12


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _concept_pairs(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images, captions, concept) of CONCEPTS tight clusters: a pair's image and caption both lie near the axis of
    its concept (dimensions 0..CONCEPTS-1), with independent noise in dimensions 8..23."""
    concept = np.repeat(np.arange(CONCEPTS), PER_CONCEPT)
    axes = np.eye(DIM)[concept]
    noise = lambda: np.pad(rng.normal(0, NOISE, (len(concept), 16)), ((0, 0), (8, DIM - 24)))  # noqa: E731
    return _unit(axes + noise()), _unit(axes + noise()), concept


def _case(seed: int = 0):
    """A pool of clean concept pairs plus, at the end, a mis-captioned pair (image of concept 0, caption of concept
    1), an atypical pair (image and caption along an axis no other pair uses) and an exact copy of pair 0.
    Returns (ids, space, query rows, reference rows, {name: pool row})."""
    rng = np.random.default_rng(seed)
    images, captions, concept = _concept_pairs(rng)
    n = len(images)
    wrong_image, wrong_caption = images[concept == 0][-1], captions[concept == 1][-1]
    rare = np.eye(DIM)[30]
    images = np.vstack([images, wrong_image + 0.0, rare, images[0]])
    captions = np.vstack([captions, wrong_caption, _unit(rare + np.eye(DIM)[31] * 0.3), captions[0]])
    special = {"miscaptioned": n, "atypical": n + 1, "duplicate": n + 2}
    # the mis-captioned pair's image is a near-copy of a clean one of concept 0: it has a close neighbour
    images[n] = _unit(images[n] + np.pad(rng.normal(0, 0.05, 16), (8, DIM - 24)))
    ids = [f"pair{i}" for i in range(len(images))]
    # the reference: the first 5 pairs of each concept; the queries: every other pair (pair 0 is a reference pair)
    in_reference = np.zeros(len(images), bool)
    for c in range(CONCEPTS):
        in_reference[np.flatnonzero(concept == c)[:5]] = True
    reference = np.flatnonzero(in_reference)
    queries = np.flatnonzero(~in_reference)
    return ids, Space(image=images.astype(np.float32), captions=captions.astype(np.float32)), queries, reference, \
        special


def _explain(space: Space, ids, queries, reference, fdr: float = 0.05):
    return explain(ids, {"g": space}, queries, ["g"] * len(queries), {"g": reference}, fdr)


def test_miscaptioned_pair_ranks_above_every_clean_pair():
    ids, space, queries, reference, special = _case()
    frame, _ = _explain(space, ids, queries, reference)
    frame = frame.set_index("sample_id")
    bad = frame.loc[ids[special["miscaptioned"]]]
    clean = frame.drop(index=[ids[i] for i in special.values()])
    assert bad[REASON] == "miscaptioned"
    assert bad["miscaption"] > clean["miscaption"].max()
    assert (clean[REASON] != "miscaptioned").all()
    # its nearest image is a clean concept-0 pair, whose caption disagrees with its concept-1 caption
    assert bad["image_neighbour_sim"] > 0.9
    assert bad["neighbour_agreement"] < clean["neighbour_agreement"].min()
    assert bad["neighbour_caption_margin"] > clean["neighbour_caption_margin"].max()


def test_atypical_image_and_duplicate():
    ids, space, queries, reference, special = _case()
    frame, _ = _explain(space, ids, queries, reference)
    reason = frame.set_index("sample_id")[REASON]
    assert reason[ids[special["atypical"]]] == "atypical_image"
    assert reason[ids[special["duplicate"]]] == "duplicate"
    # no clean query pair has an image as close as a copy: none is called a duplicate
    others = reason.drop(index=[ids[i] for i in special.values()])
    assert (others != "duplicate").all()


def test_atypical_caption():
    """A pair whose image sits in a cluster and is captioned with that cluster's caption direction but along an axis
    of its own (a caption no other pair has) is an atypical caption, not a mis-caption: its caption still fits its
    image better than the neighbours' captions do."""
    rng = np.random.default_rng(1)
    images, captions, concept = _concept_pairs(rng)
    odd = np.flatnonzero(concept == 2)[-1]
    captions[odd] = _unit(np.eye(DIM)[2] + np.eye(DIM)[29] * 0.8)
    images[odd] = _unit(images[odd] + np.eye(DIM)[29] * 0.3)  # still among its cluster's images
    ids = [f"pair{i}" for i in range(len(images))]
    reference = np.concatenate([np.flatnonzero(concept == c)[:5] for c in range(CONCEPTS)])
    queries = np.setdiff1d(np.arange(len(images)), reference)
    frame, _ = _explain(Space(image=images.astype(np.float32), captions=captions.astype(np.float32)), ids, queries,
                        reference)
    frame = frame.set_index("sample_id")
    assert frame[REASON][ids[odd]] == "atypical_caption"
    assert frame["caption_neighbour_sim"].idxmin() == ids[odd]
    assert frame["neighbour_caption_margin"][ids[odd]] < 0
    assert frame["miscaption"][ids[odd]] < 0.5


def test_neighbours_match_brute_force():
    rng = np.random.default_rng(5)
    image, captions = _unit(rng.normal(size=(40, 8))), rng.normal(size=(40, 8)) * 0.3
    space = Space(image=image, captions=captions)
    caption = captions / np.linalg.norm(captions, axis=1, keepdims=True)
    rows = np.array([0, 7, 39, 12])
    nb = neighbourhood(space, rows, k=4)
    for i, r in enumerate(rows):
        sims = image @ image[r]
        sims[r] = -np.inf
        expect = np.argsort(-sims, kind="stable")[:4]
        assert nb.image_index[i].tolist() == expect.tolist()
        np.testing.assert_allclose(nb.image_sim[i], sims[expect], rtol=1e-6)
        np.testing.assert_allclose(nb.image_agreement[i], caption[expect] @ caption[r], rtol=1e-6)
        csims = caption @ caption[r]
        csims[r] = -np.inf
        cexpect = np.argsort(-csims, kind="stable")[:4]
        assert nb.caption_index[i].tolist() == cexpect.tolist()
        np.testing.assert_allclose(nb.caption_sim[i], csims[cexpect], rtol=1e-6)
        np.testing.assert_allclose(nb.caption_agreement[i], image[cexpect] @ image[r], rtol=1e-6)
        # the margin by hand: similarity-weighted mean fit of the neighbours' captions minus the own captions' fit
        w = np.clip(sims[expect], 0, None)
        own = image[r] @ captions[r]
        np.testing.assert_allclose(nb.image_margin[i], (w @ (captions[expect] @ image[r])) / w.sum() - own, rtol=1e-6)
        np.testing.assert_allclose(nb.misfit[i], 1 - own, rtol=1e-6)


def test_neighbour_rows_follow_the_contract():
    ids, space, queries, reference, _ = _case()
    frame, neighbours = _explain(space, ids, queries, reference)
    assert list(neighbours.columns) == list(NEIGHBOUR_COLUMNS)
    assert len(neighbours) == len(queries) * 2 * 5
    first = neighbours[(neighbours["kind"] == "image") & (neighbours["rank"] == 1)].set_index("sample_id")
    np.testing.assert_allclose(first.loc[frame["sample_id"], "similarity"], frame["image_neighbour_sim"])
    assert not (neighbours["sample_id"] == neighbours["neighbour_id"]).any()
    for column in (*SIGNAL_COLUMNS, "miscaption"):
        lo, hi = SCORE_BY_NAME[column].bounds
        assert frame[column].between(lo, hi).all(), column


def _corpus_and_spaces():
    """A corpus of 30 candidates, 30 independent and 24 extra pairs (one caption each, no S_S) and two embedding
    spaces of it: in `a` the candidate X is mis-captioned (its caption is another concept's), in `b` the independent
    Y is; otherwise both hold the same clean clusters."""
    rng = np.random.default_rng(2)
    images, captions, concept = _concept_pairs(rng)
    n = len(images)  # 84 = 30 + 30 + 24
    split = ["candidate"] * 30 + ["independent"] * 30 + ["extra"] * 24
    order = rng.permutation(n)  # mix the concepts over the splits
    images, captions, concept = images[order], captions[order], concept[order]
    x, y = 3, 40
    wrong = lambda row: captions[np.flatnonzero(concept != concept[row])[0]]  # noqa: E731
    cap_a, cap_b = captions.copy(), captions.copy()
    cap_a[x], cap_b[y] = wrong(x), wrong(y)
    corpus = TensorCorpus(
        ids=[f"p{i}" for i in range(n)], split=split, truth=["clean"] * n, captions=[[f"c{i}"] for i in range(n)],
        attributes=[{} for _ in range(n)], pixels=torch.zeros(n, 3, 4, 4, dtype=torch.uint8),
        caption_texts=[f"c{i}" for i in range(n)], tokens=torch.zeros(n, 4, dtype=torch.long),
        caption_index=torch.arange(n)[:, None], caption_count=torch.ones(n, dtype=torch.long), truncated=0)
    emb = lambda cap: Embeddings(image=torch.tensor(images, dtype=torch.float32), text=torch.tensor(cap),  # noqa: E731
                                 caption_table=torch.tensor(cap, dtype=torch.float32))
    return corpus, emb(cap_a), emb(cap_b), corpus.ids[x], corpus.ids[y]


def test_the_model_that_did_not_train_on_the_pair_is_used():
    corpus, a, b, x, y = _corpus_and_spaces()
    scores = pd.DataFrame({"sample_id": corpus.ids[:60]})
    embedded = torch.arange(84)
    models = {"f": None, "g": None}  # never called: every model's clean embeddings are given and there is no S_S
    device = torch.device("cpu")
    # X is a candidate (f trained on it, g did not): its caption is wrong in a, which g holds
    out, _ = explain_run(corpus, scores, {"f": b, "g": a}, embedded, models, ScoreConfig(), device)
    reason = out.set_index("sample_id")[REASON]
    assert reason[x] == "miscaptioned" and reason[y] == "miscaptioned"
    assert (reason.drop(index=[x, y]) != "miscaptioned").all()
    # with the spaces swapped, each pair is judged by a model whose space holds its caption as clean
    swapped, _ = explain_run(corpus, scores, {"f": a, "g": b}, embedded, models, ScoreConfig(), device)
    reason = swapped.set_index("sample_id")[REASON]
    assert (reason != "miscaptioned").all()
    assert swapped.set_index("sample_id")["miscaption"][x] < out.set_index("sample_id")["miscaption"][x]


def test_tiny_run_holds_the_evidence(tiny_run):
    run, _ = tiny_run
    scores = pd.read_parquet(run.scores)
    neighbours = pd.read_parquet(run.neighbours)
    assert set(scores[REASON]) <= set(REASONS)
    assert scores["miscaption"].between(0, 1).all()
    assert list(neighbours.columns) == list(NEIGHBOUR_COLUMNS)
    assert set(neighbours["sample_id"]) == set(scores["sample_id"])
    # a second computation: the image neighbours that are scored or S_E pairs against embeddings.npz, under the
    # model that did not train on the pair (g for S_C, f for S_I)
    arrays = np.load(run.embeddings)
    where = {sid: i for i, sid in enumerate(arrays["sample_id"])}
    without = dict(zip(scores["sample_id"], np.where(scores["seen_by"] == "f", "g", "f")))
    images = neighbours[(neighbours["kind"] == "image") & neighbours["neighbour_id"].isin(where)]
    assert len(images) > 100
    for row in images.itertuples():
        stored = arrays[f"{without[row.sample_id]}_image"]
        assert stored[where[row.sample_id]] @ stored[where[row.neighbour_id]] == pytest.approx(row.similarity,
                                                                                               abs=1e-5)
    first = neighbours[(neighbours["kind"] == "image") & (neighbours["rank"] == 1)].set_index("sample_id")
    np.testing.assert_allclose(first.loc[scores["sample_id"], "similarity"], scores["image_neighbour_sim"])


def _report_scores() -> pd.DataFrame:
    """50 pairs in falling CLIPMem order: the 10 most memorized (the top 20%) hold 4 mis-captions at ranks 1, 3, 5 and
    8; further down, swapped pairs that the top-20% figures must leave out."""
    top = ["swapped", "atypical", "vague", "clean", "wrong_attribute", "atypical", "clean", "swapped", "duplicate",
           "clean"]
    truth = top + ["swapped", "clean"] * 20
    bad = np.isin(truth, ["swapped", "wrong_attribute", "vague"])
    reason = np.where(bad, "miscaptioned", "typical").astype(object)
    reason[[1, 5]] = "atypical_image"
    reason[8] = "duplicate"
    return pd.DataFrame({"sample_id": [f"p{i}" for i in range(50)], "split": "candidate", "truth": truth,
                         "clipmem": np.linspace(1, 0, 50), "clipmem_raw": np.linspace(0.5, 0, 50),
                         "clipmem_contrastive": 0.5, "miscaption": np.where(bad, 0.9, 0.1) - np.arange(50) * 1e-3,
                         "clipscore_g": np.where(bad, 0.1, 0.9), "clipscore_f": 0.5, REASON: reason})


def test_report_tells_miscaptions_among_the_most_memorized():
    from clipmem.scoring.report import summarize

    summary = summarize(_report_scores())
    rows = {row["score"]: row for row in summary["miscaption_detection"]}
    assert list(rows) == ["miscaption", "clipmem", "clipscore_g", "clipscore_f"]
    assert {row["pairs"] for row in rows.values()} == {10} and {row["k"] for row in rows.values()} == {4}
    assert rows["miscaption"]["auroc"] == 1.0 and rows["clipscore_g"]["auroc"] == 0.0
    assert rows["clipscore_f"]["auroc"] == 0.5  # all tied
    # CLIPMem ranks the 4 mis-captions 1st, 3rd, 5th and 8th of the 10
    assert rows["clipmem"]["average_precision"] == pytest.approx((1 + 2 / 3 + 3 / 5 + 4 / 8) / 4)
    counts = {row["reason"]: (row["pairs"], row["memorized_top"]) for row in summary["reasons"]["counts"]}
    assert counts == {"miscaptioned": (24, 4), "atypical_image": (2, 2), "atypical_caption": (0, 0),
                      "duplicate": (1, 1), "typical": (23, 3)}
    by_truth = {(row["reason"], row["truth"]): row["pairs"] for row in summary["reasons"]["by_truth"]}
    assert by_truth["miscaptioned", "swapped"] == 22 and by_truth["atypical_image", "atypical"] == 2


def test_report_prints_the_reasons(tmp_path):
    import json

    from typer.testing import CliRunner

    from clipmem.cli import app
    from clipmem.scoring.rundir import RunDir

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    _report_scores().to_parquet(run.scores, index=False)
    run.metrics.write_text(json.dumps({"f": {"i2t_r1": 0.5}, "g": {"i2t_r1": 0.4}}))
    run.mark_finished()
    result = CliRunner().invoke(app, ["report", str(run.path)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "Why memorized" in result.output and "Finding mis-captions" in result.output
    plain = CliRunner().invoke(app, ["report", str(run.path), "--json"])
    assert json.loads(plain.output)["miscaption_detection"][0]["score"] == "miscaption"
    # a run scored before reasons: no section, no error
    _report_scores().drop(columns=["miscaption", REASON]).to_parquet(run.scores, index=False)
    run.mark_finished()
    older = CliRunner().invoke(app, ["report", str(run.path)])
    assert older.exit_code == 0 and "Why memorized" not in older.output


def test_weaker_fraction_scale():
    import math

    from clipmem.scoring.why import weaker_fraction

    ref = np.array([3.0, 0.0, 2.0, 1.0])
    spread = 1.5 / 1.349  # IQR of 0..3 (quartiles 0.75 and 2.25) / 1.349
    h = 0.9 * spread * 4 ** -0.2  # Silverman's bandwidth

    def smoothed(x):  # the kernel-smoothed CDF by hand: the mean of the Gaussian CDFs centred on the reference
        return sum(0.5 * (1 + math.erf((x - r) / (h * math.sqrt(2)))) for r in ref) / len(ref)

    got = weaker_fraction(np.array([0.0, 1.5, 2.2, 3.0, 3.0 + spread, -spread]), ref)
    expected = [smoothed(0.0), 0.5, smoothed(2.2), smoothed(3.0), 1 - (1 - smoothed(3.0)) * np.exp(-1),
                smoothed(0.0) * np.exp(-1)]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    far = weaker_fraction(np.array([10.0, 20.0, 30.0]), ref)
    assert far[0] < far[1] < far[2] < 1.0  # no tie far beyond every reference value
    dense = weaker_fraction(np.linspace(-5.0, 8.0, 20_001), ref)
    assert (np.diff(dense) > 0).all()  # strictly increasing, the tails joined without a step


def test_weaker_fraction_is_continuous_across_tied_reference_values():
    from clipmem.scoring.why import weaker_fraction

    # half the reference ties at 1.0: a step CDF jumps by 0.5 there, so float rounding of a pair's evidence (as
    # another thread count gives) could move its miscaption by 0.5
    ref = np.array([0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.5, 2.0])
    below, above = weaker_fraction(np.array([1.0 - 1e-7, 1.0 + 1e-7]), ref)
    assert 0 < above - below < 1e-5
    assert below == pytest.approx(0.5, abs=1e-6)  # the symmetric reference's centre


def test_weaker_fraction_estimates_the_reference_distribution():
    from scipy.stats import norm

    from clipmem.scoring.why import weaker_fraction

    # a second method: for a large reference drawn from N(0, 1) the fraction is about the normal CDF
    ref = np.random.default_rng(0).normal(size=20_000)
    x = np.linspace(-2.5, 2.5, 11)
    np.testing.assert_allclose(weaker_fraction(x, ref), norm.cdf(x), atol=0.01)


def _signals_only(misfit, image_margin, caption_margin, agreement, nearest_sim):
    """A Neighbourhood holding just the signals the mis-caption evidence reads (k = 1)."""
    from clipmem.scoring.why import Neighbourhood

    q = len(misfit)
    column = lambda x: np.asarray(x, dtype=float)[:, None]  # noqa: E731
    return Neighbourhood(image_index=np.zeros((q, 1), int), image_sim=column(nearest_sim),
                         image_agreement=column(agreement), caption_index=np.zeros((q, 1), int),
                         caption_sim=np.zeros((q, 1)), caption_agreement=np.zeros((q, 1)),
                         misfit=np.asarray(misfit, float), image_margin=np.asarray(image_margin, float),
                         caption_margin=np.asarray(caption_margin, float), agreement=np.asarray(agreement, float))


def test_mis_caption_evidence_is_the_weaker_of_misalignment_and_contradiction():
    from clipmem.scoring.why import mis_caption_evidence

    # the reference: five pairs whose every signal runs 0, 1, 2, 3, 4 (median 2, IQR 2 -> spread 2 / 1.349)
    steps = [0.0, 1.0, 2.0, 3.0, 4.0]
    reference = _signals_only(steps, steps, steps, [-s for s in steps], steps)
    spread = 2 / 1.349
    # pair a: a mis-captioned image, its nearest image as close as the closest reference pair's (4) and its
    # neighbours' captions disagreeing as much as the most disagreeing reference pair's (agreement -4);
    # pair b: the same misfit and margins, but an atypical image: its nearest image far (0), its neighbours' captions
    # agreeing (agreement 0). Misfit and margins alone (the evidence before) could not tell them apart.
    # pair c: closely contradicted, but aligned as well as the best-aligned reference pair (misfit and margins 0).
    query = _signals_only([3.0, 3.0, 0.0], [3.0, 3.0, 0.0], [3.0, 3.0, 0.0], [-4.0, 0.0, -4.0], [4.0, 0.0, 4.0])
    evidence, ref_evidence = mis_caption_evidence(query, reference)
    # z-scores: a misalignment 1 / spread each, contradiction 2 / spread each; b contradiction -2 / spread each;
    # c misalignment -2 / spread each: each pair's evidence is the smaller of the two groups' means
    np.testing.assert_allclose(evidence, [1 / spread, -2 / spread, -2 / spread])
    np.testing.assert_allclose(ref_evidence, [(s - 2) / spread for s in steps])

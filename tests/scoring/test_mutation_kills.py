"""Known-answer tests for what mutation testing (make mutation, docs/testing.md) found unpinned in the metrics,
the split plan and the scoring plumbing: each case is worked out by hand in its comment, or computed here by a
second route (the model called directly, numpy's generator following the documented procedure)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from constructed import (AUGMENT, NO_AUGMENT, SCORE, WORD_CONTEXT, base_model, clean_image, cos, make_corpus, rows_of,
                         text, word_corpus)

from clipmem.scoring.attribution import _pool, capture_blocks, draw_tower_views, image_blocks, text_blocks
from clipmem.scoring.columns import NULL_COLUMNS
from clipmem.scoring.config import DataConfig, RunConfig, ScoreConfig, SourceOptions
from clipmem.scoring.data.synthetic import COLOURS, SHAPES
from clipmem.scoring.errors import ClipmemError
from clipmem.scoring.evaluate import evaluate_model, linear_probe, probe_rows, retrieval, utility, zero_shot
from clipmem.scoring.metrics import Ranking, detection, precision_at_k, single_auroc
from clipmem.scoring.models import apply_vocabulary, tokenize
from clipmem.scoring.score import (NULL_STREAM, Embeddings, clean_embeddings, embeddings_arrays, encode_captions,
                                   encode_images, encode_texts, mean_over_replicas, minmax, null_roles, reference_set,
                                   scale_scores, score_null, score_run, scored_rows, view_draws, with_without)
from clipmem.scoring.splits import SplitPlan, SplitSizes, plan_kfold, plan_splits
from clipmem.scoring.transform import augment, sample_views

CPU = torch.device("cpu")

# ---------------------------------------------------------------- metrics


def test_single_auroc_of_a_hand_computed_case():
    # scores 0.9(+) 0.8(-) 0.7(+) 0.1(-): 3 of the 4 (positive, negative) pairs ordered right
    assert single_auroc([True, False, True, False], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(0.75)
    # one positive, the highest of three: every pair ordered right
    assert single_auroc(np.array([0, 0, 1]), np.array([0.2, 0.1, 0.5])) == 1.0
    assert single_auroc([False, False], [1, 2]) is None and single_auroc([True, True], [1, 2]) is None


def test_detection_rows_carry_every_number_shown():
    # the hand case of test_metrics: AUROC 3/4, AP 5/6, P@2 = 1/2 over 4 pairs
    out = detection({"s": np.array([0.9, 0.8, 0.7, 0.1])}, {"pos": np.array([True, False, True, False])})
    assert out == {"pos": [{"score": "s", "auroc": 0.75, "average_precision": pytest.approx(5 / 6),
                            "precision_at_k": 0.5, "k": 2, "pairs": 4}]}


def test_detection_of_a_single_positive_and_of_an_all_positive_set():
    # one positive ranked second of three: AUROC 1/2 (above one negative, below the other); AP = P at rank 2 = 1/2
    out = detection({"s": np.array([0.9, 0.5, 0.1])}, {"one": np.array([False, True, False]),
                                                       "all": np.ones(3, bool), "none": np.zeros(3, bool)})
    assert out["all"] == [] and out["none"] == []
    (row,) = out["one"]
    assert (row["auroc"], row["average_precision"], row["precision_at_k"], row["k"], row["pairs"]) == \
        (0.5, 0.5, 0.0, 1, 3)


def test_ties_at_the_cutoff_are_broken_by_row_order():
    # 1000 equal scores: the 'highest k' are the first k rows (a stable sort), so P@k counts rows 0..k-1 only
    values = np.zeros(1000)
    positive = np.arange(1000) >= 500
    ranking = Ranking.of(values)
    assert ranking.order.tolist() == list(range(1000))
    assert precision_at_k(positive, ranking, 500) == 0.0
    assert precision_at_k(~positive, ranking, 500) == 1.0
    # three tied levels in shuffled rows: within a level, rows keep their order (an unstable sort mixes them)
    values = np.repeat([0.0, 1.0, 2.0], 400)[np.random.default_rng(0).permutation(1200)]
    order = Ranking.of(values).order
    expected = [i for level in (2.0, 1.0, 0.0) for i in np.flatnonzero(values == level)]
    assert order.tolist() == expected

# ---------------------------------------------------------------- split sizes


def test_fraction_remainders_go_to_the_largest_remainders():
    # n = 10, shares 4.6, 2.7, 1.7 and 1.0: floors 4+2+1+1 = 8, two pairs left (round(10) - 8), and they go to
    # the two largest remainders (.7 and .7), not to .6 or to 0
    assert SplitSizes(0.46, 0.27, 0.17, 0.1).resolve(10) == {"shared": 4, "candidate": 3, "independent": 2,
                                                             "extra": 1}


def test_the_left_over_count_rounds_half_up():
    # shares 4.6 + 2 + 2 = 8.6 of n = 10, rounded to 9: the shared split, with the only remainder, gets 5
    assert SplitSizes(0.46, 0.2, 0.2, 0).resolve(10) == {"shared": 5, "candidate": 2, "independent": 2, "extra": 0}


def test_one_is_a_count_not_the_whole_dataset():
    assert SplitSizes(0.5, 1, 1, 0).resolve(10) == {"shared": 5, "candidate": 1, "independent": 1, "extra": 0}
    assert SplitSizes(1, 1, 1, 0).resolve(3) == {"shared": 1, "candidate": 1, "independent": 1, "extra": 0}


@pytest.mark.parametrize("sizes", [(0, 1, 1, 0), (1, 0, 1, 0), (1, 1, 0, 0)])
def test_each_scored_and_shared_split_needs_a_pair(sizes):
    with pytest.raises(ClipmemError, match="need at least one pair each"):
        SplitSizes(*sizes).resolve(10)


def test_size_errors_name_the_problem():
    with pytest.raises(ClipmemError, match="split size candidate=-1 is negative"):
        SplitSizes(5, -1, 1, 0).resolve(10)
    with pytest.raises(ClipmemError, match="need 9 pairs but the dataset has 3; lower the sizes or give fractions"):
        SplitSizes(3, 3, 3, 0).resolve(3)
    with pytest.raises(ClipmemError, match="lower the counts"):
        SplitSizes(0.5, 4, 4, 0).resolve(10)
    # an empty dataset: a ClipmemError, not a division by zero
    for sizes in ((1, 1, 1, 0), (0.5, 0.2, 0.2, 0.1)):
        with pytest.raises(ClipmemError):
            SplitSizes(*sizes).resolve(0)

# ---------------------------------------------------------------- split plan file


def test_a_kfold_plan_reads_back_with_its_folds(tmp_path):
    ids = [f"p{i}" for i in range(12)]
    plan = plan_kfold(ids, ["clean"] * 12, SplitSizes(6, 3, 3, 0), folds=3, seed=0)
    content = plan.to_json()
    assert content["scheme"] == "kfold" and content["sizes"] == plan.sizes()
    path = tmp_path / "split.json"
    path.write_text(json.dumps(content))
    again = SplitPlan.load(path)
    assert again.folds == plan.folds and again.scheme == "kfold" and again.ids == plan.ids
    # fold member ids are read as strings, as the ids are
    content["folds"] = [[int(s[1:]) for s in fold] for fold in plan.folds]
    content["ids"] = {name: [int(s[1:]) for s in members] for name, members in plan.ids.items()}
    path.write_text(json.dumps(content))
    with pytest.raises(ClipmemError, match="malformed"):
        SplitPlan.load(path)  # ids as numbers and folds as strings no longer match


def test_a_missing_plan_file_is_named(tmp_path):
    with pytest.raises(ClipmemError, match="split plan .*nowhere.json does not exist"):
        SplitPlan.load(tmp_path / "nowhere.json")

# ---------------------------------------------------------------- seeded placement of the pairs
# The split plan's documented procedure, carried out here step by step with numpy's generator: the faulty pairs
# (in row order) and the clean pairs are each shuffled by one permutation of default_rng(seed), in that order;
# then every non-empty split is put in a fresh random order, split by split.


def _reorder(rng, members):
    return [members[j] for j in rng.permutation(len(members))] if members else []


def test_a_published_plan_places_each_pair_where_the_seeded_shuffle_puts_it():
    ids = [f"s{i}" for i in range(20)]
    truth = ["clean"] * 20
    for i in (2, 5, 11, 12, 17):
        truth[i] = "swapped"
    plan = plan_splits(ids, truth, SplitSizes(8, 4, 4, 3), seed=3)
    rng = np.random.default_rng(3)
    faulty = [int(i) for i in rng.permutation([2, 5, 11, 12, 17])]
    clean = [int(i) for i in rng.permutation([i for i in range(20) if truth[i] == "clean"])]
    # five faulty pairs alternate: three to S_C, two to S_I; clean pairs fill S_C, S_I, S_S and S_E in turn
    expected = {"shared": clean[3:11], "candidate": faulty[0::2] + clean[:1], "independent": faulty[1::2] + clean[1:3],
                "extra": clean[11:14]}
    for name in ("shared", "candidate", "independent", "extra"):
        assert plan.ids[name] == [ids[i] for i in _reorder(rng, expected[name])], name
    assert set(ids) - {sid for members in plan.ids.values() for sid in members} == {ids[i] for i in clean[14:]}


def test_faulty_pairs_beyond_a_small_candidate_split_overflow_to_the_independent_one():
    ids = [f"s{i}" for i in range(12)]
    truth = ["swapped" if i < 5 else "clean" for i in range(12)]
    plan = plan_splits(ids, truth, SplitSizes(3, 2, 4, 0), seed=8)
    rng = np.random.default_rng(8)
    faulty = [int(i) for i in rng.permutation(5)]
    clean = [int(i) for i in rng.permutation(np.arange(5, 12))]
    # alternating gives S_C faulty[0, 2, 4]: one too many, and the last one dealt moves to S_I
    expected = {"shared": clean[1:4], "candidate": faulty[0:3:2], "independent": [faulty[1], faulty[3], faulty[4],
                                                                               clean[0]], "extra": []}
    for name in ("shared", "candidate", "independent", "extra"):
        assert plan.ids[name] == [ids[i] for i in _reorder(rng, expected[name])], name


def test_faulty_pairs_beyond_a_small_independent_split_overflow_to_the_candidate_one():
    ids = [f"s{i}" for i in range(12)]
    truth = ["clean"] * 6 + ["mislabeled"] * 6
    plan = plan_splits(ids, truth, SplitSizes(2, 4, 2, 1), seed=1)
    rng = np.random.default_rng(1)
    faulty = [int(i) for i in rng.permutation(np.arange(6, 12))]
    clean = [int(i) for i in rng.permutation(6)]
    # S_C gets faulty[0, 2, 4], S_I faulty[1, 3, 5]: one too many, and its last moves to S_C
    expected = {"shared": clean[0:2], "candidate": [faulty[0], faulty[2], faulty[4], faulty[5]],
                "independent": [faulty[1], faulty[3]], "extra": clean[2:3]}
    for name in ("shared", "candidate", "independent", "extra"):
        assert plan.ids[name] == [ids[i] for i in _reorder(rng, expected[name])], name


def test_a_kfold_plan_deals_the_shuffled_pool_round_robin():
    ids = [f"s{i}" for i in range(16)]
    truth = ["clean"] * 16
    truth[4] = truth[9] = truth[13] = "swapped"
    plan = plan_kfold(ids, truth, SplitSizes(6, 3, 3, 2), folds=3, seed=5)
    rng = np.random.default_rng(5)
    faulty = [int(i) for i in rng.permutation([4, 9, 13])]
    clean = [int(i) for i in rng.permutation([i for i in range(16) if truth[i] == "clean"])]
    pool = faulty + clean[:9]  # S_S + S_C + S_I = 12 pairs, the faulty ones first
    folds = [[ids[i] for i in _reorder(rng, pool[k::3])] for k in range(3)]
    extra = [ids[i] for i in _reorder(rng, clean[9:11])]
    assert plan.folds == folds
    assert plan.ids == {"shared": [], "candidate": folds[1] + folds[2], "independent": folds[0], "extra": extra}
    # every fault tag dealt to a different fold (three faulty pairs, three folds)
    assert sorted(k for k, members in enumerate(plan.folds) for sid in members if sid in {"s4", "s9", "s13"}) == \
        [0, 1, 2]


def test_a_kfold_plan_of_clean_pairs_and_no_extra_split():
    ids = [f"s{i}" for i in range(9)]
    plan = plan_kfold(ids, ["clean"] * 9, SplitSizes(3, 2, 2, 0), folds=2, seed=0)
    rng = np.random.default_rng(0)
    clean = [int(i) for i in rng.permutation(9)]
    folds = [[ids[i] for i in _reorder(rng, clean[:7][k::2])] for k in range(2)]
    assert plan.folds == folds and plan.ids["extra"] == [] and plan.ids["independent"] == folds[0]

# ---------------------------------------------------------------- scoring plumbing (score.py), constructed inputs


def test_with_and_without_are_the_means_over_the_models_that_did_and_did_not_see_each_pair():
    # three models (a k-fold run): pair 0 seen by models 0 and 2, pair 1 by model 2 only
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # (models, N)
    seen = torch.tensor([[True, False, True], [False, False, True]])  # (N, models)
    with_, without = with_without(values, seen)
    assert with_.tolist() == [3.0, 6.0] and without.tolist() == [3.0, 3.0]
    # with per-view values (models, N, views): the same weights on every view
    views = torch.stack([values, 10 * values], dim=-1)
    with_, without = with_without(views, seen)
    assert with_.tolist() == [[3.0, 30.0], [6.0, 60.0]] and without.tolist() == [[3.0, 30.0], [3.0, 30.0]]


def test_minmax_maps_the_smallest_to_0_and_the_largest_to_1():
    np.testing.assert_allclose(minmax(np.array([-1.0, 3.0, 1.0, 2.0])), [0.0, 1.0, 0.5, 0.75])
    assert minmax(np.array([5.0])).tolist() == [0.0]


def test_scale_scores_rescales_every_shown_score_from_its_raw_column_over_the_given_pairs():
    raw = {"clipmem_raw": [0.0, 2.0, 1.0], "clipmem_contrastive_raw": [-4.0, 0.0, -2.0],
           "mem_image_raw": [3.0, 1.0, 2.0], "mem_text_raw": [1.0, 1.0, 1.0]}
    frame = pd.DataFrame({**raw, "clipmem": [9.0, 9.0, 9.0]})
    out = scale_scores(frame)
    assert out["clipmem"].tolist() == [0.0, 1.0, 0.5]
    assert out["clipmem_contrastive"].tolist() == [0.0, 1.0, 0.5]
    assert out["mem_image"].tolist() == [1.0, 0.0, 0.5]
    assert out["mem_text"].tolist() == [0.0, 0.0, 0.0]
    assert frame["clipmem"].tolist() == [9.0, 9.0, 9.0]  # the caller's frame is left as it was
    # a part of the pairs is scaled over that part; a raw column that is absent adds no scaled column
    part = scale_scores(pd.DataFrame({"clipmem_raw": [2.0, 1.0]}))
    assert part.columns.tolist() == ["clipmem_raw", "clipmem"] and part["clipmem"].tolist() == [1.0, 0.0]


def test_the_reference_set_is_the_distinct_extra_captions_or_a_seeded_sample_of_them():
    corpus = make_corpus()
    extra = corpus.caption_index[corpus.rows("extra")].flatten()  # 12 distinct captions
    corpus.caption_index[corpus.rows("extra")[0], 1] = -1  # a padded slot is no caption
    pool = torch.unique(corpus.caption_index[corpus.rows("extra")])[1:]
    assert len(pool) == 11
    assert reference_set(corpus, 11, seed=0).tolist() == pool.tolist()
    assert reference_set(corpus, 100, seed=0).tolist() == pool.tolist()
    # fewer than the pool: the first `size` of the seeded permutation of the pool, sorted
    order = torch.randperm(11, generator=torch.Generator().manual_seed(4))
    assert reference_set(corpus, 5, seed=4).tolist() == sorted(pool[order[:5]].tolist())
    assert set(extra.tolist()) >= set(reference_set(corpus, 5, seed=4).tolist())
    # no S_E: the shared pairs' captions
    corpus.split = ["shared" if s == "extra" else s for s in corpus.split]
    shared = torch.unique(corpus.caption_index[corpus.rows("shared")])
    assert reference_set(corpus, 100, seed=0).tolist() == shared[shared >= 0].tolist()


def test_caption_table_holds_exactly_the_needed_captions_each_encoded_by_the_model():
    corpus, model = make_corpus(), base_model()
    table = encode_captions(model, corpus, torch.tensor([7, -1, 3, 7, 40, 0]), batch_size=2, device=CPU)
    assert table.rows.tolist() == [0] + [-1] * 2 + [1] + [-1] * 3 + [2] + [-1] * 32 + [3] + [-1] * 11
    torch.testing.assert_close(table[torch.tensor([40, 3, 0, 7])], text(model, corpus, torch.tensor([40, 3, 0, 7])))
    everything = encode_captions(model, corpus, None, batch_size=5, device=CPU)
    assert everything.rows.tolist() == list(range(52))
    torch.testing.assert_close(everything.emb, text(model, corpus, torch.arange(52)))


def test_a_caption_table_covers_exactly_the_captions_it_encoded():
    table = encode_captions(base_model(), make_corpus(), torch.tensor([1, 2]), batch_size=64, device=CPU)
    assert table.covers(torch.tensor([-1, 2, 1, -1])) and table.covers(torch.tensor([2]))
    assert not table.covers(torch.tensor([0, 1])) and not table.covers(torch.tensor([1, 3]))


@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_batched_encoding_equals_one_pass_of_the_model(batch_size):
    """Image embeddings of 5 images in batches, clean and through 3 drawn views each (repeat=3, batches that cut
    an image's views apart), and text embeddings in batches: each equals the model applied to all inputs at once."""
    corpus, model = make_corpus(), base_model()
    rows = torch.tensor([0, 3, 4, 9, 20])
    pixels = corpus.pixels[rows]
    torch.testing.assert_close(encode_images(model, pixels, batch_size, CPU), clean_image(model, corpus, rows))
    views = sample_views(15, AUGMENT.augment, torch.Generator().manual_seed(2))
    shift = AUGMENT.augment.max_shift
    expected = model.encode_image(augment(pixels.repeat_interleave(3, dim=0), views, shift), normalize=True)
    torch.testing.assert_close(encode_images(model, pixels, batch_size, CPU, views=views, max_shift=shift, repeat=3),
                               expected.detach())
    torch.testing.assert_close(encode_texts(model, corpus.tokens[:7], batch_size, CPU),
                               text(model, corpus, torch.arange(7)))
    assert encode_images(model, pixels[:0], batch_size, CPU).numel() == 0
    assert encode_texts(model, corpus.tokens[:0], batch_size, CPU).numel() == 0


def test_view_draws_pick_each_views_caption_uniformly_from_the_pairs_captions():
    """Pairs with 1, 2 and 3 captions; each view's caption is slot floor(u * count) of its pair, u the uniform
    drawn right after the augmentation parameters from the generator seeded with the score seed."""
    corpus = make_corpus()
    counts = torch.tensor([1, 2, 3] * 10)
    corpus.caption_count = counts
    corpus.caption_index = torch.stack([torch.arange(30) * 3 + k for k in range(3)], dim=1)
    corpus.caption_index[counts < 3, 2] = -1
    corpus.caption_index[counts < 2, 1] = -1
    rows = torch.arange(30)
    cfg = ScoreConfig(views=4, seed=11)
    views, captions = view_draws(corpus, rows, cfg, AUGMENT)
    gen = torch.Generator().manual_seed(11)
    expected_views = sample_views(120, AUGMENT.augment, gen)
    slot = (torch.rand(120, generator=gen) * counts.repeat_interleave(4)).long()
    assert torch.equal(views.shift, expected_views.shift) and torch.equal(views.jitter, expected_views.jitter)
    assert captions.tolist() == (rows.repeat_interleave(4) * 3 + slot).tolist()
    assert set(slot.view(30, 4)[counts == 3].flatten().tolist()) == {0, 1, 2}
    # a part of the rows: the same draws, sliced
    part_views, part_captions = view_draws(corpus, rows, cfg, AUGMENT, part=slice(5, 12))
    assert torch.equal(part_captions, captions[20:48]) and torch.equal(part_views.shift, views.shift[20:48])
    assert torch.equal(part_views.jitter, views.jitter[20:48])


# ---------------------------------------------------------------- tower views (attribution.py)

# three words to str.split, two once open_clip's cleaning has made the entity a space
ODD = {0: ("cat", "dog"), 9: ("bird", "red"), 18: ("blue", "sits")}
TOWER_ROWS = [1, 3, 2] * 12
TOWER_TEXTS = {3: "cat", 6: "red dog", **{r: f"{a} &nbsp; {b}" for r, (a, b) in ODD.items()}}


def _caption_of(corpus, tokens):
    """The caption-table index whose tokens these are (every text differs)."""
    (match,) = torch.nonzero((corpus.tokens == tokens).all(1)).flatten().tolist()
    return match


def test_tower_text_views_are_two_different_captions_or_the_caption_less_one_word():
    """Two captions drawn uniformly without replacement where the pair has several; for a single caption, the
    caption and the caption with one of its words removed (the same text re-tokenised without that word), every
    word as likely; a one-word caption is its own second view."""
    corpus, vocab = word_corpus(TOWER_ROWS, TOWER_TEXTS)
    cfg = ScoreConfig(views=6, seed=2)
    views = draw_tower_views(corpus, torch.arange(36), cfg, AUGMENT, WORD_CONTEXT, vocab)
    first, second = views.text_tokens
    assert first.shape == second.shape == (216, WORD_CONTEXT)

    def tokens_of(text):
        return apply_vocabulary(tokenize([text], WORD_CONTEXT).tokens, vocab)[0].tolist()

    ordered, dropped = {2: set(), 3: set()}, set()
    for j in range(216):
        r = j // 6
        captions = corpus.caption_index[r, : TOWER_ROWS[r]].tolist()
        a = _caption_of(corpus, first[j])
        assert a in captions, (r, a)
        if TOWER_ROWS[r] > 1:
            b = _caption_of(corpus, second[j])
            assert b in captions and b != a, (r, a, b)
            ordered[TOWER_ROWS[r]].add((captions.index(a), captions.index(b)))
            continue
        words = corpus.caption_texts[a].split()
        if len(words) == 1:
            assert second[j].tolist() == first[j].tolist()
        elif r in ODD:
            assert second[j].tolist() in [tokens_of(word) for word in ODD[r]]
        else:
            less_one = [tokens_of(" ".join(words[:k] + words[k + 1:])) for k in range(len(words))]
            assert second[j].tolist() in less_one, (r, corpus.caption_texts[a])
            if len(words) == 4:
                dropped.add(less_one.index(second[j].tolist()))
    assert ordered[2] == {(0, 1), (1, 0)}
    assert ordered[3] == {(a, b) for a in range(3) for b in range(3) if a != b}
    assert dropped == {0, 1, 2, 3}


def test_tower_image_views_are_two_independent_draws_of_the_training_augmentation():
    corpus, vocab = word_corpus(TOWER_ROWS, TOWER_TEXTS)
    cfg = ScoreConfig(views=6, seed=2)
    views = draw_tower_views(corpus, torch.arange(36), cfg, AUGMENT, WORD_CONTEXT, vocab)
    aug = AUGMENT.augment
    assert views.max_shift == aug.max_shift == 3
    a, b = views.image_params
    for p in (a, b):
        assert p.shift.shape == (216, 2) and p.jitter.shape == (216, 2)
        assert set(p.shift.flatten().tolist()) == set(range(2 * aug.max_shift + 1))
        assert (p.jitter - 1).abs().max() <= aug.brightness and len(set(p.jitter.flatten().tolist())) == 432
    assert (a.shift != b.shift).any(1).float().mean() > 0.8 and not torch.isin(a.jitter, b.jitter).any()
    # augmentation off: clean views (no shift, no jitter) and max_shift 0
    plain = draw_tower_views(corpus, torch.arange(36), cfg, NO_AUGMENT, WORD_CONTEXT, vocab)
    assert plain.max_shift == 0
    for p in plain.image_params:
        assert (p.shift == 0).all() and (p.jitter == 1).all()
    # seeded by the score seed: the same seed draws the same views, another seed other views
    again = draw_tower_views(corpus, torch.arange(36), cfg, AUGMENT, WORD_CONTEXT, vocab)
    other = draw_tower_views(corpus, torch.arange(36), ScoreConfig(views=6, seed=3), AUGMENT, WORD_CONTEXT, vocab)
    for v in range(2):
        assert torch.equal(again.image_params[v].jitter, views.image_params[v].jitter)
        assert torch.equal(again.text_tokens[v], views.text_tokens[v])
        assert not torch.equal(other.image_params[v].jitter, views.image_params[v].jitter)
    assert not torch.equal(other.text_tokens[1], views.text_tokens[1])


def test_a_part_of_the_rows_gets_the_tower_views_the_whole_gives_them():
    """Parts that start at a single-caption row (whose second view draws a word) and at a three-caption row."""
    corpus, vocab = word_corpus(TOWER_ROWS, TOWER_TEXTS)
    cfg = ScoreConfig(views=6, seed=2)
    whole = draw_tower_views(corpus, torch.arange(36), cfg, AUGMENT, WORD_CONTEXT, vocab)
    for start, stop in ((0, 3), (3, 7), (7, 36), (9, 10)):
        part = draw_tower_views(corpus, torch.arange(36), cfg, AUGMENT, WORD_CONTEXT, vocab, slice(start, stop))
        flat = slice(6 * start, 6 * stop)
        assert part.max_shift == whole.max_shift
        for v in range(2):
            assert torch.equal(part.text_tokens[v], whole.text_tokens[v][flat]), (start, v)
            assert torch.equal(part.image_params[v].shift, whole.image_params[v].shift[flat])
            assert torch.equal(part.image_params[v].jitter, whole.image_params[v].jitter[flat])


class _Holder(torch.nn.Module):
    """A module with the given child modules (the attribute layouts the block finders know)."""

    def __init__(self, **children):
        super().__init__()
        for name, child in children.items():
            setattr(self, name, child)


def _blocks(k):
    return torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(k))


def test_the_block_finders_return_each_towers_blocks_in_order():
    vit = base_model()
    assert image_blocks(vit) == list(vit.visual.transformer.resblocks) and len(image_blocks(vit)) == 2
    assert text_blocks(vit) == list(vit.transformer.resblocks) and len(text_blocks(vit)) == 2
    stages = [_blocks(1) for _ in range(4)]
    resnet = _Holder(visual=_Holder(**{f"layer{i + 1}": s for i, s in enumerate(stages)}, layer5=_blocks(1)))
    assert image_blocks(resnet) == stages
    for missing in (1, 4):  # three stages are not a ResNet
        three = _Holder(visual=_Holder(**{f"layer{i}": _blocks(1) for i in range(1, 5) if i != missing}))
        with pytest.raises(ValueError, match="cannot find the blocks of image tower _Holder"):
            image_blocks(three)
    # timm towers: their stages, else blocks, else layers
    for names in (("stages", "blocks", "layers"), ("blocks", "layers"), ("layers",)):
        parts = {name: _blocks(k + 2) for k, name in enumerate(names)}
        model = _Holder(visual=_Holder(trunk=_Holder(**parts)))
        assert image_blocks(model) == list(parts[names[0]]), names
    with pytest.raises(ValueError, match="image tower _Holder"):
        image_blocks(_Holder(visual=_Holder(trunk=_Holder(head=_blocks(1)))))
    # a text tower of its own (open_clip's CustomTextCLIP: model.text)
    own = _blocks(3)
    assert text_blocks(_Holder(text=_Holder(transformer=_Holder(resblocks=own)))) == list(own)
    for model in (_Holder(text=_Holder(head=_blocks(1))), _Holder(transformer=_Holder(head=_blocks(1)))):
        with pytest.raises(ValueError, match="cannot find the blocks of the text tower of _Holder"):
            text_blocks(model)


def test_block_outputs_are_averaged_over_positions_real_tokens_or_pixels():
    tokens = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [50.0, 60.0]],
                           [[2.0, 0.0], [4.0, 2.0], [6.0, 4.0]]], dtype=torch.bfloat16)  # (B=2, L=3, D=2)
    plain = _pool(tokens, None)
    assert plain.dtype == torch.float32 and plain.tolist() == [[18.0, 22.0], [4.0, 2.0]]
    assert _pool((tokens, "attention weights"), None).tolist() == plain.tolist()  # a block returning a tuple
    # real tokens only; the mask may be longer than the block's output (it is cut to the output's length)
    mask = torch.tensor([[True, True, False, False], [True, False, False, False]])
    assert _pool(tokens, mask).tolist() == [[2.0, 3.0], [2.0, 0.0]]
    assert _pool(tokens, torch.zeros(2, 3, dtype=torch.bool)).tolist() == [[0.0, 0.0], [0.0, 0.0]]
    # a conv stage (B, C, H, W): the mean over the pixels, per channel
    conv = torch.arange(16.0).view(1, 2, 2, 4)
    assert _pool(conv, mask).tolist() == [[3.5, 11.5]]


def test_captured_blocks_hold_each_blocks_pooled_output_per_call_and_let_go_after():
    first, second = torch.nn.Linear(2, 2, bias=False), torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        second.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    x = torch.tensor([[[1.0, 1.0], [3.0, 5.0]]])  # (B=1, L=2, D=2)
    mask_ref = {}
    with torch.no_grad(), capture_blocks([first, second], mask_ref) as store:
        second(first(x))  # outputs [[1, 2], [3, 10]] then [[2, 1], [10, 3]]
        mask_ref["mask"] = torch.tensor([[True, False]])
        second(first(x))
    assert [[t.tolist() for t in block] for block in store] == [[[[2.0, 6.0]], [[1.0, 2.0]]],
                                                                 [[[6.0, 2.0]], [[2.0, 1.0]]]]
    second(first(x))  # the hooks are gone
    assert [len(block) for block in store] == [2, 2]

# ---------------------------------------------------------------- utility on S_E (evaluate.py)


def test_zero_shot_accuracy_of_a_hand_made_prompt_grid():
    """Prompt (colour c, shape s) embeds as e_c + e_(8+s), ten times longer for green: the colour class (mean
    over shapes, normalised) scores an image e_c' + e_(8+s') highest at c = c' (without the normalisation green
    would win everywhere), and the shape class likewise. Of the five single-object images the embeddings get
    4 colours and 3 shapes right; a colour index never equals the shape index, so colour classes cannot pass
    for shape classes. The fifth image carries a tenth of a red component: red wins among unit-length classes
    only (normalising each embedding dimension instead would make green win)."""
    colours = list(COLOURS)
    grid = torch.zeros(len(colours), len(SHAPES), 13)
    for c in range(len(colours)):
        for s in range(len(SHAPES)):
            grid[c, s, c] = grid[c, s, 8 + s] = 10.0 if colours[c] == "green" else 1.0

    def image(colour, shape):
        return grid[colours.index(colour), SHAPES.index(shape)]

    def obj(colour, shape):
        return {"colour": colour, "shape": shape}

    images = torch.stack([image("red", "square"), image("green", "triangle"), image("blue", "cross"),
                          image("red", "cross"), image("pink", "circle"), image("white", "cross"),
                          0.1 * image("red", "circle") + 0.9 * image("red", "circle") * torch.arange(13).ge(8)])
    attributes = [{"objects": [obj("red", "square")]}, {"objects": [obj("blue", "triangle")]},
                  {"objects": [obj("blue", "diamond")]}, {"objects": [obj("red", "cross"), obj("red", "cross")]},
                  {"objects": [obj("pink", "cross")]}, {},
                  {"objects": [obj("red", "circle")]}]
    out = zero_shot(images, grid.view(-1, 13), attributes)
    assert out == {"zeroshot_colour": 0.8, "zeroshot_shape": 0.6}
    assert zero_shot(images[3:4], grid.view(-1, 13), attributes[3:4]) == {}


def _kfold_corpus():
    corpus = make_corpus()
    corpus.fold = torch.tensor([-1] * 12 + [0, 1, 2, 1] + [0, 0, 2, 1] + [-1] * 6)
    return corpus


def test_the_probe_is_fitted_on_the_shared_pairs_or_on_a_fold_models_training_folds():
    corpus = _kfold_corpus()
    assert probe_rows(corpus, "g", ("f", "g")).tolist() == list(range(12))
    names = ("fold0", "fold1", "fold2")
    assert probe_rows(corpus, "fold0", names).tolist() == [13, 14, 15, 18, 19]
    assert probe_rows(corpus, "fold1", names).tolist() == [12, 14, 16, 17, 18]
    assert probe_rows(corpus, "fold2", names).tolist() == [12, 13, 15, 16, 17, 19]


def _labelled(corpus, labels: dict[int, str], dark: set[int]):
    """Label rows 'kind' and make their images all white, or all black for the rows in `dark`."""
    for r, label in labels.items():
        corpus.attributes[r] = {"kind": label}
        corpus.pixels[r] = 0 if r in dark else 255


def test_utility_reads_the_extra_pairs_and_probes_a_label_with_a_known_accuracy():
    """S_S rows labelled a (white image) and b (black image): a probe on the model's embeddings separates them.
    The six S_E pairs are labelled a, b, a, b, a, b, and the fifth has a black image: accuracy 5/6. Retrieval
    runs on the S_E pairs' images and caption sets only; the caption texts hold no zero-shot prompts."""
    corpus, model = make_corpus(), base_model()
    extra = corpus.rows("extra").tolist()
    _labelled(corpus, {r: "ab"[r % 2] for r in range(12)}, dark={r for r in range(12) if r % 2})
    _labelled(corpus, {r: "ab"[k % 2] for k, r in enumerate(extra)}, dark={extra[1], extra[3], extra[4], extra[5]})
    cfg = RunConfig(data=DataConfig(options=SourceOptions(label_key="kind")), score=SCORE)
    embedded = rows_of(corpus, "candidate", "independent", "extra")
    emb = Embeddings(image=clean_image(model, corpus, embedded), text=torch.empty(0),
                     caption_table=text(model, corpus, torch.arange(52)))
    out = evaluate_model(model, corpus, emb, embedded, cfg, CPU)
    expected = retrieval(emb.image[8:], emb.caption_table, [{2 * r, 2 * r + 1} for r in extra])
    assert out == {**expected, "probe_kind": pytest.approx(5 / 6)}
    # fitted elsewhere: on rows of one label only there is no probe
    assert evaluate_model(model, corpus, emb, embedded, cfg, CPU, probe_rows=torch.tensor([0, 2, 4])) == expected
    # the published scheme probes on S_S, the same for both models; no S_E pair embedded: no utility
    both = utility({"f": model, "g": model}, corpus, {"f": emb, "g": emb}, embedded, cfg, CPU)
    assert both == {"f": out, "g": out}
    assert evaluate_model(model, corpus, emb, embedded[:8], cfg, CPU) == {}
    # a model without clean embeddings (a fold model beyond the two literal ones) is encoded on S_E alone: the
    # same S_E images and caption table, so the same numbers
    g_alone = utility({"f": model, "g": model}, corpus, {"f": emb}, embedded, cfg, CPU)
    assert g_alone["f"] == out
    assert g_alone["g"] == {**{key: pytest.approx(value) for key, value in expected.items()},
                            "probe_kind": pytest.approx(5 / 6)}


def test_clean_embeddings_and_the_stored_arrays_are_the_models_own_encodings():
    corpus, model = make_corpus(), base_model()
    rows = torch.tensor([20, 2, 13])
    emb = clean_embeddings(model, corpus, rows, ScoreConfig(batch_size=2), CPU)
    torch.testing.assert_close(emb.image, clean_image(model, corpus, rows))
    torch.testing.assert_close(emb.text, text(model, corpus, torch.tensor([40, 4, 26])))  # each row's first caption
    torch.testing.assert_close(emb.caption_table, text(model, corpus, torch.arange(52)))
    other = Embeddings(image=emb.image * 2, text=emb.text * 3, caption_table=emb.caption_table)
    arrays = embeddings_arrays(corpus, {"f": emb, "g": other}, rows)
    assert sorted(arrays) == ["f_image", "f_text", "g_image", "g_text", "sample_id", "split"]
    assert arrays["sample_id"].tolist() == ["p20", "p2", "p13"]
    assert arrays["split"].tolist() == ["extra", "shared", "candidate"]
    for key, value in (("f_image", emb.image), ("f_text", emb.text), ("g_image", emb.image * 2),
                       ("g_text", emb.text * 3)):
        assert arrays[key].dtype == np.float32 and np.array_equal(arrays[key], value.numpy()), key


def test_kfold_plan_errors_name_the_problem():
    ids, clean = [f"s{i}" for i in range(10)], ["clean"] * 10
    with pytest.raises(ClipmemError, match="^--folds must be >= 2 for the k-fold scheme, got 1$"):
        plan_kfold(ids, clean, SplitSizes(4, 2, 2, 0), folds=1, seed=0)
    with pytest.raises(ClipmemError, match="^cannot plan splits of an empty dataset$"):
        plan_kfold([], [], SplitSizes(4, 2, 2, 0), folds=2, seed=0)
    with pytest.raises(ClipmemError, match="^dataset ids are not unique; cannot plan splits$"):
        plan_kfold(["a"] * 10, clean, SplitSizes(4, 2, 2, 0), folds=2, seed=0)
    with pytest.raises(ClipmemError, match="7 pairs cannot fill 4 folds of at least 2 pairs each"):
        plan_kfold(ids, clean, SplitSizes(3, 2, 2, 0), folds=4, seed=0)
    assert len(plan_kfold(ids, clean, SplitSizes(4, 2, 2, 0), folds=4, seed=0).folds) == 4  # 8 pairs: just enough
    with pytest.raises(ClipmemError, match="9 pairs carry a fault tag but the folds hold only 8; raise the sizes"):
        plan_kfold(ids, ["swapped"] * 9 + ["clean"], SplitSizes(4, 2, 2, 0), folds=2, seed=0)
    # as many faulty pairs as the folds hold: every pair of the folds is a faulty one
    full = plan_kfold(ids, ["swapped"] * 8 + ["clean"] * 2, SplitSizes(4, 2, 2, 0), folds=2, seed=0)
    assert sorted(sid for fold in full.folds for sid in fold) == sorted(ids[:8])
    with pytest.raises(ClipmemError, match="^cannot plan splits of an empty dataset$"):
        plan_splits([], [], SplitSizes(4, 2, 2, 0), seed=0)
    with pytest.raises(ClipmemError, match="^dataset ids are not unique; cannot plan splits$"):
        plan_splits(["a"] * 10, clean, SplitSizes(4, 2, 2, 0), seed=0)
    with pytest.raises(ClipmemError, match="5 pairs carry a fault tag but the scored splits hold only 4; raise"):
        plan_splits(ids, ["swapped"] * 5 + ["clean"] * 5, SplitSizes(4, 2, 2, 0), seed=0)


PARTITION = r"\(the folds do not partition the candidate and independent pairs\)$"
FOLD_0 = r"\(in a k-fold plan fold 0 is the independent split and the shared split is empty\)$"


@pytest.mark.parametrize("damage, message", [
    (lambda c: c.update(folds=c["folds"][:1]), r"at least 2 non-empty folds, got sizes \[2\]"),
    (lambda c: c["folds"].append([]), r"at least 2 non-empty folds, got sizes \[2, 2, 2, 0\]"),
    (lambda c: c["folds"][1].append(c["folds"][2][0]), PARTITION),  # a pair in two folds
    (lambda c: c["folds"][2].pop(), PARTITION),  # a pair in no fold
    (lambda c: c["folds"].__setitem__(0, c["folds"][0] + c["folds"].pop(1)), FOLD_0),
    (lambda c: c["ids"]["shared"].append(c["ids"]["extra"][0]), FOLD_0),
])
def test_a_damaged_kfold_plan_is_refused_with_its_reason(tmp_path, damage, message):
    ids = [f"s{i}" for i in range(8)]
    content = plan_kfold(ids, ["clean"] * 8, SplitSizes(2, 2, 2, 2), folds=3, seed=0).to_json()
    assert [len(f) for f in content["folds"]] == [2, 2, 2]
    damage(content)
    (tmp_path / "split.json").write_text(json.dumps(content))
    with pytest.raises(ClipmemError, match="malformed.*" + message):
        SplitPlan.load(tmp_path / "split.json")


# ---------------------------------------------------------------- layer tables (attribution.py)


def test_layer_curves_break_a_long_tie_at_the_cutoff_by_row_order():
    """40 pairs, 30 of them tied at the cutoff: the top 10 curves are the two best pairs, then the first eight
    tied pairs in row order (numpy's default sort is not stable from 17 elements on, so the order must be asked)."""
    from clipmem.scoring.attribution import layer_tables
    clipmem = np.array([0.1] * 8 + [0.5] * 15 + [0.9] + [0.5] * 15 + [0.8])  # best: row 23, then row 39
    frame = pd.DataFrame({"sample_id": [f"p{i}" for i in range(40)], "truth": ["clean"] * 40, "clipmem": clipmem})
    per_pair = {tower: np.arange(40.0)[None, :] for tower in ("image", "text")}
    _, curves = layer_tables(frame, per_pair, top_k_curves=10)
    expected = ["p23", "p39", "p8", "p9", "p10", "p11", "p12", "p13", "p14", "p15"]
    assert curves[curves["tower"] == "image"]["sample_id"].tolist() == expected
    assert curves[curves["tower"] == "text"]["sample_id"].tolist() == expected


def test_layer_intervals_are_the_seed_0_bootstrap_of_the_groups_pairs():
    """LayerMem's and ΔLayerMem's intervals over 50 varied pairs equal a plain bootstrap written out here: 2000
    resamples of the pairs with numpy's generator seeded 0, the same resamples for both, 2.5% and 97.5% quantiles
    of the resampled means (with 50 pairs another seed moves the bounds, so a changed seed shows)."""
    from clipmem.scoring.attribution import layer_tables
    gen = np.random.default_rng(7)
    n = 50
    frame = pd.DataFrame({"sample_id": [f"p{i}" for i in range(n)], "truth": ["clean"] * 30 + ["swapped"] * 20,
                          "clipmem": gen.normal(size=n)})
    per_pair = {"image": gen.normal(size=(2, n)).cumsum(0), "text": gen.exponential(size=(2, n)).cumsum(0)}
    layers, _ = layer_tables(frame, per_pair, top_k_curves=5)
    table = layers.set_index(["tower", "truth", "layer"])

    def plain_bootstrap(values, seed):
        resamples = np.random.default_rng(seed).integers(0, values.shape[1], size=(2000, values.shape[1]))
        means = values[:, resamples].mean(-1)  # (blocks, 2000)
        return np.quantile(means, 0.025, axis=1), np.quantile(means, 0.975, axis=1)

    for tower, values in per_pair.items():
        for truth, mask in {"all": np.ones(n, bool), "clean": np.arange(n) < 30, "swapped": np.arange(n) >= 30}.items():
            rows = table.loc[(tower, truth)].sort_index()
            lo, hi = plain_bootstrap(values[:, mask], 0)
            deltas = np.vstack([values[:1, mask], values[1:, mask] - values[:-1, mask]])
            delta_lo, delta_hi = plain_bootstrap(deltas, 0)
            np.testing.assert_allclose(rows["layer_mem_lo"], lo, atol=1e-12, err_msg=f"{tower} {truth}")
            np.testing.assert_allclose(rows["layer_mem_hi"], hi, atol=1e-12, err_msg=f"{tower} {truth}")
            np.testing.assert_allclose(rows["delta_layer_mem_lo"], delta_lo, atol=1e-12, err_msg=f"{tower} {truth}")
            np.testing.assert_allclose(rows["delta_layer_mem_hi"], delta_hi, atol=1e-12, err_msg=f"{tower} {truth}")
            # the case can tell seeds apart
            assert not np.allclose(plain_bootstrap(values[:, mask], 1)[0], lo, atol=1e-6)


def test_probe_labels_are_the_single_objects_shape_and_colour_or_the_named_label():
    """Built-in attributes: shape and colour of one-object images, None for two objects or none; a label_key reads
    that key; data with neither has no probe label."""
    from clipmem.scoring.evaluate import probe_labels
    one = {"objects": [{"shape": "circle", "colour": "red"}]}
    two = {"objects": [{"shape": "square", "colour": "blue"}, {"shape": "circle", "colour": "green"}]}
    other = {"objects": [{"shape": "triangle", "colour": "blue"}]}
    assert probe_labels([one, two, {}, other], None) == {"shape": ["circle", None, None, "triangle"],
                                                         "colour": ["red", None, None, "blue"]}
    assert probe_labels([{"kind": "a"}, {}], "kind") == {"kind": ["a", None]}
    assert probe_labels([{"kind": "a"}], None) == {}


def test_zero_shot_prompts_name_every_colour_and_shape():
    from clipmem.scoring.evaluate import zero_shot_prompts
    prompts = zero_shot_prompts()
    assert len(prompts) == len(COLOURS) * len(SHAPES)
    colours = list(COLOURS)
    assert prompts[0] == f"a picture of a {colours[0]} {SHAPES[0]}"
    assert prompts[-1] == f"a picture of a {colours[-1]} {SHAPES[-1]}"


def test_retrieval_with_fewer_images_than_k_ranks_every_image():
    """Three images, six captions: text-to-image R@5 looks at all three images (k is capped by the images)."""
    image = torch.eye(3, 4)
    table = torch.cat([torch.eye(3, 4), torch.eye(3, 4)])
    out = retrieval(image, table, [{0, 3}, {1, 4}, {2, 5}])
    assert out == {"i2t_r1": 1.0, "t2i_r1": 1.0, "i2t_r5": 1.0, "t2i_r5": 1.0}


def test_fold_models_probe_on_their_own_training_folds():
    """S_S all labelled a (a probe there has one class: no probe); rows 12-19 labelled a/b with white/black
    images so that each fold model's training folds hold both labels: every fold model, with clean embeddings or
    encoded on S_E alone, gets a probe, fitted on its training folds (the rows test 526 names)."""
    corpus, model = _kfold_corpus(), base_model()
    extra = corpus.rows("extra").tolist()
    _labelled(corpus, {r: "a" for r in range(12)}, dark=set())
    labels = dict(zip(range(12, 20), "ababbaba"))
    _labelled(corpus, labels, dark={r for r, label in labels.items() if label == "b"})
    _labelled(corpus, {r: "ab"[k % 2] for k, r in enumerate(extra)}, dark={r for k, r in enumerate(extra) if k % 2})
    cfg = RunConfig(data=DataConfig(options=SourceOptions(label_key="kind")), score=SCORE)
    embedded = rows_of(corpus, "candidate", "independent", "extra")
    emb = Embeddings(image=clean_image(model, corpus, embedded), text=torch.empty(0),
                     caption_table=text(model, corpus, torch.arange(52)))
    names = ("fold0", "fold1", "fold2")
    out = utility(dict.fromkeys(names, model), corpus, {"fold0": emb}, embedded, cfg, CPU)
    folds = {"fold0": [13, 14, 15, 18, 19], "fold1": [12, 14, 16, 17, 18], "fold2": [12, 13, 15, 16, 17, 19]}
    s_e = clean_image(model, corpus, torch.tensor(extra))
    for name, rows in folds.items():
        expected = linear_probe(clean_image(model, corpus, torch.tensor(rows)), [labels[r] for r in rows], s_e,
                                ["ab"[k % 2] for k in range(len(extra))])
        assert out[name]["probe_kind"] == pytest.approx(expected), name
    # the published pair probes on S_S, which has one label here: no probe
    assert "probe_kind" not in utility({"f": model, "g": model}, corpus, {"f": emb}, embedded, cfg, CPU)["g"]


def test_utility_adds_zero_shot_when_the_captions_hold_every_prompt_and_counts_caption_row_0():
    """The caption texts' first rows renamed to the zero-shot prompts: the S_E accuracy is zero_shot on those
    rows of the caption table (itself checked on a hand-made grid). The first S_E pair owns caption-table row 0,
    so its caption set is {0, its second caption}."""
    from clipmem.scoring.evaluate import zero_shot_prompts
    corpus, model = make_corpus(), base_model()
    prompts = zero_shot_prompts()
    corpus.caption_texts = prompts + corpus.caption_texts[len(prompts):]
    extra = corpus.rows("extra").tolist()
    corpus.caption_index[extra[0], 0] = 0
    shapes = ["circle", "square", "triangle", "diamond", "cross", "circle"]
    for k, r in enumerate(extra):
        corpus.attributes[r] = {"objects": [{"shape": shapes[k], "colour": list(COLOURS)[k]}]}
    cfg = RunConfig(data=DataConfig(options=SourceOptions(label_key="kind")), score=SCORE)  # no probe label
    embedded = rows_of(corpus, "candidate", "independent", "extra")
    emb = Embeddings(image=clean_image(model, corpus, embedded), text=torch.empty(0),
                     caption_table=text(model, corpus, torch.arange(2 * len(corpus.attributes))))
    sets = [{0, 2 * extra[0] + 1}] + [{2 * r, 2 * r + 1} for r in extra[1:]]
    expected = {**retrieval(emb.image[8:], emb.caption_table, sets),
                **zero_shot(emb.image[8:], emb.caption_table[:len(prompts)], [corpus.attributes[r] for r in extra])}
    assert len(expected) == 6  # R@1, R@5 both ways and the two zero-shot accuracies
    assert evaluate_model(model, corpus, emb, embedded, cfg, CPU) == expected


def _probe_case(seed: int):
    """40 training points (28 a, 12 b) and 30 balanced test points, b shifted by 1.5 standard deviations."""
    gen = np.random.default_rng(seed)
    y = np.array(["a"] * 28 + ["b"] * 12)
    x = gen.normal(size=(40, 3)) * 0.02 + (y == "b")[:, None] * 0.03
    test_y = np.array(["a", "b"] * 15)
    test_x = gen.normal(size=(30, 3)) * 0.02 + (test_y == "b")[:, None] * 0.03
    return x, y, test_x, test_y


def _written_out_probe(x, y, test_x, test_y, grid, seed=0):
    """The documented protocol, step by step: a seeded fifth validates each L2 strength (the first best wins),
    the best is refitted on all the training pairs."""
    from sklearn.linear_model import LogisticRegression
    order = np.random.default_rng(seed).permutation(len(y))
    val, fit = order[:len(y) // 5], order[len(y) // 5:]
    scores = [LogisticRegression(C=c, max_iter=1000).fit(x[fit], y[fit]).score(x[val], y[val]) for c in grid]
    best = grid[scores.index(max(scores))]
    return LogisticRegression(C=best, max_iter=1000).fit(x, y).score(test_x, test_y)


@pytest.mark.parametrize("case_seed, grid", [(5, (0.1, 1.0, 10.0, 100.0)), (0, (0.1, 100.0)),
                                             (21, (0.1, 1.0, 10.0, 100.0))])
def test_the_linear_probe_picks_its_l2_strength_on_a_seeded_fifth(case_seed, grid):
    """Cases where the picked strength decides the test accuracy: the probe equals the protocol written out here,
    and another validation fifth (seed 1) or another strength would give another accuracy."""
    x, y, test_x, test_y = _probe_case(case_seed)
    expected = _written_out_probe(x, y, test_x, test_y, grid)
    got = linear_probe(torch.from_numpy(x), y.tolist(), torch.from_numpy(test_x), test_y.tolist(), inverse_l2=grid)
    assert got == pytest.approx(expected)
    assert _written_out_probe(x, y, test_x, test_y, grid, seed=1) != pytest.approx(expected) or case_seed != 5
    assert any(_written_out_probe(x, y, test_x, test_y, (c,)) != pytest.approx(expected) for c in grid)



def test_eight_training_pairs_validate_on_one_and_fit_on_seven():
    """Eight labelled training pairs: the seeded fifth is one pair, the fit set the other seven; a validation set
    of two, or a fit set of six, picks another strength here and gives another accuracy."""
    gen = np.random.default_rng(39)
    x, y = gen.normal(size=(8, 3)), np.array(["a", "b"] * 4)
    test_x = gen.normal(size=(100, 3))
    test_y = np.where(test_x[:, 0] + 0.5 * test_x[:, 1] > 0, "a", "b")
    expected = _written_out_probe(x, y, test_x, test_y, (0.1, 1.0, 10.0, 100.0))
    assert expected == pytest.approx(0.52)
    got = linear_probe(torch.from_numpy(x), y.tolist(), torch.from_numpy(test_x), test_y.tolist())
    assert got == pytest.approx(expected)


def test_the_linear_probe_is_fitted_to_convergence():
    """A strength of 100 on 40 random labels in 20 badly scaled dimensions: lbfgs needs 474 iterations, and the
    converged probe's accuracy differs from the one stopped at sklearn's default of 100."""
    from sklearn.linear_model import LogisticRegression
    gen = np.random.default_rng(0)
    scales = np.logspace(-2, 1, 20)
    x, y = gen.normal(size=(40, 20)) * scales, (gen.random(40) < 0.5).astype(int).astype(str)
    test_x, test_y = gen.normal(size=(200, 20)) * scales, (gen.random(200) < 0.5).astype(int).astype(str)
    converged = LogisticRegression(C=100.0, max_iter=10_000).fit(x, y)
    assert converged.n_iter_[0] < 1000
    got = linear_probe(torch.from_numpy(x), y.tolist(), torch.from_numpy(test_x), test_y.tolist(), inverse_l2=(100.0,))
    assert got == pytest.approx(converged.score(test_x, test_y)) == pytest.approx(0.51)


# ---------------------------------------------------------------- the null (score.py)


@torch.no_grad()
def _null_alignments(model, corpus, cfg, train_cfg, reference, rows=None, stream=NULL_STREAM):
    """Per-view cosine and contrastive scores, (len(rows), views), of `rows` (the S_E pairs) under `model`, computed
    here: the views drawn from the generator seeded with score seed + `stream` (augmentation parameters, then one
    uniform per view picking slot floor(u * count)), each view's image augmented and encoded, its caption encoded,
    and the contrastive score the log-softmax of the positive among the `reference` captions not the pair's own."""
    rows, n = corpus.rows("extra") if rows is None else rows, cfg.views
    gen = torch.Generator().manual_seed(cfg.seed + stream)
    views = sample_views(len(rows) * n, train_cfg.augment, gen)
    slot = (torch.rand(len(rows) * n, generator=gen) * corpus.caption_count[rows].repeat_interleave(n)).long()
    own = corpus.caption_index[rows]
    caps = own.repeat_interleave(n, dim=0)[torch.arange(len(rows) * n), slot]
    shift = train_cfg.augment.max_shift if train_cfg.augment.enabled else 0
    image = model.encode_image(augment(corpus.pixels[rows].repeat_interleave(n, dim=0), views, shift), normalize=True)
    cosine = (image * text(model, corpus, caps)).sum(-1)
    scale = model.logit_scale.exp()
    con = torch.empty_like(cosine)
    for v in range(len(caps)):
        negatives = [j for j in reference if j not in own[v // n].tolist()]
        logits = torch.cat([scale * cosine[v:v + 1], scale * image[v] @ text(model, corpus, torch.tensor(negatives)).T])
        con[v] = scale * cosine[v] - torch.logsumexp(logits, 0)
    return cosine.view(len(rows), n), con.view(len(rows), n)


def _expected_null(corpus, key, with_cos, without_cos, with_con, without_con, rows=None):
    rows = (corpus.rows("extra") if rows is None else rows).tolist()
    return pd.DataFrame({
        "sample_id": [corpus.ids[r] for r in rows], "split": ["extra"] * len(rows), "truth": ["clean"] * len(rows),
        "null_for": key,
        "clipmem_raw": (with_cos.mean(1) - without_cos.mean(1)).numpy(),
        "clipmem_contrastive_raw": (with_con.mean(1) - without_con.mean(1)).numpy(),
        "align_f": with_cos.mean(1).numpy(), "align_g": without_cos.mean(1).numpy(),
        "contrastive_f": with_con.mean(1).numpy(), "contrastive_g": without_con.mean(1).numpy(),
        "views_f": list(with_cos.numpy()), "views_g": list(without_cos.numpy())})


def _assert_null_frames_equal(got, expected):
    assert list(got.columns) == list(expected.columns) and len(got) == len(expected)
    for column in got.columns:
        if column.startswith("views_"):
            np.testing.assert_allclose(np.stack(got[column]), np.stack(expected[column]), atol=2e-5, rtol=0)
        elif got[column].dtype.kind == "f":
            np.testing.assert_allclose(got[column].to_numpy(), expected[column].to_numpy(), atol=2e-5, rtol=0)
        else:
            assert got[column].tolist() == expected[column].tolist(), column


def test_the_published_null_scores_each_extra_pair_as_a_candidate_then_as_an_independent_pair():
    """Two different models f, g: the S_E pairs' "candidate" rows are A_f - A_g and their "independent" rows
    A_g - A_f, every number computed here from the models' encodings of the null's own seeded views."""
    corpus, cfg = make_corpus(), ScoreConfig(views=3, batch_size=5, seed=7)
    models = {"f": base_model(0), "g": base_model(1)}
    every = corpus.caption_index[corpus.rows("extra")].flatten().tolist()  # 12 captions, fewer than 256: all
    (cos_f, con_f), (cos_g, con_g) = (_null_alignments(m, corpus, cfg, AUGMENT, every) for m in models.values())
    assert (cos_f - cos_g).abs().mean(1).min() > 1e-3  # f and g differ on every pair
    # f's table holds every caption (used as it is), g's only caption 0 (it must be re-encoded)
    tables = {"f": encode_captions(models["f"], corpus, None, 64, CPU),
              "g": encode_captions(models["g"], corpus, torch.tensor([0]), 64, CPU)}
    for given in ({}, tables):
        null = score_null(models, corpus, cfg, AUGMENT, CPU, tables=given or None)
        expected = pd.concat([_expected_null(corpus, "candidate", cos_f, cos_g, con_f, con_g),
                              _expected_null(corpus, "independent", cos_g, cos_f, con_g, con_f)], ignore_index=True)
        _assert_null_frames_equal(null, expected)
    assert null["views_f"].iloc[0].dtype == np.float32 and null["views_g"].iloc[0].dtype == np.float32
    assert null.index.tolist() == list(range(12))
    # no S_E pairs: an empty frame with the null's columns
    corpus.split = ["shared" if s == "extra" else s for s in corpus.split]
    empty = score_null(models, corpus, cfg, AUGMENT, CPU)
    assert len(empty) == 0 and list(empty.columns) == list(NULL_COLUMNS)


def test_a_kfold_null_has_one_key_per_fold_with_the_other_fold_models_as_with():
    """The same with three fold models, key fold{k} "with" the other two, and a reference set of 8 of the 12 S_E
    captions (reference_set's seeded sample, tested above)."""
    corpus, cfg = make_corpus(seed=3), ScoreConfig(views=2, batch_size=64, seed=5, reference_captions=8)
    corpus.fold = torch.tensor([-1 if s == "extra" else r % 3 for r, s in enumerate(corpus.split)])
    models = {f"fold{k}": base_model(k) for k in range(3)}
    reference = reference_set(corpus, 8, seed=5).tolist()
    assert reference != reference_set(corpus, 8, seed=0).tolist()
    cos_, con_ = zip(*(_null_alignments(m, corpus, cfg, NO_AUGMENT, reference) for m in models.values()))
    null = score_null(models, corpus, cfg, NO_AUGMENT, CPU)
    expected = pd.concat([
        _expected_null(corpus, f"fold{k}", sum(cos_[j] for j in range(3) if j != k) / 2, cos_[k],
                       sum(con_[j] for j in range(3) if j != k) / 2, con_[k]) for k in range(3)], ignore_index=True)
    _assert_null_frames_equal(null, expected)


def test_null_roles_mark_the_models_that_train_on_each_keys_pairs():
    corpus = make_corpus()
    roles = null_roles(corpus, ("f", "g"))
    assert list(roles) == ["candidate", "independent"]
    assert roles["candidate"].tolist() == [True, False] and roles["independent"].tolist() == [False, True]
    with pytest.raises(ValueError, match=r"scores models \('f', 'g'\), not \('g', 'f'\)"):
        null_roles(corpus, ("g", "f"))
    corpus.fold = torch.zeros(len(corpus.split), dtype=torch.long)
    roles = null_roles(corpus, ("fold0", "fold1", "fold2", "fold3"))
    assert list(roles) == ["fold0", "fold1", "fold2", "fold3"]
    assert roles["fold2"].tolist() == [True, True, False, True]


def _replica_frame(raw, views, ids=("a", "b")):
    return pd.DataFrame({"sample_id": list(ids), "split": ["candidate", "independent"], "n_captions": [2, 3],
                         "clipmem_raw": raw, "align_f": [raw[0] + 1.0, raw[1] + 2.0],
                         "views_f": [np.array(v, dtype=np.float32) for v in views]})


def test_mean_over_replicas_averages_every_float_column_and_the_views_by_hand():
    frames = [_replica_frame([0.1, -0.4], [[1.0, 2.0], [0.0, 4.0]]),
              _replica_frame([0.3, 0.2], [[3.0, 0.0], [2.0, 2.0]]),
              _replica_frame([0.8, -0.1], [[2.0, 1.0], [1.0, 0.0]])]
    frames[1]["split"] = ["x", "y"]  # not a float: replica 0's
    frames[2]["n_captions"] = [7, 7]
    out = mean_over_replicas(frames, spread=True)
    np.testing.assert_allclose(out["clipmem_raw"], [0.4, -0.1], atol=1e-12)
    np.testing.assert_allclose(out["align_f"], [1.4, 1.9], atol=1e-12)
    np.testing.assert_allclose(np.stack(out["views_f"]), [[2.0, 1.0], [1.0, 2.0]], atol=1e-6)
    assert out["views_f"].iloc[0].dtype == np.float32
    assert out["split"].tolist() == ["candidate", "independent"] and out["n_captions"].tolist() == [2, 3]
    # sample sd (n - 1): pair a 0.1, 0.3, 0.8 around 0.4: sqrt((0.09 + 0.01 + 0.16) / 2); pair b -0.4, 0.2, -0.1
    np.testing.assert_allclose(out["clipmem_raw_sd"], [np.sqrt(0.13), np.sqrt(0.09 + 0.09 + 0.0) / np.sqrt(2)],
                               atol=1e-12)
    assert "clipmem_raw_sd" not in mean_over_replicas(frames)
    assert frames[0]["clipmem_raw"].tolist() == [0.1, -0.4]  # the inputs are left as they were
    assert mean_over_replicas(frames[:1]) is frames[0]
    with pytest.raises(ValueError, match="^replica frames must hold the same pairs and columns in the same order$"):
        mean_over_replicas([frames[0], _replica_frame([0.0, 0.0], [[0, 0], [0, 0]], ids=("a", "c"))])
    with pytest.raises(ValueError, match="same pairs and columns in the same order"):
        mean_over_replicas([frames[0], frames[1][list(reversed(frames[1].columns))]])


def test_score_run_gives_every_column_computed_by_hand():
    """Two different models, augmented views, a reference set of 8 of the 12 S_E captions and a candidate pair with
    one caption (index 0, padded with -1): every score column of the scored pairs computed here, f "with" for S_C
    and g "with" for S_I; a part from 0 to the end (or beyond) is the whole run."""
    corpus, cfg = make_corpus(seed=2), ScoreConfig(views=2, batch_size=64, seed=5, reference_captions=8)
    lone = corpus.rows("candidate")[0]
    corpus.caption_index[lone] = torch.tensor([0, -1])
    corpus.caption_count[lone] = 1
    corpus.captions[lone] = [corpus.caption_texts[0]]
    models = {"f": base_model(0), "g": base_model(1)}
    result = score_run(models, corpus, cfg, AUGMENT, CPU)
    frame, scored = result.frame, scored_rows(corpus)
    reference = reference_set(corpus, 8, seed=5).tolist()
    (cos_f, con_f), (cos_g, con_g) = (_null_alignments(m, corpus, cfg, AUGMENT, reference, rows=scored, stream=0)
                                      for m in models.values())
    candidate = torch.tensor([corpus.split[int(r)] == "candidate" for r in scored])[:, None]
    with_cos, without_cos = torch.where(candidate, cos_f, cos_g), torch.where(candidate, cos_g, cos_f)
    with_con, without_con = torch.where(candidate, con_f, con_g), torch.where(candidate, con_g, con_f)
    expected = _expected_null(corpus, "", with_cos, without_cos, with_con, without_con, rows=scored).drop(
        columns=["sample_id", "split", "truth", "null_for"])
    _assert_null_frames_equal(frame[list(expected.columns)], expected)
    assert frame["views_f"].iloc[0].dtype == np.float32 and frame["views_g"].iloc[0].dtype == np.float32
    np.testing.assert_allclose(frame["clipmem"], minmax(expected["clipmem_raw"].to_numpy()), atol=1e-5)
    np.testing.assert_allclose(frame["clipmem_contrastive"], minmax(expected["clipmem_contrastive_raw"].to_numpy()),
                               atol=1e-5)
    # CLIPScore baseline: 1 - the mean cosine of the clean image with each of the pair's captions (the lone one's one)
    own = [corpus.caption_index[r][corpus.caption_index[r] >= 0] for r in scored]
    by_model = {m: torch.stack([1 - cos(clean_image(models[m], corpus, torch.tensor([int(r)])),
                                        text(models[m], corpus, caps)).mean() for r, caps in zip(scored, own)])
                for m in models}
    for name, column in (("f", "clipscore_f"), ("g", "clipscore_g")):
        seen = by_model["f"] if name == "f" else by_model["g"]
        unseen = by_model["g"] if name == "f" else by_model["f"]
        np.testing.assert_allclose(frame[column], torch.where(candidate[:, 0], seen, unseen).numpy(), atol=1e-5)
    assert result.names == ("f", "g") and result.part is None
    assert result.embedded.tolist() == scored.tolist() + corpus.rows("extra").tolist()
    table = text(models["g"], corpus, torch.arange(len(corpus.tokens)))
    torch.testing.assert_close(result.clean["g"].caption_table, table)
    torch.testing.assert_close(result.clean["g"].text, table[corpus.caption_index[result.embedded, 0]])
    for part in (slice(0, len(scored)), slice(0, 100)):
        whole = score_run(models, corpus, cfg, AUGMENT, CPU, part=part)
        assert whole.part is None and whole.frame["clipmem_raw"].tolist() == frame["clipmem_raw"].tolist()
    head = score_run(models, corpus, cfg, AUGMENT, CPU, part=slice(0, 3), embed=False)
    assert head.clean is None and head.embedded.tolist() == scored[:3].tolist() and head.part == slice(0, 3)
    # a part encodes only what it reads: its views' captions, the reference set, its pairs' captions and the S_S
    # first captions the encoder-swap check fits on
    _, view_captions = view_draws(corpus, scored, cfg, AUGMENT, part=slice(0, 3))
    needed = set(view_captions.tolist() + reference + corpus.caption_index[scored[:3]].flatten().tolist()
                 + corpus.caption_index[corpus.rows("shared"), 0].tolist()) - {-1}
    assert set(torch.nonzero(head.tables["f"].rows >= 0).flatten().tolist()) == needed
    with pytest.raises(ValueError, match=r"^clean embeddings \(embed=True\) are made for the whole scored set, "
                                         r"not for a part$"):
        score_run(models, corpus, cfg, AUGMENT, CPU, part=slice(0, 3))


def test_a_kfold_run_names_each_pairs_fold():
    corpus, cfg = make_corpus(seed=3), ScoreConfig(views=1, batch_size=64)
    corpus.fold = torch.tensor([-1 if s == "extra" else r % 3 for r, s in enumerate(corpus.split)])
    frame = score_run({f"fold{k}": base_model(k) for k in range(3)}, corpus, cfg, NO_AUGMENT, CPU).frame
    assert frame["fold"].tolist() == corpus.fold[scored_rows(corpus)].tolist()

"""Known-answer tests for what mutation testing (make mutation, docs/testing.md) found unpinned in the metrics
and the split plan: each case is worked out by hand in its comment."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clipmem.scoring.errors import ClipmemError
from clipmem.scoring.metrics import Ranking, detection, precision_at_k, single_auroc
from clipmem.scoring.splits import SplitPlan, SplitSizes, plan_kfold

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

import json

import pytest

from clipmem.scoring.errors import ClipmemError
from clipmem.scoring.columns import SPLITS
from clipmem.scoring.splits import SplitPlan, SplitSizes, plan_splits


def _data(n=100, faulty=10):
    ids = [f"s{i}" for i in range(n)]
    truth = ["swapped" if i < faulty else "clean" for i in range(n)]
    return ids, truth


def test_sizes_disjoint_and_faults_scored():
    ids, truth = _data()
    plan = plan_splits(ids, truth, SplitSizes(60, 15, 15, 10), seed=0)
    assert plan.sizes() == {"shared": 60, "candidate": 15, "independent": 15, "extra": 10}
    members = [sid for name in SPLITS for sid in plan.ids[name]]
    assert len(members) == len(set(members)) == 100
    faulty = {f"s{i}" for i in range(10)}
    assert faulty <= set(plan.ids["candidate"]) | set(plan.ids["independent"])
    assert abs(len(faulty & set(plan.ids["candidate"])) - len(faulty & set(plan.ids["independent"]))) <= 1


def test_fractions_and_seed_reproducible(tmp_path):
    ids, truth = _data()
    a = plan_splits(ids, truth, SplitSizes(0.6, 0.1, 0.1, 0.1), seed=7)
    assert a.sizes() == {"shared": 60, "candidate": 10, "independent": 10, "extra": 10}
    (tmp_path / "split.json").write_text(json.dumps(a.to_json()))
    assert SplitPlan.load(tmp_path / "split.json") == a == plan_splits(ids, truth, SplitSizes(0.6, 0.1, 0.1, 0.1), 7)
    assert plan_splits(ids, truth, SplitSizes(0.6, 0.1, 0.1, 0.1), 8) != a


def test_bad_sizes():
    ids, truth = _data()
    with pytest.raises(ClipmemError, match="need 110 pairs but the dataset has 100"):
        plan_splits(ids, truth, SplitSizes(80, 10, 10, 10), 0)
    with pytest.raises(ClipmemError, match="empty dataset"):
        plan_splits([], [], SplitSizes(), 0)
    with pytest.raises(ClipmemError, match="carry a fault tag"):
        plan_splits(ids, truth, SplitSizes(80, 4, 4, 0), 0)


def test_malformed_plan_file(tmp_path):
    (tmp_path / "split.json").write_text("{}")
    with pytest.raises(ClipmemError, match="malformed"):
        SplitPlan.load(tmp_path / "split.json")


def test_fractions_summing_to_one_use_every_pair():
    """0.55,0.15,0.15,0.15 of 785 pairs: exact shares 431.75 and 117.75 (x3); the floors (431 + 3 x 117 = 782)
    leave 3 pairs, which go to the largest remainders (all .75: the first three splits)."""
    counts = SplitSizes(0.55, 0.15, 0.15, 0.15).resolve(785)
    assert counts == {"shared": 432, "candidate": 118, "independent": 118, "extra": 117}
    ids, truth = _data(785, faulty=20)
    assert plan_splits(ids, truth, SplitSizes(0.55, 0.15, 0.15, 0.15), 0).sizes() == counts
    # never more than the data, never more than a pair off each exact share
    for n in range(10, 400):
        for sizes in ((0.55, 0.15, 0.15, 0.15), (0.7, 0.1, 0.1, 0.1), (0.25, 0.25, 0.25, 0.25), (0.3, 0.3, 0.3, 0.1)):
            got = SplitSizes(*sizes).resolve(n)
            assert sum(got.values()) == n
            assert all(abs(got[name] - share * n) < 1 for name, share in zip(SPLITS, sizes))


def test_too_large_fractions_are_refused_as_fractions():
    with pytest.raises(ClipmemError) as info:
        SplitSizes(0.7, 0.2, 0.2, 0.1).resolve(100)
    assert str(info.value) == ("split fractions 0.7,0.2,0.2,0.1 sum to 1.2, more than the whole dataset; "
                               "give fractions that sum to at most 1")
    with pytest.raises(ClipmemError, match="lower the counts"):
        SplitSizes(0.5, 30, 30, 0.1).resolve(100)
    with pytest.raises(ClipmemError, match="neither a whole count nor a fraction"):
        SplitSizes(60, 2.5, 10, 10).resolve(100)

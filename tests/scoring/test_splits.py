import pytest

from scoring.errors import ClipmemError
from scoring.splits import SPLIT_NAMES, SplitPlan, SplitSizes, plan_splits


def _data(n=100, faulty=10):
    ids = [f"s{i}" for i in range(n)]
    truth = ["swapped" if i < faulty else "clean" for i in range(n)]
    return ids, truth


def test_sizes_disjoint_and_faults_scored():
    ids, truth = _data()
    plan = plan_splits(ids, truth, SplitSizes(60, 15, 15, 10), seed=0)
    assert plan.sizes() == {"shared": 60, "candidate": 15, "independent": 15, "extra": 10}
    members = [sid for name in SPLIT_NAMES for sid in plan.ids[name]]
    assert len(members) == len(set(members)) == 100
    faulty = {f"s{i}" for i in range(10)}
    assert faulty <= set(plan.ids["candidate"]) | set(plan.ids["independent"])
    assert abs(len(faulty & set(plan.ids["candidate"])) - len(faulty & set(plan.ids["independent"]))) <= 1


def test_fractions_and_seed_reproducible(tmp_path):
    ids, truth = _data()
    a = plan_splits(ids, truth, SplitSizes(0.6, 0.1, 0.1, 0.1), seed=7)
    assert a.sizes() == {"shared": 60, "candidate": 10, "independent": 10, "extra": 10}
    a.save(tmp_path / "split.json")
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

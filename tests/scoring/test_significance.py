"""clipmem.scoring.significance against constructed nulls, hand computations, known laws and a second formula."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from clipmem.scoring.errors import ClipmemError
from clipmem.scoring import significance
from clipmem.scoring.significance import (LARGE_N, LEVEL, N_BOOT, P_FLOOR, TAIL_EXCEEDANCES, Interval,
                                          add_significance, bh_q_values, bootstrap_block_means, bootstrap_difference,
                                          bootstrap_mean, flagged_by_truth, group_means, jsonable, null_p_values,
                                          tower_verdicts, verdict, view_interval)

# ---------------------------------------------------------------------------------------------- p-values


@pytest.mark.parametrize("k", [TAIL_EXCEEDANCES, 11, 57, 299, 300])
def test_observed_at_the_kth_largest_null_value_gets_1_plus_k_over_m_plus_1(k):
    m = 300
    null = np.random.default_rng(k).permutation(np.arange(1.0, m + 1))  # distinct values 1..300, shuffled
    kth_largest = m + 1 - k
    assert null_p_values(np.array([kth_largest]), null)[0] == pytest.approx((1 + k) / (m + 1), abs=1e-15)


def test_ties_count_against_the_observed_value_and_below_the_null_p_is_one():
    null = np.array([0.0] * 20 + [1.0] * 30)  # 30 values tie at 1.0: all reach x = 1.0
    p = null_p_values(np.array([1.0, -5.0, 0.5]), null)
    assert p.tolist() == pytest.approx([31 / 51, 1.0, 31 / 51])


def test_nan_observed_gets_nan_and_an_empty_null_is_refused():
    assert np.isnan(null_p_values(np.array([np.nan]), np.arange(50.0))[0])
    with pytest.raises(ClipmemError, match="no finite"):
        null_p_values(np.array([1.0]), np.array([np.nan]))


@pytest.mark.parametrize("law", ["exponential", "pareto"])
def test_fitted_tail_recovers_a_known_tail_probability_beyond_the_empirical_range(law):
    # the null is drawn from a law whose survival is known; x sits where the true p is 1/(3m), three times below
    # the empirical resolution 1/(m+1). The fitted tail must land within a factor 4 of the truth on every one of
    # 10 draws, and within a factor 1.6 in the median (measured: 0.3-2.3 and 1.2-1.3)
    m = 2000
    true_p = 1 / (3 * m)
    x = -math.log(true_p) if law == "exponential" else true_p ** (-1 / 3)  # Pareto(3) on [1, inf): P(N>=x)=x^-3
    ratios = []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        null = rng.exponential(size=m) if law == "exponential" else rng.pareto(3, size=m) + 1
        assert (null >= x).sum() < TAIL_EXCEEDANCES  # so the tail, not the empirical count, answers
        ratios.append(null_p_values(np.array([x]), null)[0] / true_p)
    assert min(ratios) > 1 / 4 and max(ratios) < 4
    assert 1 / 1.6 < float(np.median(ratios)) < 1.6


def test_a_light_tail_errs_towards_larger_p():
    # a normal null has no finite-sample GPD tail of its own; the fit may say "bounded", which would give p = 0
    # past the bound. The exponential floor on the shape keeps p above the true normal tail at 1/(10 m)
    m = 1000
    true_p = 1 / (10 * m)
    x = stats.norm.isf(true_p)
    for seed in range(5):
        null = np.random.default_rng(seed).normal(size=m)
        assert null_p_values(np.array([x]), null)[0] > true_p


def test_p_values_are_monotone_never_zero_never_above_one():
    rng = np.random.default_rng(3)
    for null in (rng.normal(0.036, 0.039, size=300), rng.uniform(size=25), np.arange(5.0)):
        grid = np.linspace(null.min() - 1, null.max() + 10, 4001)
        p = null_p_values(grid, null)
        assert np.all(np.diff(p) <= 0)
        assert p.min() >= P_FLOOR and p.max() <= 1.0
        assert p[0] == 1.0


def test_a_null_too_small_to_fit_keeps_the_empirical_value():
    # 5 values: no tail of 10 can be fitted; beyond the largest the p is 1 / (m + 1)
    assert null_p_values(np.array([100.0, 3.5]), np.arange(5.0)).tolist() == pytest.approx([1 / 6, 2 / 6])


def test_tail_p_goes_below_the_empirical_resolution():
    null = np.random.default_rng(0).normal(size=300)
    assert null_p_values(np.array([null.max() + 1.0]), null)[0] < 1 / 301


# ---------------------------------------------------------------------------------------------- q-values


def test_bh_hand_worked():
    # sorted p: 0.005 (rank 1), 0.01 (2), 0.03 (3), 0.04 (4), 0.5 (5); p*m/rank: .025 .025 .05 .05 .5;
    # running minimum from the largest rank down: .025 .025 .05 .05 .5
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.5])
    assert bh_q_values(p).tolist() == pytest.approx([0.025, 0.05, 0.05, 0.025, 0.5])


def _step_up(p: np.ndarray) -> np.ndarray:
    """q_i = min(1, min over p_j >= p_i of p_j * m / #{k: p_k <= p_j}): the step-up definition, pair by pair."""
    m = len(p)
    return np.array([min(1.0, min(pj * m / (p <= pj).sum() for pj in p if pj >= pi)) for pi in p])


@pytest.mark.parametrize("seed", range(3))
def test_bh_matches_the_step_up_definition_and_scipy(seed):
    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.uniform(size=60), rng.uniform(0, 0.01, size=20), [0.02, 0.02, 0.02]])  # with ties
    q = bh_q_values(p)
    assert q == pytest.approx(_step_up(p), abs=1e-15)
    assert q == pytest.approx(stats.false_discovery_control(p, method="bh"), abs=1e-12)


def test_bh_leaves_nan_out_of_the_family():
    q = bh_q_values(np.array([0.01, np.nan, 0.04]))
    assert np.isnan(q[1]) and q[[0, 2]].tolist() == pytest.approx([0.02, 0.04])


# ---------------------------------------------------------------------------------------------- intervals


def test_view_interval_is_the_student_t_interval():
    # views 1, 2, 3, 4: mean 2.5, sd sqrt(5/3), se sd/2 = 0.6454972; t(0.975, 3 df) = 3.1824463 (tables)
    lo, hi = view_interval(np.array([[1.0, 2.0, 3.0, 4.0], [7.0, 7.0, 7.0, 7.0]]))
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2
    assert lo.tolist() == pytest.approx([2.5 - half, 7.0])
    assert hi.tolist() == pytest.approx([2.5 + half, 7.0])
    one_lo, one_hi = view_interval(np.array([[0.25], [-1.0]]))
    assert one_lo.tolist() == one_hi.tolist() == [0.25, -1.0]


def test_bootstrap_interval_of_a_normal_mean_covers_about_95_percent():
    # 200 samples of 50 from N(1, 2): a 95% interval should cover 1 on 95% of them (binomial sd 1.5 points);
    # the percentile bootstrap runs a little narrow at n = 50, so [0.88, 0.99]
    covered = 0
    for seed in range(200):
        values = np.random.default_rng(1000 + seed).normal(1.0, 2.0, size=50)
        interval = bootstrap_mean(values, n_boot=500, seed=seed)
        assert interval.estimate == pytest.approx(values.mean())
        covered += interval.lo <= 1.0 <= interval.hi
    assert 0.88 <= covered / 200 <= 0.99


def test_bootstrap_interval_width_matches_the_normal_theory_width():
    # n = 400 from N(0, 1): the 95% interval's width is close to 2 * 1.96 / sqrt(400) = 0.196
    interval = bootstrap_mean(np.random.default_rng(5).normal(size=400), n_boot=4000)
    assert interval.hi - interval.lo == pytest.approx(0.196, rel=0.1)


Z_975 = 1.959963984540054  # the standard normal's 97.5% quantile, from tables


def _standardized(n: int, seed: int) -> np.ndarray:
    """n values with sample mean exactly 0 and sample sd (ddof=1) exactly 1 (up to rounding)."""
    z = np.random.default_rng(seed).normal(size=n)
    return (z - z.mean()) / z.std(ddof=1)


def test_large_n_interval_is_mean_plus_minus_z_sd_over_root_n_by_hand():
    # 40,000 values of mean 0.3 and sd 2: 0.3 +- 1.959964 * 2 / 200 = [0.2804004, 0.3195996]
    values = 0.3 + 2.0 * _standardized(40_000, seed=3)
    interval = bootstrap_mean(values)
    assert (interval.estimate, interval.lo, interval.hi) == pytest.approx(
        (0.3, 0.3 - Z_975 * 2.0 / 200, 0.3 + Z_975 * 2.0 / 200), abs=1e-12)
    # a paired difference goes through the same path: a - b has mean 0.05 and sd 0.5
    b = np.random.default_rng(4).normal(5.0, 10.0, size=40_000)
    diff = bootstrap_difference(b + 0.05 + 0.5 * _standardized(40_000, seed=5), b)
    assert (diff.estimate, diff.lo, diff.hi) == pytest.approx(
        (0.05, 0.05 - Z_975 * 0.5 / 200, 0.05 + Z_975 * 0.5 / 200), abs=1e-10)


def test_large_n_normal_interval_agrees_with_the_percentile_bootstrap():
    # skewed values (exponential, skewness 2) just above LARGE_N: the normal interval and the percentile bootstrap
    # of 2,000 resamples agree to within 5% of the interval's width (the bootstrap's own Monte Carlo scatter at the
    # ends is about 1.5% of the width, the skewness term about 0.2%)
    values = np.sort(np.random.default_rng(6).exponential(1.0, size=LARGE_N + 1))
    normal = bootstrap_mean(values)
    resampled = significance._percentile_bootstrap(values, N_BOOT, 0, LEVEL)
    width = resampled.hi - resampled.lo
    assert normal.estimate == resampled.estimate
    assert abs(normal.lo - resampled.lo) < 0.05 * width and abs(normal.hi - resampled.hi) < 0.05 * width
    # and the normal path was taken: its ends are the formula's, which the bootstrap's are not exactly
    half = Z_975 * values.std(ddof=1) / math.sqrt(LARGE_N + 1)
    assert (normal.lo, normal.hi) == pytest.approx((values.mean() - half, values.mean() + half), abs=1e-12)
    assert (resampled.lo, resampled.hi) != pytest.approx((normal.lo, normal.hi), abs=1e-9)


def test_the_normal_path_starts_just_above_large_n(monkeypatch):
    monkeypatch.setattr(significance, "LARGE_N", 100)
    values = np.random.default_rng(7).normal(size=101)
    at_bound = bootstrap_mean(values[:100])
    assert at_bound == significance._percentile_bootstrap(np.sort(values[:100]), N_BOOT, 0, LEVEL)
    above = bootstrap_mean(values)
    half = Z_975 * values.std(ddof=1) / math.sqrt(101)
    assert (above.lo, above.hi) == pytest.approx((values.mean() - half, values.mean() + half), abs=1e-12)


def test_block_means_above_large_n_are_each_rows_normal_interval():
    # three rows over 30,000 pairs: sd 1 around 0.1, the same shifted by 0.25, and a constant 0.5
    n = 30_000
    z = _standardized(n, seed=8)
    lo, hi = bootstrap_block_means(np.stack([0.1 + z, 0.35 + z, np.full(n, 0.5)]))
    half = Z_975 / math.sqrt(n)
    assert lo == pytest.approx([0.1 - half, 0.35 - half, 0.5], abs=1e-12)
    assert hi == pytest.approx([0.1 + half, 0.35 + half, 0.5], abs=1e-12)


def test_paired_difference_cancels_what_the_pairs_share():
    shared = np.random.default_rng(0).normal(0, 10, size=100)  # huge spread common to both sides
    diff = bootstrap_difference(shared + 0.125, shared)
    assert (diff.estimate, diff.lo, diff.hi) == pytest.approx((0.125, 0.125, 0.125))
    assert diff.excludes_zero
    with pytest.raises(ClipmemError, match="same pairs"):
        bootstrap_difference([1.0, 2.0], [1.0])


def test_bootstrap_edge_cases_and_json():
    assert bootstrap_mean([np.nan, 0.5]) == Interval(0.5, 0.5, 0.5)
    empty = bootstrap_mean([])
    assert math.isnan(empty.estimate) and empty.to_json() == {"estimate": None, "lo": None, "hi": None}
    assert Interval(1.0, 0.5, 2.0).to_json() == {"estimate": 1.0, "lo": 0.5, "hi": 2.0}
    assert not Interval(0.0, -0.1, 0.1).excludes_zero and Interval(-0.2, -0.3, -0.1).excludes_zero


# ---------------------------------------------------------------------------------------------- verdicts


def test_verdict_wording_both_ways_and_undecided():
    assert (verdict("text side", "image side", Interval(0.0021, 0.0008, 0.0034))
            == "text side > image side (difference 0.0021, 95% CI 0.0008 to 0.0034)")
    # a negative difference is stated the other way round, with the signs flipped
    assert (verdict("text side", "image side", Interval(-0.0021, -0.0034, -0.0008))
            == "image side > text side (difference 0.0021, 95% CI 0.0008 to 0.0034)")
    assert (verdict("text side", "image side", Interval(0.0003, -0.0009, 0.0015))
            == "text side and image side are not distinguishable at this run's size "
               "(difference 0.0003, 95% CI -0.0009 to 0.0015)")
    # small values keep two significant digits; a difference that rounds to 0 has no sign
    assert verdict("a", "b", Interval(-1e-19, -0.00023, 0.00027)) == \
        "a and b are not distinguishable at this run's size (difference 0.00000, 95% CI -0.00023 to 0.00027)"
    assert verdict("a", "b", Interval(0.00021, 0.00008, 0.00034)) == \
        "a > b (difference 0.00021, 95% CI 0.00008 to 0.00034)"


def test_tower_verdicts_on_constructed_towers():
    rng = np.random.default_rng(0)
    image = rng.normal(0, 0.01, size=200)
    wobble = np.tile([0.001, -0.001], 100)  # mean exactly 0 over the "clean" pairs, and over the "swapped" ones
    frame = pd.DataFrame({
        "truth": ["clean"] * 100 + ["swapped"] * 100,
        "mem_image_raw": image,
        # swapped pairs: text side exactly 0.004 above image side; clean: the same up to a zero-mean wobble
        "mem_text_raw": image + np.where(np.arange(200) < 100, wobble, 0.004),
    })
    rows = {row["truth"]: row for row in tower_verdicts(frame, n_boot=500)}
    assert list(rows) == ["clean", "swapped", "all"]
    assert rows["swapped"]["sides"]["verdict"].startswith("text side > image side (difference 0.0040,")
    assert rows["swapped"]["sides"]["a_exceeds_b"]
    assert rows["clean"]["sides"]["difference"].estimate == pytest.approx(0.0, abs=1e-15)
    assert "not distinguishable" in rows["clean"]["sides"]["verdict"]
    assert not rows["clean"]["sides"]["a_exceeds_b"] and not rows["clean"]["sides"]["b_exceeds_a"]
    assert rows["all"]["sides"]["a"].estimate == pytest.approx(frame["mem_text_raw"].mean())
    assert "swaps" not in rows["all"]  # the run has no swap columns
    assert tower_verdicts(frame.drop(columns="mem_text_raw")) == []


def test_group_means_per_tag_and_all():
    frame = pd.DataFrame({"truth": ["b", "a", "b", "a"], "clipmem_raw": [1.0, 2.0, 3.0, 2.0]})
    rows = group_means(frame, ["clipmem_raw", "not_there"], n_boot=200)
    assert [(r["truth"], r["pairs"], r["clipmem_raw"].estimate) for r in rows] == \
        [("a", 2, 2.0), ("b", 2, 2.0), ("all", 4, 2.0)]
    assert rows[0]["clipmem_raw"] == Interval(2.0, 2.0, 2.0)  # both a-values equal: no spread
    assert "not_there" not in rows[0]
    assert jsonable(rows[0]) == {"truth": "a", "pairs": 2, "clipmem_raw": {"estimate": 2.0, "lo": 2.0, "hi": 2.0}}


# ---------------------------------------------------------------------------------------------- a run's scores

# S_E drifts d_i = (i - 30) / 128, i = 0..99 (dyadic: exact in floats). The candidate null is A_f - A_g = d, the
# independent null A_g - A_f = -d of the same pairs
_D = (np.arange(100) - 30) / 128


def _null(keys_and_values: dict[str, np.ndarray]) -> pd.DataFrame:
    parts = [pd.DataFrame({"sample_id": [f"e{i}" for i in range(len(v))], "split": "extra", "truth": "clean",
                           "null_for": key, "clipmem_raw": v, "clipmem_contrastive_raw": 2 * v})
             for key, v in keys_and_values.items()]
    return pd.concat(parts, ignore_index=True)


def _scores(split, raw, contrastive, views_f, views_g, truth=None, **extra) -> pd.DataFrame:
    n = len(split)
    return pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "split": split,
                         "truth": truth or ["clean"] * n, "clipmem_raw": raw, "clipmem_contrastive_raw": contrastive,
                         "views_f": list(np.asarray(views_f, float)), "views_g": list(np.asarray(views_g, float)),
                         **extra})


def test_add_significance_tests_each_split_against_its_own_direction():
    views_g = np.zeros((3, 4))
    views_f = np.array([[1.0, 2.0, 3.0, 4.0], [2.5] * 4, [0.0, 0.0, 0.0, 0.0]]) / 128
    scores = _scores(["candidate", "independent", "candidate"], [50 / 128, 10 / 128, 500 / 128],
                     [100 / 128, 20 / 128, -500 / 128], views_f, views_g)
    out = add_significance(scores, _null({"candidate": _D, "independent": -_D}), fdr=0.3)
    # candidate 50/128: #{i - 30 >= 50} = #{i >= 80} = 20 -> 21/101; independent 10/128: #{30 - i >= 10} = 21
    # -> 22/101 (against the candidate null it would be #{i >= 40} = 60 -> 61/101); 500/128 lies past the null
    p = out["clipmem_p"].to_numpy()
    assert p[:2].tolist() == pytest.approx([21 / 101, 22 / 101])
    assert P_FLOOR <= p[2] < 1 / 101
    # contrastive null is 2d (and -2d): the same counts for twice the values; -500/128 lies below all: p = 1
    assert out["clipmem_contrastive_p"].tolist()[:3] == pytest.approx([21 / 101, 22 / 101, 1.0])
    # BH over the 3 pairs by hand: sorted p3 < 21/101 < 22/101 -> q = (p3*3, 21/101*3/2, 22/101*3/3) with the
    # running minimum from the top: 22/101 caps 31.5/101
    assert out["clipmem_q"].tolist() == pytest.approx([22 / 101, 22 / 101, 3 * p[2]])
    assert out["memorized"].tolist() == [True, True, True]
    assert add_significance(scores, _null({"candidate": _D, "independent": -_D}), fdr=0.2)["memorized"].tolist() \
        == [False, False, True]
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2 / 128
    assert out["clipmem_raw_lo"].tolist() == pytest.approx([2.5 / 128 - half, 2.5 / 128, 0.0])
    assert out["clipmem_raw_hi"].tolist() == pytest.approx([2.5 / 128 + half, 2.5 / 128, 0.0])
    assert "clipmem_p" not in scores  # the input frame is left as it was


def test_add_significance_uses_each_folds_null_in_a_kfold_run():
    # fold0's null is d, fold1's is d + 1: the same raw 50/128 gets 21/101 under fold0 and, under fold1,
    # #{i - 30 + 128 >= 50} = #{i >= -48} = all 100 -> 101/101
    scores = _scores(["candidate", "candidate"], [50 / 128, 50 / 128], [0.0, 0.0], np.zeros((2, 2)),
                     np.zeros((2, 2)), fold=[0, 1])
    out = add_significance(scores, _null({"fold0": _D, "fold1": _D + 1}), fdr=0.05)
    assert out["clipmem_p"].tolist() == pytest.approx([21 / 101, 1.0])


def test_add_significance_refuses_a_missing_null_and_a_bad_fdr():
    scores = _scores(["candidate", "independent"], [0.0, 0.0], [0.0, 0.0], np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ClipmemError, match="no rows for independent"):
        add_significance(scores, _null({"candidate": _D}), fdr=0.05)
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ClipmemError, match="between 0 and 1"):
            add_significance(scores, _null({"candidate": _D, "independent": -_D}), fdr=bad)


def test_flagged_by_truth_counts():
    frame = pd.DataFrame({"truth": ["swapped", "clean", "swapped", "clean", "clean"],
                          "memorized": [True, False, True, True, None]})
    assert flagged_by_truth(frame) == [
        {"truth": "clean", "pairs": 3, "flagged": 1, "fraction": pytest.approx(1 / 3)},
        {"truth": "swapped", "pairs": 2, "flagged": 2, "fraction": 1.0},
        {"truth": "all", "pairs": 5, "flagged": 3, "fraction": 0.6},
    ]
    assert flagged_by_truth(frame.drop(columns="memorized")) == []


# ---------------------------------------------------------------------------------------------- layer tables


def test_layer_intervals_resample_pairs_so_a_shared_shift_cancels_in_delta_layer_mem():
    from clipmem.scoring.attribution import layer_tables
    from clipmem.scoring.columns import LAYER_INTERVAL_COLUMNS

    rng = np.random.default_rng(0)
    n = 400
    block1 = rng.normal(0.0, 1.0, size=n)  # LayerMem of block 1 varies a lot between pairs ...
    # ... and every pair gains exactly 0.25 at block 2: ΔLayerMem's interval there is [0.25, 0.25], where the
    # difference of the two blocks' separate intervals would be about +-0.14 wide
    per_pair = {"image": np.stack([block1, block1 + 0.25]), "text": np.full((2, n), 0.5)}
    frame = pd.DataFrame({"sample_id": [f"p{i}" for i in range(n)], "truth": "clean", "clipmem": rng.uniform(size=n)})
    layers, _ = layer_tables(frame, per_pair, top_k_curves=1)
    assert set(LAYER_INTERVAL_COLUMNS) <= set(layers.columns)
    image = layers[(layers["tower"] == "image") & (layers["truth"] == "all")].set_index("layer")
    assert image.loc[2, "delta_layer_mem"] == pytest.approx(0.25)
    assert (image.loc[2, "delta_layer_mem_lo"], image.loc[2, "delta_layer_mem_hi"]) == pytest.approx((0.25, 0.25))
    # block 1: ΔLayerMem is LayerMem, and its interval about the normal-theory 2 * 1.96 / sqrt(400) = 0.196 wide
    for lo, hi in (("layer_mem_lo", "layer_mem_hi"), ("delta_layer_mem_lo", "delta_layer_mem_hi")):
        assert image.loc[1, lo] < block1.mean() < image.loc[1, hi]
        assert image.loc[1, hi] - image.loc[1, lo] == pytest.approx(0.196, rel=0.15)
    assert image.loc[1, "layer_mem_lo"] == image.loc[1, "delta_layer_mem_lo"]
    # the interval moves with the pairs: block 2's LayerMem interval is block 1's shifted by 0.25
    assert image.loc[2, "layer_mem_lo"] == pytest.approx(image.loc[1, "layer_mem_lo"] + 0.25)
    text = layers[layers["tower"] == "text"]
    assert (text["layer_mem_lo"] == 0.5).all() and (text["layer_mem_hi"] == 0.5).all()
    assert text["delta_layer_mem_lo"].tolist() == [0.5, 0.0, 0.5, 0.0]  # truth "all", then "clean"


def test_bootstrap_interval_does_not_depend_on_the_order_of_the_pairs():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=300), rng.normal(size=300)
    order = rng.permutation(300)
    assert bootstrap_mean(a) == bootstrap_mean(a[order])
    assert bootstrap_difference(a, b) == bootstrap_difference(a[order], b[order])

"""The published figures beside ours in the experiment report: matching settings, paired changes, verdicts."""

from __future__ import annotations

import math

import pytest

from clipmem.scoring.experiment_report import (published_comparison, published_table, published_verdict, run_row,
                                               write_report)
from clipmem.scoring.published import PUBLISHED, PublishedPoint, removal_counterpart

T_975_2 = 4.302653  # t(0.975, 2 degrees of freedom), from a table


def row(seed, raw=0.1, probe=0.5, captions=1, noise=0.0, method=None, count=0, renderings=1, scored=None,
        noise_on="normalized", **extra):
    experiment = {"experiment": "e", "seed": seed, "captions_per_image": captions, "text_noise": noise,
                  "removal_method": method, "removal_count": count, "renderings": renderings}
    out = run_row(experiment, raw, raw, {"f": {"probe_shape": probe}, "g": {"probe_shape": probe}})
    out.update(text_noise_on=noise_on, **extra)
    if scored is not None:
        out["scored_pairs"] = scored
    return out


def find(records, setting, quantity):
    return next(r for r in records if r["published_setting"] == setting and r["quantity"] == quantity)


def captions_rows():
    """Per seed, 1 -> 5 captions changes the probe by +1, +2, +3 points (mean 2, sd 1, 95% half-width
    4.3027 / sqrt(3) = 2.484: [-0.484, 4.484]) and raw CLIPMem by -0.03, -0.04, -0.03 (mean -0.03333, sd 0.005774,
    half-width 0.014344: [-0.04768, -0.01899])."""
    base_probe, base_raw = (0.50, 0.60, 0.55), (0.10, 0.12, 0.11)
    rows = [row(s, raw=base_raw[s], probe=base_probe[s]) for s in range(3)]
    rows += [row(s, captions=5, raw=base_raw[s] - d, probe=base_probe[s] + (s + 1) / 100)
             for s, d in enumerate((0.03, 0.04, 0.03))]
    return rows


def test_ours_is_the_mean_over_seeds_and_the_paired_change_with_its_t_interval():
    records = published_comparison(captions_rows())
    probe = find(records, "5 captions per image", "accuracy")
    assert probe["published"] == 65.0 and probe["published_change"] == pytest.approx(65.0 - 63.1)
    # 51, 62, 58 %: mean 57, sd sqrt((36 + 25 + 1) / 2) = sqrt(31)
    assert probe["mean"] == pytest.approx(57.0) and probe["sd"] == pytest.approx(math.sqrt(31))
    assert probe["change"] == pytest.approx(2.0) and probe["change_seeds"] == 3
    half = T_975_2 * 1 / math.sqrt(3)
    assert half == pytest.approx(2.484, abs=5e-4)
    assert probe["bounds"] == pytest.approx((2 - half, 2 + half), abs=1e-5)
    # the published rise is well beyond ±0.3 points, ours holds 0
    assert probe["verdict"] == "not distinguishable"
    clipmem = find(records, "5 captions per image", "clipmem")
    sd = math.sqrt(((0.03 - 0.1 / 3) ** 2 * 2 + (0.04 - 0.1 / 3) ** 2) / 2)
    assert clipmem["change"] == pytest.approx(-0.1 / 3)
    assert clipmem["bounds"] == pytest.approx((-0.1 / 3 - T_975_2 * sd / math.sqrt(3),
                                               -0.1 / 3 + T_975_2 * sd / math.sqrt(3)), abs=1e-6)
    assert clipmem["verdict"] == "agrees"  # published .438 -> .422, ours lower with an interval below 0
    base = find(records, "1 caption per image", "clipmem")
    assert base["verdict"] == "baseline" and base["mean"] == pytest.approx(0.11) and base["change"] is None
    # settings not run are listed without a verdict; grids without runs are not listed
    assert find(records, "3 captions per image", "clipmem")["our_setting"] == "not run"
    assert {r["grid"] for r in records} == {"captions"}


@pytest.mark.parametrize("published, bounds, verdict", [
    (0.1, (-0.5, 0.7), "agrees"),            # published no change (within ±0.3), ours holds 0
    (-0.2, (0.1, 0.9), "disagrees"),         # published no change, ours rises
    (1.9, (0.2, 3.0), "agrees"),             # both rise
    (1.9, (-3.0, -0.2), "disagrees"),        # published rise, ours falls
    (-2.1, (-3.0, -0.2), "agrees"),          # both fall
    (-2.1, (-0.5, 0.5), "not distinguishable"),
    (1.9, None, "not distinguishable"),      # one seed: no interval
    (0.1, None, "not distinguishable"),
])
def test_verdict_cases(published, bounds, verdict):
    assert published_verdict(published, 0.3, bounds) == verdict


def test_a_published_no_change_agrees_with_ours_holding_zero_and_one_seed_is_never_distinguished():
    """σ = 0.01 moves the published probe by +0.2 points, within its ±1 error bars: no change. Ours: +0.5, -0.5,
    +0.3 points, whose interval holds 0."""
    rows = [row(s, probe=0.6) for s in range(3)]
    rows += [row(s, noise=0.01, probe=0.6 + d / 100) for s, d in enumerate((0.5, -0.5, 0.3))]
    probe = find(published_comparison(rows), "σ = 0.01", "accuracy")
    assert probe["published_change"] == pytest.approx(0.2) and probe["verdict"] == "agrees"
    # .436 - .438 reads as -0.002, within ±0.002: no change, though the floats differ by a hair more
    rows += [row(s, noise=0.25, raw=0.1 + d) for s, d in enumerate((0.01, 0.02, 0.012))]
    sigma_25 = find(published_comparison(rows), "σ = 0.25", "clipmem")
    assert sigma_25["published_change"] == -0.002 and sigma_25["verdict"] == "disagrees"
    one = find(published_comparison(rows[:1] + rows[3:4]), "σ = 0.01", "accuracy")
    assert one["bounds"] is None and one["change"] == pytest.approx(0.5) and one["verdict"] == "not distinguishable"
    # noise on the projection output is another σ: no published counterpart
    projected = rows[:3] + [row(s, noise=0.01, probe=0.6, noise_on="projection") for s in range(3)]
    assert find(published_comparison(projected), "σ = 0.01", "accuracy")["our_setting"] == "not run"
    assert "--text-noise-on projection" in published_table(projected)


def test_removal_counts_match_the_published_share_of_five_thousand_within_ten_percent():
    assert removal_counterpart(48, 600) == 400      # 8% of 600 <-> 400 of 5,000
    assert removal_counterpart(384, 600) == 3200    # 64%
    assert removal_counterpart(60, 600) is None     # 10%: 25% above 8%, 37.5% below 16%
    assert removal_counterpart(50, 600) == 400      # 8.33%: 4% above
    assert removal_counterpart(0, 600) == 0


def test_removal_rows_are_matched_through_the_share_of_the_scored_pairs():
    """The baseline scores 600 pairs; a removal run scores the rest. Top-CLIPMem 48 and 50 both stand for N = 400,
    the nearer (48) is taken; random 60 (10%) has no counterpart. Probe change: +1, +1, +1 points."""
    rows = [row(s, probe=0.6, scored=600) for s in range(3)]
    rows += [row(s, probe=0.61, method="top-clipmem", count=48, scored=552) for s in range(3)]
    rows += [row(s, probe=0.9, method="top-clipmem", count=50, scored=550) for s in range(3)]
    rows += [row(s, probe=0.2, method="random", count=60, scored=540) for s in range(3)]
    records = published_comparison(rows)
    n400 = find(records, "N = 400 of 5,000 removed by CLIPMem", "accuracy")
    assert n400["our_setting"] == "48 of 600 removed (8.0%), top-clipmem"
    assert n400["change"] == pytest.approx(1.0) and n400["bounds"] == pytest.approx((1.0, 1.0))
    # published 63.1 -> 63.2 is within ±0.3: no change, and ours rises beyond doubt
    assert n400["published_change"] == pytest.approx(0.1) and n400["verdict"] == "disagrees"
    assert find(records, "N = 3,200 of 5,000 removed at random", "accuracy")["our_setting"] == "not run"
    assert not any(r["quantity"] == "clipmem" for r in records if r["grid"] == "removal")  # Fig. 6 is accuracy


def test_removal_clipmem_is_compared_on_the_pairs_every_run_scores():
    points = (PublishedPoint("Fig. 6", "removal", "base", {"removal_count": 0}, clipmem=0.4, baseline=True),
             PublishedPoint("Fig. 6", "removal", "top", {"removal_method": "top-clipmem", "removal_count": 400},
                            clipmem=0.3))
    rows = [row(s, raw=0.5, scored=600, mean_clipmem_raw_common=0.2) for s in range(2)]
    rows += [row(s, raw=0.1, method="top-clipmem", count=48, scored=552, mean_clipmem_raw_common=0.2 + s / 100)
             for s in range(2)]
    top = find(published_comparison(rows, points=points), "top", "clipmem")
    assert top["metric"] == "mean_clipmem_raw_common" and top["change"] == pytest.approx(0.005)


def test_the_images_captions_ablation_and_the_report_section():
    rows = [row(s, raw=0.10 + s / 100) for s in range(2)]
    rows += [row(s, raw=0.09 + s / 100, renderings=5) for s in range(2)]
    rows += [row(s, raw=0.08 + s / 100, captions=5) for s in range(2)]
    records = published_comparison(rows)
    images = find(records, "5 generated images, 1 caption", "clipmem")
    assert images["our_setting"] == "5 renderings × 1 caption" and images["change"] == pytest.approx(-0.01)
    assert find(records, "1 generated image, 1 caption", "clipmem")["our_setting"] == "no counterpart"
    assert find(records, "5 generated images, 5 captions", "clipmem")["our_setting"] == "not run"
    # the captions grid's 1 and 5 captions are also Fig. 5a's points
    assert find(records, "5 captions per image", "clipmem")["change"] == pytest.approx(-0.02)
    # Table 1 prints accuracy to two decimals
    assert "| 5 generated images, 1 caption | 5 renderings × 1 caption | probe % | 64.60 | +1.49 |" \
        in published_table(rows)


def test_the_report_has_the_section_only_when_a_published_grid_has_runs(tmp_path):
    text = write_report(captions_rows(), tmp_path / "a", "t", png=False).read_text()
    assert "## Published beside ours" in text
    assert "| Fig. 5a | 5 captions per image | 5 captions per image | CLIPMem | 0.422 | -0.016 |" in text
    assert "| 57.00 ± 5.57 (3) | +2.00 [-0.48, +4.48] | not distinguishable |" in text
    assert "| probe % | 65.0 | +1.9 |" in text and "| 63.2 | +0.1 (no change: ±0.3) |" in text
    text = write_report([row(0), row(1)], tmp_path / "b", "t", png=False).read_text()
    assert "Published beside ours" not in text


def test_every_published_source_has_one_baseline_per_grid():
    for source, grid in {(p.source, p.grid) for p in PUBLISHED}:
        assert sum(p.baseline for p in PUBLISHED if p.source == source and p.grid == grid) == 1

"""Are the p-values of pairs no model trained on uniform? The calibration of a finished run's null.

A run's null (null.parquet) holds S_E pairs, which neither model trained on. This script holds out half of them
(a fresh random half per seed) as pseudo-candidates, tests each of them against the other half exactly as a
scored pair is tested against the whole null (scoring.significance.null_p_values, per null key; one
Benjamini-Hochberg family over all keys, as add_significance does), and reports:

- the fraction of pseudo-candidates flagged at the FDR (every one of them is a true null, so BH keeps the
  chance of flagging any at or below the FDR: the expected flagged fraction is far below it);
- a Kolmogorov-Smirnov test of their p-values against the uniform law, per seed and pooled over seeds and runs.

The pooled KS p-value treats the p-values as independent, which they are not quite: a pair's p-values in the
two directions of the published scheme come from one score and its negation, and the halves of different seeds
overlap. The empirical p-values are also discrete (steps of 1/(m + 1) for m held-out null pairs). Both make the
KS p-value a rough guide; a miscomputed p-value (a wrong direction, a tail fit that runs low) shows as a KS
statistic far above 1.36 / sqrt(n) and a flagged fraction near or above the FDR.

    .venv/bin/python bench/calibration.py RUN_DIR [RUN_DIR ...] [--seeds 3] [--fdr 0.05] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from clipmem.scoring.significance import bh_q_values, null_p_values  # noqa: E402

SCORES = ("clipmem_raw", "clipmem_contrastive_raw")


def pseudo_candidate_p_values(null: pd.DataFrame, seed: int, score: str = "clipmem_raw",
                              held_out: float = 0.5) -> np.ndarray:
    """p-values of a random `held_out` share of the null's pairs against the rest, per null key, pooled."""
    ids = np.sort(null["sample_id"].unique())
    pseudo = set(np.random.default_rng(seed).permutation(ids)[: int(round(len(ids) * held_out))])
    out = []
    for _, rows in null.groupby("null_for", sort=True):
        is_pseudo = rows["sample_id"].isin(pseudo).to_numpy()
        values = rows[score].to_numpy(dtype=float)
        out.append(null_p_values(values[is_pseudo], values[~is_pseudo]))
    return np.concatenate(out)


def calibration(nulls: dict[str, pd.DataFrame], seeds: int = 3, fdr: float = 0.05, held_out: float = 0.5) -> dict:
    """Per score: per (run, seed) the pseudo-candidates' flagged count and KS test, and the pooled figures."""
    result = {"fdr": fdr, "seeds": seeds, "held_out": held_out, "scores": {}}
    for score in SCORES:
        rows, pooled, flagged = [], [], 0
        for name, null in nulls.items():
            for seed in range(seeds):
                p = pseudo_candidate_p_values(null, seed, score, held_out)
                hits = int((bh_q_values(p) <= fdr).sum())
                ks = stats.kstest(p, "uniform")
                rows.append({"run": name, "seed": seed, "p_values": len(p), "flagged": hits,
                             "flagged_fraction": hits / len(p), "ks_statistic": float(ks.statistic),
                             "ks_p": float(ks.pvalue), "mean_p": float(p.mean())})
                pooled.append(p)
                flagged += hits
        p = np.concatenate(pooled)
        ks = stats.kstest(p, "uniform")
        result["scores"][score] = {"per_seed": rows, "pooled": {
            "p_values": len(p), "flagged": flagged, "flagged_fraction": flagged / len(p),
            "ks_statistic": float(ks.statistic), "ks_p": float(ks.pvalue), "mean_p": float(p.mean()),
            "share_below_0.05": float((p <= 0.05).mean())}}
    return result


def markdown(result: dict) -> str:
    lines = [f"Pseudo-candidates: {result['held_out']:.0%} of S_E per seed, {result['seeds']} seeds, "
             f"FDR {result['fdr']}", "",
             "| score | run | seed | p-values | flagged | KS D | KS p | mean p |", "|---|---|---|---|---|---|---|---|"]
    for score, figures in result["scores"].items():
        for r in figures["per_seed"]:
            lines.append(f"| {score} | {r['run']} | {r['seed']} | {r['p_values']} | {r['flagged']} "
                         f"({r['flagged_fraction']:.3f}) | {r['ks_statistic']:.3f} | {r['ks_p']:.3f} | "
                         f"{r['mean_p']:.3f} |")
        r = figures["pooled"]
        lines.append(f"| {score} | pooled | all | {r['p_values']} | {r['flagged']} ({r['flagged_fraction']:.3f}) | "
                     f"{r['ks_statistic']:.3f} | {r['ks_p']:.3f} | {r['mean_p']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run directories (with null.parquet)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--fdr", type=float, default=0.05)
    parser.add_argument("--held-out", type=float, default=0.5)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    nulls = {}
    for run in args.runs:
        path = run / "null.parquet"
        if not path.is_file():
            sys.exit(f"{run} has no null.parquet: score it with a clipmem that writes the null (S_E pairs needed)")
        nulls[str(run)] = pd.read_parquet(path)
    result = calibration(nulls, args.seeds, args.fdr, args.held_out)
    print(markdown(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""How well `miscaption` tells mis-captions from the rest among the most memorized pairs (docs/why.md), per run.

For each finished run directory (made with truth tags: the built-in data, or --inject) it reads scores.parquet and
metrics.json and reports, among the 20% of scored pairs with the highest CLIPMem (report.MEMORIZED_TOP):
AUROC, average precision and precision@k of `miscaption`, CLIPMem, clipscore_g and clipscore_f for mis-captions
(truth swapped, wrong_attribute or vague) against the rest (report.miscaption_detection, the code `clipmem report`
uses); the counts of reason x truth over every scored pair; and what the step cost: metrics.json's why.seconds
against the run's train + score seconds. With several runs, the mean and range of each figure.

    .venv/bin/python bench/why_quality.py RUN_DIR [RUN_DIR ...] [--json OUT]

A run scored again with `clipmem score RUN_DIR` after a change of scoring/why.py is read the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def run_figures(path: Path) -> dict:
    from clipmem.scoring.report import miscaption_detection, reason_rows
    from clipmem.scoring.rundir import RunDir

    run = RunDir(path)
    run.require_finished()
    scores = pd.read_parquet(run.scores)
    if "miscaption" not in scores:
        raise SystemExit(f"{path}: scored before `miscaption`; run `clipmem score {path}` first")
    metrics = json.loads(run.metrics.read_text())
    config = json.loads(run.config.read_text())
    timings = metrics.get("timings", {})
    total = sum(timings.get(k, 0.0) for k in ("split_seconds", "train_seconds", "score_seconds")) or None
    why_seconds = metrics.get("why", {}).get("seconds")
    return {"run": str(path), "model": config["train"]["model"], "epochs": config["train"]["epochs"],
            "seed": config["split"]["seed"], "pairs": len(scores),
            "detection": {row["score"]: row for row in miscaption_detection(scores)},
            "reasons": reason_rows(scores), "why_seconds": why_seconds, "score_seconds": timings.get("score_seconds"),
            "run_seconds": total, "why_share": why_seconds / total if why_seconds is not None and total else None}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--json", type=Path, help="Write the figures as JSON here.")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    runs = [run_figures(path) for path in args.runs]
    for run in runs:
        print(f"\n## {run['run']} ({run['model']}, {run['epochs']} epochs, seed {run['seed']}, {run['pairs']} pairs)")
        print("| score | AUROC | avg precision | precision@k | k | pairs |\n|---|---|---|---|---|---|")
        for name, row in run["detection"].items():
            print(f"| {name} | {row['auroc']:.3f} | {row['average_precision']:.3f} | {row['precision_at_k']:.3f} "
                  f"| {row['k']} | {row['pairs']} |")
        by_truth = run["reasons"].get("by_truth", [])
        if by_truth:
            table = pd.DataFrame(by_truth).pivot(index="reason", columns="truth", values="pairs")
            print("\n" + table.fillna(0).astype(int).to_string())
        if run["why_seconds"] is not None:
            share = f", {run['why_share']:.1%} of the run's {run['run_seconds']:.0f} s" if run["why_share"] else ""
            print(f"\nwhy step: {run['why_seconds']:.2f} s{share}")
    if len(runs) > 1:
        print(f"\n## over {len(runs)} runs: mean [min, max]")
        print("| score | AUROC | avg precision |\n|---|---|---|")
        for name in runs[0]["detection"]:
            cells = []
            for key in ("auroc", "average_precision"):
                values = np.array([r["detection"][name][key] for r in runs if name in r["detection"]])
                cells.append(f"{values.mean():.3f} [{values.min():.3f}, {values.max():.3f}]")
            print(f"| {name} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2, default=float))


if __name__ == "__main__":
    main()

"""What a replica buys: swapped-pair AUROC, agreement between independent replica sets and flagged pairs, R = 1, 2, 4.

Trains R_MAX = 8 independently seeded f/g pairs once on the built-in data (`clipmem split` + `clipmem train
--replicas`: the default recipe, replica 0 is the default run's f and g; in --jobs processes at once, each a run
directory of its own whose replicas are the run's replicas of the same number), scores each pair of models on its own
(CLIPMem and the null, the views every replica shares; no tower scores) and builds the score of R replicas as the
mean over a set of R of them, exactly as `clipmem run --replicas R` does (scoring.score.mean_over_replicas).
For each R the 8 replicas form 8 / R disjoint sets:

- swapped-pair AUROC of clipmem_raw (swapped pairs against every other scored pair, as `clipmem report`), the mean
  over the sets (and each set's value);
- Spearman rank correlation of clipmem_raw between two disjoint sets of R replicas (sets 2i and 2i + 1), the mean
  over the 4 / R such pairs: how well one experiment's ranking predicts an independent repeat's;
- pairs flagged memorized at FDR 0.05 (p-values against the same sets' null, Benjamini-Hochberg over the scored
  pairs): the mean count over the sets, and per truth tag.

    nice -n 5 .venv/bin/python bench/replicas.py [RUN_DIR] [--replicas 8] [--epochs 80]

RUN_DIR (default /tmp/clipmem-bench-replicas) keeps the trained replicas and each replica's scores
(RUN_DIR/bench_scores/), so a rerun continues where it stopped. Writes bench/results/replicas.json and prints a
markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
FDR = 0.05


def clipmem(*args: str) -> list[str]:
    return [sys.executable, "-m", "clipmem", *args]


def job_dirs(run_dir: Path, jobs: int) -> list[Path]:
    return [run_dir if j == 0 else run_dir.with_name(f"{run_dir.name}.job{j}") for j in range(jobs)]


def replica_files(run_dir: Path, replicas: int, jobs: int) -> list[tuple[Path, int]]:
    """(run directory, replica within it) of each of the replicas, in order."""
    per_job = replicas // jobs
    return [(d, r) for d in job_dirs(run_dir, jobs) for r in range(per_job)]


def set_up(run_dir: Path, replicas: int, jobs: int, epochs: int | None) -> None:
    """The split (once) and one run directory per training job: job j trains replicas j * R/J .. (j + 1) * R/J - 1
    of the run as replicas 0 .. R/J - 1 of its own, its seeds offset by j * R/J replica streams, so its replica r
    is the run's replica j * R/J + r exactly (scoring.train.replica_config)."""
    from clipmem.scoring.rundir import RunDir
    from clipmem.scoring.train import REPLICA_STREAM

    if not (run_dir / "split.json").is_file():
        subprocess.run(clipmem("split", "--out", str(run_dir), "--overwrite"), cwd=ROOT, check=True)
    base = RunDir(run_dir).load_config()
    per_job = replicas // jobs
    for j, path in enumerate(job_dirs(run_dir, jobs)):
        if j and not (path / "split.json").is_file():
            path.mkdir(exist_ok=True)
            for name in ("split.json", "samples.parquet", "data_root.json", "skipped.jsonl"):
                shutil.copy2(run_dir / name, path / name)
            if not (path / "data").exists():
                (path / "data").symlink_to(run_dir / "data")
        run = RunDir(path)
        cfg = RunDir(path if run.config.is_file() else run_dir).load_config()
        offset = j * per_job * REPLICA_STREAM
        train = replace(base.train, replicas=per_job, init_seed=base.train.init_seed + offset,
                        data_seed=base.train.data_seed + offset, **({"epochs": epochs} if epochs else {}))
        if cfg.train != train:
            cfg.train = train
            run.save_config(cfg)


def train(run_dir: Path, replicas: int, jobs: int, epochs: int | None) -> float:
    """Train the replicas in `jobs` processes at once (continuing stopped ones); seconds spent here."""
    t0 = time.perf_counter()
    set_up(run_dir, replicas, jobs, epochs)
    missing = [d for d in job_dirs(run_dir, jobs)
               if not all((d / (f"{m}.pt" if r == 0 else f"{m}.r{r}.pt")).is_file()
                          for m in ("f", "g") for r in range(replicas // jobs))]
    procs = []
    for d in missing:
        cmd = clipmem("train", str(d), "--resume", "--no-progress")
        print("$", " ".join(cmd[2:]), flush=True)
        procs.append(subprocess.Popen(cmd, cwd=ROOT))
    for proc in procs:
        if proc.wait() != 0:
            sys.exit(f"training failed ({proc.args})")
    return time.perf_counter() - t0


def score_replicas(run_dir: Path, replicas: int, jobs: int) -> tuple[list, list, float]:
    """Per replica: the score frame (scored pairs) and the null, cached in RUN_DIR/bench_scores."""
    import pandas as pd
    import torch

    from clipmem.scoring.models import Vocabulary, create_model
    from clipmem.scoring.pipeline import load_corpus
    from clipmem.scoring.rundir import RunDir
    from clipmem.scoring.score import score_null, score_run
    from clipmem.scoring.train import load_model_weights

    run = RunDir(run_dir)
    cfg = run.load_config()
    cache = run_dir / "bench_scores"
    cache.mkdir(exist_ok=True)
    corpus, _, model_cfg = load_corpus(run, cfg, Vocabulary.from_json(json.loads(run.vocab.read_text())))
    device = torch.device("cpu")
    frames, nulls, seconds = [], [], 0.0
    for r, (job_dir, within) in enumerate(replica_files(run_dir, replicas, jobs)):
        scores_path, null_path = cache / f"scores.r{r}.parquet", cache / f"null.r{r}.parquet"
        if not (scores_path.is_file() and null_path.is_file()):
            t0 = time.perf_counter()
            models = {}
            for name in ("f", "g"):
                models[name] = create_model(model_cfg, cfg.train.init_seed)
                load_model_weights(models[name], RunDir(job_dir).model_checkpoint(name, within))
            frame = score_run(models, corpus, cfg.score, cfg.train, device, embed=False).frame
            null = score_null(models, corpus, cfg.score, cfg.train, device)
            frame.to_parquet(scores_path, index=False)
            null.to_parquet(null_path, index=False)
            seconds += time.perf_counter() - t0
            print(f"scored replica {r} in {time.perf_counter() - t0:.0f} s", flush=True)
        frames.append(pd.read_parquet(scores_path))
        nulls.append(pd.read_parquet(null_path))
    return frames, nulls, seconds


def table(frames: list, nulls: list, sizes: list[int]) -> list[dict]:
    import numpy as np
    from scipy import stats

    from clipmem.scoring.metrics import single_auroc
    from clipmem.scoring.score import mean_over_replicas, scale_scores
    from clipmem.scoring.significance import add_significance, flagged_by_truth

    rows = []
    for size in sizes:
        sets = [list(range(i, i + size)) for i in range(0, len(frames) - size + 1, size)]
        scored = []
        for members in sets:
            frame = mean_over_replicas([frames[r] for r in members])
            null = mean_over_replicas([nulls[r] for r in members])
            scored.append(add_significance(scale_scores(frame), null, FDR))
        swapped = (scored[0]["truth"] == "swapped").to_numpy()
        aurocs = [single_auroc(swapped, s["clipmem_raw"].to_numpy()) for s in scored]
        rhos = [float(stats.spearmanr(scored[i]["clipmem_raw"], scored[i + 1]["clipmem_raw"]).statistic)
                for i in range(0, len(scored) - 1, 2)]
        flagged = [int(s["memorized"].sum()) for s in scored]
        by_truth = {}
        for s in scored:
            for row in flagged_by_truth(s):
                by_truth.setdefault(row["truth"], []).append(row["flagged"])
        rows.append({"replicas": size, "sets": [[int(r) for r in m] for m in sets],
                     "swapped_auroc": float(np.mean(aurocs)), "swapped_auroc_per_set": aurocs,
                     "spearman_between_sets": float(np.mean(rhos)) if rhos else None, "spearman_per_pair": rhos,
                     "flagged": float(np.mean(flagged)), "flagged_per_set": flagged,
                     "flagged_by_truth": {t: float(np.mean(v)) for t, v in by_truth.items()},
                     "pairs": int(len(scored[0])),
                     "pairs_by_truth": {row["truth"]: row["pairs"] for row in flagged_by_truth(scored[0])}})
    return rows


def markdown(rows: list[dict]) -> str:
    tags = [t for t in ("swapped", "atypical", "clean") if t in rows[0]["flagged_by_truth"]]
    lines = ["| R | sets | swapped AUROC | Spearman ρ, two independent sets | flagged at FDR 0.05 | "
             + " | ".join(f"flagged {t} (of {rows[0]['pairs_by_truth'][t]})" for t in tags) + " |",
             "|---|---|---|---|---|" + "---|" * len(tags)]
    for r in rows:
        rho = "n/a" if r["spearman_between_sets"] is None else f"{r['spearman_between_sets']:.3f}"
        lines.append(f"| {r['replicas']} | {len(r['sets'])} | {r['swapped_auroc']:.3f} | {rho} | "
                     f"{r['flagged']:.1f} of {r['pairs']} | "
                     + " | ".join(f"{r['flagged_by_truth'][t]:.1f}" for t in tags) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", nargs="?", type=Path, default=Path("/tmp/clipmem-bench-replicas"))
    parser.add_argument("--replicas", type=int, default=8, help="replicas trained (a multiple of 8: R = 1, 2, 4)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the run default, 80)")
    parser.add_argument("--jobs", type=int, default=2, help="training processes at once, each with its own run "
                        "directory (RUN_DIR.job1, ...) holding a share of the replicas (it must divide --replicas)")
    args = parser.parse_args()
    if args.replicas % args.jobs:
        sys.exit(f"--jobs {args.jobs} must divide --replicas {args.replicas}")
    sizes = [r for r in (1, 2, 4) if 2 * r <= args.replicas]
    load = os.getloadavg()[0]
    train_seconds = train(args.run_dir, args.replicas, args.jobs, args.epochs)
    frames, nulls, score_seconds = score_replicas(args.run_dir, args.replicas, args.jobs)
    rows = table(frames, nulls, sizes)
    text = markdown(rows)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "replicas.json").write_text(json.dumps({
        "run_dir": str(args.run_dir), "replicas_trained": args.replicas, "fdr": FDR,
        "train_jobs": args.jobs, "train_seconds": round(train_seconds, 1), "score_seconds": round(score_seconds, 1),
        "cpus": os.cpu_count(), "load_average_start": round(load, 2), "rows": rows, "markdown": text}, indent=2))
    print(f"wrote {RESULTS / 'replicas.json'}")


if __name__ == "__main__":
    main()

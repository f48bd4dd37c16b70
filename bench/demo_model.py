"""Does the demo model learn what its captions say? Utility, detection and time of the default run per model config.

For each candidate (a model config, optionally with a recipe) it runs `clipmem run` on the built-in data with every
other option at its default, and reads from the finished run directory:

- zero-shot accuracy on S_E of shape and colour (prompts "a picture of a {colour} {shape}") and the linear probe of
  each on the clean image embeddings (fitted on S_S, tested on S_E); the mean of f and g (metrics.json);
- i2t and t2i recall@1 on S_E, the mean of f and g;
- swapped-pair AUROC: clipmem_raw of the swapped pairs against every other scored pair (scores.parquet, `truth`);
- training seconds (metrics.json timings.train_seconds) and peak RSS (metrics.json), the run's wall seconds
  (measured around the subprocess) and the 1-minute load average at its start and end: the machine is shared, so a
  wall time means little without the load it was taken under.

A candidate is MODEL or MODEL:KEY=VALUE,...; MODEL is anything `clipmem run --model` takes (a registered name or a
JSON path) and the keys are epochs, lr, batch (--batch-size) and seed, e.g. `clipmem-demo-shape:epochs=40,seed=1`.
The defaults are the old demo (clipmem-demo, 80 epochs) and the new one (clipmem-demo-shape, 40 epochs).

    nice -n 5 .venv/bin/python bench/demo_model.py [CANDIDATE ...] [--work DIR] [--threads N] [--reuse] [--label L]

Run directories go to WORK/<candidate> (default /tmp/clipmem-bench-demo-model); with --reuse a finished one (with
the bench's own bench_run.json beside its outputs) is read instead of rerun. --threads sets OMP_NUM_THREADS for the
runs (default: unset, torch's own choice); on a loaded 2-core machine 2 threads can be several times slower than 1,
so compare wall times only at equal threads and similar load. Writes bench/results/demo_model[-LABEL].json and
prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clipmem.scoring.metrics import Ranking, auroc  # noqa: E402
from clipmem.scoring.rundir import RunDir  # noqa: E402

RESULTS = ROOT / "bench" / "results"
# recipes spelled out, so the pair stays the old and the new demo whatever the CLI defaults are
DEFAULT_CANDIDATES = ("clipmem-demo:epochs=80", "clipmem-demo-shape:epochs=40")
RECIPE_FLAGS = {"epochs": "--epochs", "lr": "--lr", "batch": "--batch-size", "seed": "--seed"}
UTILITY = ("zeroshot_shape", "zeroshot_colour", "probe_shape", "probe_colour", "i2t_r1", "t2i_r1")
BENCH_FILE = "bench_run.json"


def parse_candidate(text: str) -> tuple[str, dict[str, str]]:
    model, _, recipe = text.partition(":")
    options = {}
    for item in filter(None, recipe.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in RECIPE_FLAGS:
            sys.exit(f"bad recipe item '{item}' in candidate '{text}': expected KEY=VALUE with KEY one of "
                     f"{', '.join(RECIPE_FLAGS)}")
        options[key] = value
    return model, options


def run_name(text: str) -> str:
    model, options = parse_candidate(text)
    stem = Path(model).stem if model.endswith(".json") else model
    return "_".join([stem, *(f"{k}{v}" for k, v in options.items())])


def run_clipmem(text: str, out: Path, threads: int | None) -> dict:
    """`clipmem run` of one candidate into `out`; its wall seconds and the load around it."""
    model, options = parse_candidate(text)
    cmd = [sys.executable, "-m", "clipmem", "run", "--out", str(out), "--model", model, "--overwrite"]
    for key, value in options.items():
        cmd += [RECIPE_FLAGS[key], value]
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    info = {"candidate": text, "command": cmd[2:], "omp_num_threads": threads, "wall_seconds": round(wall, 1),
            "load_average_start": round(load_start, 2),
            "load_average_end": round(os.getloadavg()[0], 2)}
    (out / BENCH_FILE).write_text(json.dumps(info, indent=2))
    return info


def swapped_auroc(run: Path) -> float:
    scores = pd.read_parquet(RunDir(run).scores, columns=["truth", "clipmem_raw"])
    positive = (scores["truth"] == "swapped").to_numpy()
    if positive.all() or not positive.any():
        sys.exit(f"{run}: swapped-pair AUROC needs swapped and other scored pairs")
    return auroc(positive, Ranking.of(np.asarray(scores["clipmem_raw"], dtype=np.float64)))


def figures(run: Path, info: dict) -> dict:
    metrics = json.loads(RunDir(run).metrics.read_text())
    models = [m for m in ("f", "g") if m in metrics]
    row = {"candidate": info["candidate"], "run_dir": str(run)}
    for key in UTILITY:
        row[key] = round(sum(metrics[m][key] for m in models) / len(models), 4)
        row[f"{key}_per_model"] = {m: round(metrics[m][key], 4) for m in models}
    row["swapped_auroc"] = round(swapped_auroc(run), 4)
    row["train_seconds"] = metrics["timings"]["train_seconds"]
    row.update({k: info[k] for k in ("wall_seconds", "omp_num_threads", "load_average_start", "load_average_end")})
    if "note" in info:
        row["note"] = info["note"]
    row["peak_rss_mb"] = metrics.get("peak_rss_mb")
    return row


def _load(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


def markdown(rows: list[dict]) -> str:
    lines = ["| candidate | zs shape | zs colour | probe shape | probe colour | i2t R@1 | t2i R@1 | swapped AUROC | "
             "train s | wall s | threads | load start/end |", "|---" * 12 + "|"]
    for r in rows:
        lines.append(f"| {r['candidate']} | {r['zeroshot_shape']:.3f} | {r['zeroshot_colour']:.3f} | "
                     f"{r['probe_shape']:.3f} | {r['probe_colour']:.3f} | {r['i2t_r1']:.3f} | {r['t2i_r1']:.3f} | "
                     f"{r['swapped_auroc']:.3f} | {r['train_seconds']:.0f} | {r['wall_seconds']:.0f} | "
                     f"{r['omp_num_threads'] or 'default'} | "
                     f"{_load(r['load_average_start'])}/{_load(r['load_average_end'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("candidates", nargs="*", default=list(DEFAULT_CANDIDATES),
                        help="MODEL or MODEL:epochs=E,lr=L,batch=B,seed=S (default: the old and the new demo)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/clipmem-bench-demo-model"))
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the runs (default: unset)")
    parser.add_argument("--reuse", action="store_true", help="read finished run directories instead of rerunning")
    parser.add_argument("--label", default="", help="suffix of the results file")
    args = parser.parse_args()
    for text in args.candidates:
        parse_candidate(text)  # every candidate checked before the first run starts
    rows = []
    for text in args.candidates:
        out = args.work / run_name(text)
        bench_file = out / BENCH_FILE
        if args.reuse and RunDir(out).is_finished() and bench_file.is_file():
            info = json.loads(bench_file.read_text())
            print(f"{text}: reusing {out}", flush=True)
        else:
            print(f"{text}: clipmem run --out {out}", flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            info = run_clipmem(text, out, args.threads)
        rows.append(figures(out, info))
    result = {"machine": {"cpus": os.cpu_count()}, "runs": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"demo_model{'-' + args.label if args.label else ''}.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2))
    print(markdown(rows))


if __name__ == "__main__":
    main()

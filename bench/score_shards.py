"""Scoring throughput with 1 and with 2 processes on this machine.

Three ways of scoring the same trained run, each timed end to end in fresh processes
(interpreter start, data and model loading included), `--repeats` times, best kept:

- 1 process:  `clipmem score RUN` (all threads of the machine);
- 2 shards:   `clipmem score RUN --shard I --num-shards 2` for I = 0, 1 at once (each with half
              the threads), then `clipmem score RUN --merge`;
- torchrun:   `torchrun --nproc_per_node 2 -m clipmem score RUN` (gloo; torchrun gives each
              rank one OpenMP thread unless OMP_NUM_THREADS is set).

Two figures per mode: end to end (wall time from the first process start to the finished run)
and the per-pair stage that sharding spreads (data and model loading plus the per-pair
scoring: metrics.json's scoring.seconds for 1 process and torchrun — rank 0 waits for the
other rank there —, the slower shard for `--shard`), both as scored pairs per second. The
rest is a fixed cost of one process: the merge's scaling, embeddings and utility on S_E
(whose linear probes dominate it on barely trained models). Scores of every mode are
checked against the 1-process scores (1e-5). The run is made when RUN_DIR holds no trained
models: the built-in data at the default demo size, trained for --epochs (1 by default:
scoring throughput does not depend on how well the models are trained).

    .venv/bin/python bench/score_shards.py                        # default demo size, 3 repeats
    .venv/bin/python bench/score_shards.py /tmp/tiny --pairs 900 --sizes 600,120,120,60 --views 2 --repeats 1

Prints a table and writes bench/results/score_shards.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def clipmem(*args) -> list[str]:
    return [sys.executable, "-m", "clipmem", *map(str, args)]


def run(cmd, env=None, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(map(str, cmd))}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def base_env(threads: int | None = None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = str(ROOT)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(run_dir: Path, args) -> None:
    """A trained run at RUN_DIR, made from the built-in data unless it is there."""
    if (run_dir / "f.pt").is_file() and (run_dir / "g.pt").is_file():
        return
    data = run_dir.with_name(run_dir.name + "-data")
    if not (data / "metadata.jsonl").is_file():
        run(clipmem("synth", "--out", data, "--n", args.pairs))
    run(clipmem("split", "--out", run_dir, "--dataset", "folder", "--data", data, "--sizes", args.sizes,
                "--overwrite"))
    run(clipmem("train", run_dir, "--epochs", args.epochs, "--device", "cpu"))


def fresh(run_dir: Path) -> None:
    """Forget earlier scoring, so every mode does all the work."""
    shutil.rmtree(run_dir / "score_parts", ignore_errors=True)
    for name in ("scores.parquet", "COMPLETE"):
        (run_dir / name).unlink(missing_ok=True)


def stage_seconds(run_dir: Path) -> float:
    return json.loads((run_dir / "metrics.json").read_text())["scoring"]["seconds"]


def time_single(run_dir: Path, views: list, threads: int) -> tuple[float, float]:
    """(end to end, per-pair stage) seconds of one `clipmem score`."""
    fresh(run_dir)
    t = time.perf_counter()
    run(clipmem("score", run_dir, *views), env=base_env(threads))
    return time.perf_counter() - t, stage_seconds(run_dir)


def time_shards(run_dir: Path, views: list, threads: int) -> tuple[float, float, float]:
    """(end to end, slower shard, merge) seconds of two --shard processes at once and the merge."""
    fresh(run_dir)
    t = time.perf_counter()
    procs = [subprocess.Popen(clipmem("score", run_dir, "--shard", i, "--num-shards", 2, *views), cwd=ROOT,
                              env=base_env(max(1, threads // 2)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    shard_seconds = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"shard failed:\n{out[-2000:]}\n{err[-3000:]}")
        shard_seconds.append(float(re.search(r"written in ([0-9.]+) s", " ".join(out.split())).group(1)))
    t_merge = time.perf_counter()
    run(clipmem("score", run_dir, "--merge", *views), env=base_env(threads))
    end = time.perf_counter()
    return end - t, max(shard_seconds), end - t_merge


def time_torchrun(run_dir: Path, views: list) -> tuple[float, float]:
    """(end to end, per-pair stage on rank 0 including its wait for rank 1) seconds under torchrun."""
    fresh(run_dir)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "clipmem", "score", str(run_dir), *map(str, views)]
    t = time.perf_counter()
    run(cmd, env=base_env())
    return time.perf_counter() - t, stage_seconds(run_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, nargs="?", default=ROOT / "bench" / "results" / "score_shards_run")
    parser.add_argument("--pairs", type=int, default=3300, help="built-in pairs to generate (default: demo size)")
    parser.add_argument("--sizes", default="2400,300,300,300", help="split sizes (default: the demo's)")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs when the run is made")
    parser.add_argument("--views", type=int, default=None, help="scoring views (default: the run's, 8)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of the 1-process run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "score_shards.json")
    args = parser.parse_args()
    import pandas as pd
    import numpy as np

    run_dir = args.run_dir.resolve()
    prepare(run_dir, args)
    views = ["--views", args.views] if args.views else []
    times = {"single": [], "two_shards": [], "torchrun_2": []}
    stages = {"single": [], "two_shards": [], "torchrun_2": []}
    merges = []
    reference = None
    for _ in range(args.repeats):
        wall, stage = time_single(run_dir, views, args.threads)
        times["single"].append(wall)
        stages["single"].append(stage)
        reference = pd.read_parquet(run_dir / "scores.parquet")
        wall, stage, merge = time_shards(run_dir, views, args.threads)
        times["two_shards"].append(wall)
        stages["two_shards"].append(stage)
        merges.append(merge)
        check(reference, pd.read_parquet(run_dir / "scores.parquet"), np)
        wall, stage = time_torchrun(run_dir, views)
        times["torchrun_2"].append(wall)
        stages["torchrun_2"].append(stage)
        check(reference, pd.read_parquet(run_dir / "scores.parquet"), np)
    pairs = len(reference)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    best = {k: min(v) for k, v in times.items()}
    best_stage = {k: min(v) for k, v in stages.items()}
    results = {
        "run_dir": str(run_dir), "pairs": pairs, "views": metrics["scoring"]["views"], "repeats": args.repeats,
        "cpu_count": os.cpu_count(), "machine": platform.machine(), "threads_single": args.threads,
        **{f"{k}_seconds": v for k, v in best.items()},
        **{f"{k}_pairs_per_s": pairs / v for k, v in best.items()},
        **{f"{k}_stage_seconds": v for k, v in best_stage.items()},
        **{f"{k}_stage_pairs_per_s": pairs / v for k, v in best_stage.items()},
        "merge_seconds": min(merges),
        "all_seconds": times, "all_stage_seconds": stages, "all_merge_seconds": merges,
        "scores_match_single_process": True,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"{pairs} scored pairs x {results['views']} views, best of {args.repeats}; end to end = wall time from "
          "the first process start; stage = loading + per-pair scoring\n")
    print("| processes | end to end s | pairs/s | stage s | stage pairs/s | stage speed-up |\n|---|---|---|---|---|---|")
    labels = {"single": "1 (`clipmem score`)",
              "two_shards": f"2 (`--shard` x2 at once; then `--merge`, {min(merges):.2f} s)",
              "torchrun_2": "2 (torchrun, gloo)"}
    for key, label in labels.items():
        print(f"| {label} | {best[key]:.2f} | {pairs / best[key]:.0f} | {best_stage[key]:.2f} | "
              f"{pairs / best_stage[key]:.0f} | {best_stage['single'] / best_stage[key]:.2f} |")


def check(reference, scores, np) -> None:
    """Every mode gives the 1-process scores."""
    assert reference["sample_id"].tolist() == scores["sample_id"].tolist()
    for col in ("clipmem", "clipmem_raw", "clipmem_contrastive", "align_f", "align_g", "clipscore_g"):
        np.testing.assert_allclose(reference[col], scores[col], atol=1e-5, rtol=0, err_msg=col)


if __name__ == "__main__":
    main()

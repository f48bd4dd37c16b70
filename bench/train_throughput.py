"""Training throughput: clipmem's coupled f/g trainer against open_clip's own trainer.

Both train the same architecture on the same built-in data on this machine's CPU.
open_clip_train.main reads the exported CSV (one row per pair, first caption) and
decodes images per sample; clipmem decodes once and augments batched tensors.
Samples/s counts image-caption pairs through one forward/backward step.

    .venv/bin/python bench/train_throughput.py [--model clipmem-demo] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipmem.scoring.config import DataConfig, RunConfig, TrainConfig  # noqa: E402
from clipmem.scoring.data.sources import load_dataset  # noqa: E402
from clipmem.scoring.config import SynthConfig  # noqa: E402
from clipmem.scoring.data.synthetic import write  # noqa: E402
from clipmem.scoring.export import write_open_clip_csv  # noqa: E402
from clipmem.scoring.models import resolve_config  # noqa: E402
from clipmem.scoring.pipeline import split_step, train_step  # noqa: E402
from clipmem.scoring.rundir import RunDir  # noqa: E402
from clipmem.scoring.splits import SplitPlan  # noqa: E402


def clipmem_rate(work: Path, data: Path, model: str, epochs: int, compact: bool, batch: int) -> float:
    run = RunDir(work / f"clipmem_{'compact' if compact else 'full'}")
    run.prepare_new(overwrite=True)
    cfg = RunConfig(data=DataConfig(kind="folder", path=str(data)),
                    train=TrainConfig(model=model, epochs=epochs, batch_size=batch, compact_vocab=compact))
    split_step(run, cfg)
    train_step(run, cfg, show_progress=False)
    log = [json.loads(line) for line in run.train_log.read_text().splitlines()]
    # the first epoch carries one-off start-up costs; report the steady state when there is one
    steady = log[1:] or log
    return sum(e["samples_per_s"] for e in steady) / len(steady)


def open_clip_rate(work: Path, data: Path, model: str, batch: int) -> float:
    dataset = load_dataset("folder", data)
    run = RunDir(work / "clipmem_full")
    plan = SplitPlan.load(run.split)
    csv_path = work / "train_f.csv"
    write_open_clip_csv(dataset, plan.ids["shared"] + plan.ids["candidate"], csv_path, all_captions=False)
    model_dir = work / "model"
    model_dir.mkdir(exist_ok=True)
    (model_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": resolve_config(model),
                                                                 "preprocess_cfg": {}}))
    cmd = [sys.executable, "-m", "open_clip_train.main", "--model", f"local-dir:{model_dir}",
           "--train-data", str(csv_path), "--dataset-type", "csv", "--csv-separator", "\t",
           "--csv-img-key", "filepath", "--csv-caption-key", "title", "--device", "cpu", "--precision", "fp32",
           "--workers", "0", "--batch-size", str(batch), "--epochs", "1", "--lr", "2e-3", "--wd", "0.1",
           "--warmup", "10", "--logs", str(work / "logs"), "--name", "bench", "--save-frequency", "0",
           "--log-every-n-steps", "1", "--report-to", ""]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"open_clip_train failed:\n{out[-3000:]}")
    # 'Batch (t): 0.412, 621.3/s' on each log line; skip the first (warm-up) step
    rates = [float(m) for m in re.findall(r"Batch \(t\): [0-9.]+, ([0-9.]+)/s", out)]
    if not rates:
        raise SystemExit(f"no throughput lines in open_clip_train output:\n{out[-3000:]}")
    steady = rates[1:] or rates
    return sum(steady) / len(steady)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="clipmem-demo")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train_throughput.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = write(SynthConfig(), work / "data")
        results = {
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
            "model": args.model,
            "clipmem_full_vocab": clipmem_rate(work, data, args.model, args.epochs, False, args.batch_size),
            "clipmem_compact_vocab": clipmem_rate(work, data, args.model, args.epochs, True, args.batch_size),
        }
        results["open_clip_train"] = open_clip_rate(work, data, args.model, args.batch_size)
    results["ratio_full_vocab"] = results["clipmem_full_vocab"] / results["open_clip_train"]
    results["ratio_compact_vocab"] = results["clipmem_compact_vocab"] / results["open_clip_train"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print("| trainer | samples/s |\n|---|---|")
    print(f"| open_clip_train.main (CSV, workers 0) | {results['open_clip_train']:.0f} |")
    print(f"| clipmem, full vocabulary | {results['clipmem_full_vocab']:.0f} (x{results['ratio_full_vocab']:.2f}) |")
    print(f"| clipmem, compacted vocabulary | {results['clipmem_compact_vocab']:.0f} "
          f"(x{results['ratio_compact_vocab']:.2f}) |")


if __name__ == "__main__":
    main()

"""`clipmem experiment`: mitigation grids as ordinary runs sharing one split plan.

Layout of an experiment directory:

    EXP_DIR/experiment.json      name, grids, seeds and the base recipe
    EXP_DIR/base/                the split plan (and the built-in data) every run shares
    EXP_DIR/runs/<setting>-s<seed>/   one finished run per setting and seed, with experiment.json
    EXP_DIR/report/              report.md, figures (HTML, PNG), runs.csv, summary.csv

Every setting is trained with the same split and the same seeds, so settings differ
only by the knob. Removal runs need the baseline run of their seed (they remove its
top-CLIPMem, lowest-similarity or random scored pairs), so they start after it.
The towers and from-scratch grids need the experiment's --pretrained base: they
lock one tower of it, or train the same split from random weights instead.
A finished run is never retrained; an interrupted one resumes from its checkpoint.
Runs are independent processes, so on a CPU several run at once with a thread each:
small models use two threads poorly (one run at 2 threads: ~2,800 samples/s; two
runs at 1 thread: ~2,000 each, measured on the 2-core project machine).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

from clipmem.scoring.config import RunConfig, TrainConfig
from clipmem.scoring.errors import ClipmemError
from clipmem.scoring.experiment_report import GRIDS, IMAGES_CAPTIONS_VALUES, PRETRAINED_GRIDS, REMOVAL_METHODS
from clipmem.scoring.processes import stop_processes
from clipmem.scoring.rundir import RunDir, write_json

CAPTIONS = (1, 2, 3, 4, 5)  # the published Fig. 5a
TEXT_NOISE = (0.0, 0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)  # the published σ grid
SHARED_FILES = ("split.json", "samples.parquet", "data_root.json", "skipped.jsonl")


@dataclass(frozen=True)
class Setting:
    captions_per_image: int = 1
    text_noise: float = 0.0
    removal_method: str | None = None
    removal_count: int = 0
    renderings: int = 1
    lock: str = ""               # towers grid: the tower kept at the base's weights, "image" or "text"; "" none
    from_scratch: bool = False   # from-scratch grid: random initial weights although the experiment has a base

    @property
    def slug(self) -> str:
        name = f"c{self.captions_per_image}-n{self.text_noise:g}"
        name += f"-r{self.renderings}" if self.renderings != 1 else ""  # the names runs always had when 1
        name += f"-lock-{self.lock}" if self.lock else ""
        name += "-scratch" if self.from_scratch else ""
        return name + (f"-{self.removal_method}-{self.removal_count}" if self.removal_count else "")


def parse_removal_counts(text: str) -> list[int | float]:
    """'50,150' or '1%,8%,64%': pair counts (int), or fractions of the removable pool (float in (0, 1])."""
    out: list[int | float] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        try:
            value = float(item[:-1]) / 100 if item.endswith("%") else int(item)
        except ValueError:
            raise ClipmemError(f"removal count '{item}': expected a number of pairs (50) or a percentage of the "
                               "scored pairs (8%)") from None
        if (item.endswith("%") and not 0 < value <= 1) or (not item.endswith("%") and value < 1):
            raise ClipmemError(f"removal count '{item}': a count must be >= 1, a percentage in (0%, 100%]")
        out.append(value)
    if not out:
        raise ClipmemError(f"removal counts '{text}' name no count")
    return out


def resolve_removal_counts(counts: list[int | float], pool: int) -> list[int]:
    """Pair counts from counts and fractions of a pool of `pool` removable pairs (each at least 1), ascending."""
    return sorted({n if isinstance(n, int) else max(1, round(n * pool)) for n in counts})


def removable_pool(split_path: Path) -> int:
    """The pairs a baseline run scores, whose removal the grid sweeps: S_C ∪ S_I, or every pair but S_E (k-fold)."""
    from clipmem.scoring.columns import SCORED_SPLITS, SPLITS
    from clipmem.scoring.splits import SplitPlan

    plan = SplitPlan.load(split_path)
    scored = SCORED_SPLITS if plan.folds is None else [s for s in SPLITS if s != "extra"]
    return sum(len(plan.ids[s]) for s in scored)


def grid_settings(grids: list[str], removal_counts=(50, 150), removal_methods=REMOVAL_METHODS) -> list[Setting]:
    """The distinct settings of the named grids; the baseline appears once. The removal grid crosses
    `removal_methods` with `removal_counts`."""
    unknown = [g for g in grids if g not in GRIDS]
    if unknown:
        raise ClipmemError(f"unknown grid {', '.join(unknown)}; known: {', '.join(GRIDS)}")
    unknown = [m for m in removal_methods if m not in REMOVAL_METHODS]
    if unknown or not removal_methods:  # checked with any grid, so a mistyped option is never silently ignored
        raise ClipmemError(f"unknown removal method {', '.join(unknown) or '(none given)'}; known: "
                           f"{', '.join(REMOVAL_METHODS)}")
    settings = [Setting()]
    if "captions" in grids:
        settings += [Setting(captions_per_image=k) for k in CAPTIONS]
    if "text-noise" in grids:
        settings += [Setting(text_noise=s) for s in TEXT_NOISE]
    if "images-captions" in grids:
        # the published 1 or 5 images x 1 or 5 captions, with renderings of the scene as the images
        settings += [Setting(renderings=r, captions_per_image=c)
                     for r in IMAGES_CAPTIONS_VALUES for c in IMAGES_CAPTIONS_VALUES]
    if "removal" in grids:
        if any(n < 1 for n in removal_counts):
            raise ClipmemError(f"removal counts must be >= 1, got {list(removal_counts)}")
        settings += [Setting(removal_method=m, removal_count=n) for m in removal_methods for n in removal_counts]
    if "towers" in grids:
        # the baseline trains both towers; then the image tower alone (text locked), the text tower alone
        settings += [Setting(lock="text"), Setting(lock="image")]
    if "from-scratch" in grids:
        settings += [Setting(from_scratch=True)]
    return list(dict.fromkeys(settings))


def check_pretrained_grids(grids: list[str], train: TrainConfig) -> None:
    """The towers and from-scratch grids start from the experiment's --pretrained base and set the locks
    themselves: refused without the base, or with a lock given for every run."""
    asked = [g for g in grids if g in PRETRAINED_GRIDS]
    if not asked:
        return
    named = f"--grids {','.join(asked)}"
    if train.pretrained is None:
        raise ClipmemError(f"{named} compares runs fine-tuned from a pretrained base: pass --pretrained FILE (an "
                           "open_clip checkpoint, a state dict, or another run's f.pt)")
    if train.lock_image or train.lock_text:
        given = " and ".join(o for o, on in (("--lock-image", train.lock_image), ("--lock-text", train.lock_text))
                             if on)
        raise ClipmemError(f"{given}: {named} sets the towers' locks per run (its baseline trains both towers); "
                           "leave it out")


@dataclass
class Experiment:
    name: str
    path: Path
    grids: list[str]
    seeds: list[int]
    removal_counts: list[int]
    base: RunConfig
    removal_methods: list[str]

    @property
    def base_run(self) -> RunDir:
        return RunDir(self.path / "base")

    def run_dir(self, setting: Setting, seed: int) -> RunDir:
        return RunDir(self.path / "runs" / f"{setting.slug}-s{seed}")

    def run_name(self, setting: Setting, seed: int) -> str:
        return f"{self.name}.{setting.slug}.s{seed}"

    def settings(self) -> list[Setting]:
        return grid_settings(self.grids, self.removal_counts, self.removal_methods)

    def to_json(self) -> dict:
        return {"experiment": self.name, "grids": self.grids, "seeds": self.seeds,
                "removal_counts": self.removal_counts, "removal_methods": self.removal_methods,
                "base": self.base.to_json()}


def open_experiment(path: Path, name: str, grids: list[str], seeds: list[int], removal_counts: list[int | float],
                    base: RunConfig, removal_methods: list[str] | None = None) -> Experiment:
    """Start an experiment directory, or reopen one made with the same recipe (to resume or extend it).

    A float in `removal_counts` is a fraction of the pairs the baseline scores: with the removal grid the base
    split is planned first to count them (parse_removal_counts reads '8%' as 0.08). `removal_methods`: the
    removal grid's methods (None: all of REMOVAL_METHODS)."""
    counts = [n for n in removal_counts if isinstance(n, int)]
    base = with_renderings(base, grids, Path(path) / "experiment.json")
    exp = Experiment(name=name, path=Path(path), grids=grids, seeds=seeds, removal_counts=counts or [1], base=base,
                     removal_methods=list(REMOVAL_METHODS if removal_methods is None else removal_methods))
    exp.settings()  # validates grids and counts before anything is written
    check_pretrained_grids(grids, base.train)
    manifest = exp.path / "experiment.json"
    if manifest.is_file():
        saved = json.loads(manifest.read_text())
        # through RunConfig, so a setting the saved recipe predates reads as what its runs were trained with
        old, new = asdict(RunConfig.from_json(saved.get("base", {}))), asdict(base)
        for section in ("data", "split", "train", "score"):
            if old[section] != new[section]:
                differ = sorted(k for k in old[section].keys() | new[section].keys()
                                if old[section].get(k) != new[section].get(k))
                raise ClipmemError(f"{exp.path} holds experiment '{saved.get('experiment')}' made with other "
                                   f"{section} settings ({', '.join(differ)}); use another --out, or --overwrite "
                                   "to start again")
        if saved.get("experiment") != name:
            raise ClipmemError(f"{exp.path} holds experiment '{saved.get('experiment')}', not '{name}'")
    exp.path.mkdir(parents=True, exist_ok=True)
    exp.removal_counts = counts
    if "removal" in grids and any(isinstance(n, float) for n in removal_counts):
        prepare_base(exp)
        exp.removal_counts = resolve_removal_counts(removal_counts, removable_pool(exp.base_run.split))
    write_json(manifest, exp.to_json())
    return exp


def with_renderings(base: RunConfig, grids: list[str], manifest: Path) -> RunConfig:
    """The base recipe with the built-in set rendering each scene as often as the grids train on (or as often as
    the experiment's data already does, when it is reopened): renderings beyond the first leave it unchanged."""
    if base.data.kind != "synthetic" or base.data.path is not None:
        return base  # the user's data: it has the renderings or training says it lacks them
    wanted = max(IMAGES_CAPTIONS_VALUES) if "images-captions" in grids else 1
    if manifest.is_file():
        saved = RunConfig.from_json(json.loads(manifest.read_text()).get("base", {}))
        wanted = max(wanted, saved.data.synth.renderings)
    if wanted <= base.data.synth.renderings:
        return base
    return replace(base, data=replace(base.data, synth=replace(base.data.synth, renderings=wanted)))


def prepare_base(exp: Experiment) -> None:
    """Read the data and plan the split once; every run copies the plan."""
    from clipmem.scoring.pipeline import split_step

    base = exp.base_run
    if base.split.is_file() and base.samples.is_file():
        return
    base.path.mkdir(parents=True, exist_ok=True)
    cfg = exp.base
    if cfg.data.kind == "synthetic" and cfg.data.path is None:
        from clipmem.scoring.data.synthetic import write as write_synthetic

        write_synthetic(cfg.data.synth, base.data)
        cfg = replace(cfg, data=replace(cfg.data, path=str(base.data.resolve())))
    split_step(base, cfg)


def base_config(exp: Experiment) -> RunConfig:
    """The recipe every run starts from: the base config, with the generated data read as a folder."""
    if exp.base_run.config.is_file():
        return exp.base_run.load_config()
    return exp.base


def removal_ids(baseline: RunDir, method: str, count: int, seed: int) -> list[str]:
    """The `count` scored pairs of the baseline run to remove: by CLIPMem, by similarity, or at random."""
    import numpy as np
    import pandas as pd

    scores = pd.read_parquet(baseline.scores, columns=["sample_id", "clipmem_raw", "clipscore_g"])
    if count > len(scores):
        raise ClipmemError(f"cannot remove {count} pairs: the baseline run scores only {len(scores)}")
    if method == "top-clipmem":
        order = np.argsort(-scores["clipmem_raw"].to_numpy(), kind="stable")
    elif method == "lowest-similarity":
        # the CLIPScore filter: lowest image-caption cosine under the model that did not train on the pair
        order = np.argsort(-scores["clipscore_g"].to_numpy(), kind="stable")
    elif method == "random":
        order = np.random.default_rng(seed).permutation(len(scores))
    else:
        raise ClipmemError(f"unknown removal method '{method}'; known: {', '.join(REMOVAL_METHODS)}")
    return scores["sample_id"].to_numpy()[order[:count]].tolist()


def plan_run(exp: Experiment, setting: Setting, seed: int) -> RunDir:
    """Write the run directory's config, shared split files and experiment.json (unless already there)."""
    run = exp.run_dir(setting, seed)
    cfg = base_config(exp)
    remove = []
    if setting.removal_count:
        baseline = exp.run_dir(Setting(), seed)
        baseline.require_finished()
        remove = removal_ids(baseline, setting.removal_method, setting.removal_count, seed)
    cfg = replace(cfg, train=replace(cfg.train, captions_per_image=setting.captions_per_image,
                                     text_noise=setting.text_noise, renderings=setting.renderings,
                                     remove_ids=remove, init_seed=seed, data_seed=seed))
    if setting.lock:
        cfg = replace(cfg, train=replace(cfg.train, **{f"lock_{setting.lock}": True}))
    if setting.from_scratch:
        # random weights with the from-scratch recipe's learning rate and warm-up (the base recipe has the
        # fine-tuning ones, config.FINE_TUNE_RECIPE), as a run without --pretrained would train; the same epochs
        scratch = TrainConfig()
        cfg = replace(cfg, train=replace(cfg.train, pretrained=None, pretrained_sha256=None, lr=scratch.lr,
                                         warmup_steps=scratch.warmup_steps))
    params = {"experiment": exp.name, "seed": seed, **asdict(setting)}
    if run.config.is_file():
        saved = run.load_config()
        if asdict(saved.train) != asdict(cfg.train):
            raise ClipmemError(f"{run.path} was trained with other settings than this experiment asks for; "
                               "use another --out, or --overwrite")
        return run
    run.path.mkdir(parents=True, exist_ok=True)
    for name in SHARED_FILES:
        src = exp.base_run.path / name
        if src.is_file():
            shutil.copy2(src, run.path / name)
    run.save_config(cfg)
    write_json(run.experiment, params)
    return run


def _start_worker(run: RunDir, threads: int) -> subprocess.Popen:
    """Train and score one planned run in a process of its own (`python -m clipmem experiment-worker RUN_DIR THREADS`).

    A fresh interpreter rather than a multiprocessing pool: a spawned pool worker re-imports the
    parent's `__main__`, which is whatever script started clipmem (a test runner, a notebook, a
    Streamlit page), not scoring. Its output goes to RUN_DIR/worker.log.
    """
    log = open(run.path / "worker.log", "w")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    try:
        return subprocess.Popen([sys.executable, "-m", "clipmem", "experiment-worker", str(run.path), str(threads)],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    finally:
        log.close()


def worker_main(path: Path, threads: int) -> None:
    import torch

    torch.set_num_threads(int(threads))
    from clipmem.scoring.pipeline import run_all

    run = RunDir(path)
    run_all(run, run.load_config(), resume=True, show_progress=False)


def worker_layout(jobs: int, device: str) -> tuple[int, int]:
    """(parallel runs, torch threads per run). CUDA runs one at a time; CPU runs share the cores."""
    cores = os.cpu_count() or 1
    if jobs <= 0:
        import torch

        cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        jobs = 1 if cuda else max(1, min(cores, 4))
    return jobs, max(1, cores // jobs)


def run_experiment(exp: Experiment, jobs: int = 0, on_finished: Callable[[RunDir, str], None] | None = None,
                   progress: Callable[[str, int, int], None] | None = None) -> list[RunDir]:
    """Train and score every (setting, seed) not finished yet; returns all the experiment's run dirs.

    `on_finished(run, name)` is called in this process for each finished run (also the ones
    finished earlier), e.g. to ingest it. `progress(message, done, total)` reports each step.
    """
    prepare_base(exp)
    settings = exp.settings()
    tasks = [(s, seed) for seed in exp.seeds for s in settings]
    first = [t for t in tasks if not t[0].removal_count]
    later = [t for t in tasks if t[0].removal_count]
    done = [t for t in tasks if exp.run_dir(*t).is_finished()]
    total = len(tasks)
    report = progress or (lambda message, n, of: None)
    report(f"{len(done)} of {total} runs already finished", len(done), total)
    finished_runs = []

    def finish(task):
        run = exp.run_dir(*task)
        finished_runs.append(run)
        if on_finished is not None:
            on_finished(run, exp.run_name(*task))

    for task in done:
        finish(task)
    n_jobs, threads = worker_layout(jobs, exp.base.train.device)
    pending = [t for t in first if t not in done]
    waiting = [t for t in later if t not in done]
    running: dict[subprocess.Popen, tuple] = {}

    def ready():
        yield from pending
        yield from (t for t in waiting if exp.run_dir(Setting(), t[1]).is_finished())

    try:
        while pending or waiting or running:
            for task in list(ready()):
                if len(running) >= n_jobs:
                    break
                running[_start_worker(plan_run(exp, *task), threads)] = task
                (pending if task in pending else waiting).remove(task)
            if not running:
                break  # removal runs whose baseline never finished
            time.sleep(0.2)
            for proc in [p for p in running if p.poll() is not None]:
                task = running.pop(proc)
                run = exp.run_dir(*task)
                if proc.returncode != 0 or not run.is_finished():
                    tail = (run.path / "worker.log").read_text(errors="replace").strip().splitlines()[-1:]
                    raise ClipmemError(f"run {run.path} failed ({tail[0] if tail else f'exit {proc.returncode}'}; "
                                       f"log: {run.path / 'worker.log'}); rerun the same command to resume")
                done.append(task)
                report(f"finished {exp.run_name(*task)}", len(done), total)
                finish(task)
    finally:
        stop_processes(running)  # on a failure or Ctrl-C (or SIGTERM in `clipmem experiment`), no run keeps training
    if waiting:
        raise ClipmemError("removal runs could not start: their baseline runs did not finish")
    return finished_runs


def report_rows(exp_path: Path) -> list[dict]:
    """One row per finished run of the experiment directory (see experiment_report.run_row)."""
    import pandas as pd

    from clipmem.scoring.experiment_report import common_pair_means, run_row, scores_quality

    rows, frames = [], {}
    for run_path in sorted((Path(exp_path) / "runs").glob("*")):
        run = RunDir(run_path)
        if not run.is_finished() or not run.experiment.is_file():
            continue
        scores = pd.read_parquet(run.scores, columns=["sample_id", "truth", "clipmem_raw", "clipmem"])
        metrics = json.loads(run.metrics.read_text())
        row = run_row(json.loads(run.experiment.read_text()), scores["clipmem_raw"].mean(), scores["clipmem"].mean(),
                      {m: metrics.get(m, {}) for m in ("f", "g")}, scores_quality(scores))
        row["run"] = run_path.name
        # the removal grid's pool (scored plus removed pairs) and the noise placement, for experiment_report's
        # published counterparts
        row["scored_pairs"] = len(scores)
        row["text_noise_on"] = run.load_config().train.text_noise_on
        row["train_seconds"] = metrics.get("timings", {}).get("train_seconds")
        rows.append(row)
        frames[run_path.name] = scores
    common_pair_means(rows, frames)
    return rows


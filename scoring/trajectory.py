"""CLIPMem over training time: when is a pair memorized? (issue 19, docs/trajectory.md)

With `--track-epochs` (TrainConfig.track_epochs) f and g are scored right after the optimisation of each tracked
epoch, exactly as the final scoring scores them: the run's seeded views, caption draws and reference captions
(score.view_draws, score.view_alignments, score.score_null), so the rows of the last epoch equal scores.parquet's.
The scored pairs and the S_E null pairs go to trajectory.parquet (columns.TRAJECTORY_COLUMNS), per pair and epoch.

Scoring in the middle of training must leave training as it would have been: the models are scored in evaluation
mode (a BatchNorm's running statistics do not move) and put back in the modes they had, and the global random
streams are forked, so a tracked run's weights are bit-identical to an untracked one's (training draws from seeded
generators of its own anyway: scoring.train.step_generator).

From the trajectory the score step adds per pair (columns.DYNAMICS_COLUMNS): mem_epoch, the first tracked epoch at
which the raw score exceeds the 95th percentile of the null's raw score at that epoch in the pair's direction;
mem_auc, the area under the raw-score curve over the fraction of training done, from (0, 0): f and g start from the
same weights, so every pair's raw score is exactly 0 before training; mem_variability, the standard deviation of the
raw score over the tracked epochs (Data Maps' variability, Swayamdipta et al. 2020).
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import pandas as pd
import torch

from clipmem.scoring.columns import DYNAMICS_NAMES, TRAJECTORY_COLUMNS
from clipmem.scoring.config import RunConfig, ScoreConfig, TrainConfig
# the torch-free summaries live in scoring.dynamics (the backend computes with them too); tag_curves is imported
# from here by the report
from clipmem.scoring.dynamics import AUC, THRESHOLD, pair_dynamics, tag_curves, thresholds  # noqa: F401
from clipmem.scoring.errors import ClipmemError
from clipmem.scoring.rundir import RunDir, atomic_write
from clipmem.scoring.schemes import trained_on
from clipmem.scoring.score import (encode_captions, prepare_model, reference_set, score_null, scored_rows,
                                   view_alignments, view_draws, view_images, with_without)

EVERY = "every:"


def parse_track_epochs(text: str, epochs: int) -> list[int]:
    """The epochs `--track-epochs` names: a comma list (5,10,20,40) or every:K (K, 2K, ...), sorted, without
    repeats, always ending with the last epoch."""
    text = text.strip()
    if text.startswith(EVERY):
        step = text[len(EVERY):].strip()
        if not step.isdigit() or int(step) < 1:
            raise ClipmemError(f"--track-epochs '{text}': every:K needs a whole number of epochs K >= 1, e.g. every:5")
        if int(step) > epochs:
            raise ClipmemError(f"--track-epochs '{text}': K = {step} is beyond the run's {epochs} epochs (--epochs)")
        chosen = set(range(int(step), epochs + 1, int(step)))
    else:
        chosen = set()
        for part in text.split(","):
            part = part.strip()
            if not part.lstrip("-").isdigit():
                raise ClipmemError(f"--track-epochs: '{part}' is not an epoch number; give a list such as 5,10,20,40 "
                                   "or every:K")
            if not 1 <= int(part) <= epochs:
                raise ClipmemError(f"--track-epochs: epoch {int(part)} is outside 1..{epochs} (the run trains "
                                   f"{epochs} epochs, --epochs)")
            chosen.add(int(part))
    return sorted(chosen | {epochs})


def check_trackable(cfg: TrainConfig, scheme: str, distributed: bool = False, only: list[str] | None = None) -> None:
    """Refuse, in one line, a recipe whose training cannot be tracked (or a track list that is not one)."""
    tracked = cfg.track_epochs
    if not tracked:
        return
    if list(tracked) != sorted(set(tracked)) or tracked[0] < 1 or tracked[-1] != cfg.epochs:
        raise ClipmemError(f"the tracked epochs {list(tracked)} should increase within 1..{cfg.epochs} and end with the "
                           f"last, {cfg.epochs}: give --track-epochs for this recipe")
    if scheme != "published":
        raise ClipmemError(f"--track-epochs tracks f and g of the published scheme, not the {scheme} scheme's "
                           "fold models")
    if cfg.replicas > 1:
        raise ClipmemError(f"--track-epochs tracks one set of models, not {cfg.replicas} replicas (--replicas)")
    if distributed:
        raise ClipmemError("--track-epochs scores f and g in the training process: train without torchrun")
    if only:
        raise ClipmemError("--track-epochs scores f and g together at each tracked epoch: train them in one job, "
                           "without --only")


@contextmanager
def scoring_pause(models: dict, device: torch.device):
    """Score models in the middle of training: each module's train/eval mode and the global random state (CPU and
    the device's) are as they were afterwards."""
    modes = {name: [(m, m.training) for m in model.modules()] for name, model in models.items()}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            yield
        finally:
            for pairs in modes.values():
                for module, training in pairs:
                    module.training = training


def epoch_rows(models: dict, corpus, score_cfg: ScoreConfig, train_cfg: TrainConfig, device: torch.device,
               epoch: int) -> pd.DataFrame:
    """trajectory.parquet's rows of one epoch: the scored pairs, then the null's S_E pairs once per direction.

    The scored pairs' alignments are score._score's, from the same pieces: the same views and captions for all
    pairs (view_draws), their images encoded in the same batches (view_images); their captions are encoded without
    the rest of the corpus's (which only the final scoring's CLIPScore baselines and embeddings use)."""
    with scoring_pause(models, device):
        for model in models.values():  # outside inference mode: moved parameters stay ordinary tensors
            prepare_model(model, device)
        with torch.inference_mode():
            scored = scored_rows(corpus)
            ref_idx = reference_set(corpus, score_cfg.reference_captions, score_cfg.seed)
            views, caption_idx = view_draws(corpus, scored, score_cfg, train_cfg)
            images = view_images(models, corpus, scored, views, score_cfg, train_cfg, device)
            cos, con, tables = [], [], {}
            for name, model in models.items():
                tables[name] = encode_captions(model, corpus, torch.cat([caption_idx, ref_idx]),
                                               score_cfg.batch_size, device)
                c, k, _ = view_alignments(model, corpus, scored, views, caption_idx, tables[name], ref_idx, score_cfg,
                                          train_cfg, device, image=images[name])
                cos.append(c)
                con.append(k)
            seen = trained_on(corpus, scored)
            with_cos, without_cos = with_without(torch.stack(cos), seen)
            with_con, without_con = with_without(torch.stack(con), seen)
        align_f, align_g = with_cos.mean(1).numpy(), without_cos.mean(1).numpy()
        frame = pd.DataFrame({
            "sample_id": [corpus.ids[r] for r in scored.tolist()],
            "null_for": None,
            "align_f": align_f,
            "align_g": align_g,
            "clipmem_raw": align_f - align_g,
            "clipmem_contrastive_raw": with_con.mean(1).numpy() - without_con.mean(1).numpy(),
        })
        null = score_null(models, corpus, score_cfg, train_cfg, device, tables)
    frame = pd.concat([frame, null[list(frame.columns)]], ignore_index=True) if len(null) else frame
    frame.insert(1, "epoch", epoch)
    return frame[list(TRAJECTORY_COLUMNS)]


class Tracker:
    """Scores f and g at the tracked epochs of a training and keeps trajectory.parquet (scoring.train.train_models
    calls `start` once it knows the epoch it starts from, and `after_epoch` after each epoch)."""

    def __init__(self, path, corpus, cfg: RunConfig, device: torch.device):
        self.path, self.corpus, self.cfg, self.device = path, corpus, cfg, device
        self.epochs = set(cfg.train.track_epochs)
        self.seconds = 0.0

    def start(self, start_epoch: int, models: dict) -> None:
        """A fresh training drops any earlier trajectory; one resumed after epoch e keeps the rows up to e (later
        ones belong to epochs it trains again) and scores epoch e now if it is tracked and missing."""
        if start_epoch == 0 or not self.path.is_file():
            self.path.unlink(missing_ok=True)
            kept = None
        else:
            kept = pd.read_parquet(self.path)
            kept = kept[kept["epoch"] <= start_epoch]
            self._write(kept)
        if start_epoch in self.epochs and (kept is None or not (kept["epoch"] == start_epoch).any()):
            self.after_epoch(start_epoch, models)

    def after_epoch(self, epoch: int, models: dict) -> None:
        if epoch not in self.epochs:
            return
        t0 = time.perf_counter()
        rows = epoch_rows(models, self.corpus, self.cfg.score, self.cfg.train, self.device, epoch)
        if self.path.is_file():
            rows = pd.concat([pd.read_parquet(self.path), rows], ignore_index=True)
        self._write(rows)
        self.seconds += time.perf_counter() - t0

    def _write(self, frame: pd.DataFrame) -> None:
        with atomic_write(self.path) as tmp:
            frame.to_parquet(tmp, index=False)


def tracker_for(run: RunDir, cfg: RunConfig, corpus, device: torch.device, resume: bool) -> Tracker | None:
    """The run's tracker, or None for an untracked recipe; a fresh untracked training removes the trajectory of an
    earlier training of the run, which its new models would not have."""
    if cfg.train.track_epochs:
        return Tracker(run.trajectory, corpus, cfg, device)
    if not resume:
        run.trajectory.unlink(missing_ok=True)
    return None


def with_dynamics(run: RunDir, cfg: RunConfig, frame: pd.DataFrame) -> tuple[pd.DataFrame, dict | None]:
    """The score frame with the dynamics columns of its pairs, and metrics.json's "trajectory" section; unchanged
    (and None) for a run without trajectory.parquet."""
    if not run.trajectory.is_file():
        return frame, None
    trajectory = pd.read_parquet(run.trajectory)
    frame = frame.copy()
    frame[list(DYNAMICS_NAMES)] = pair_dynamics(frame, trajectory, cfg.train.epochs)
    limits = thresholds(trajectory)
    section = {"epochs": sorted(int(e) for e in trajectory["epoch"].unique()), "threshold": THRESHOLD,
               "thresholds": {str(e): v for e, v in limits.items()}, "auc": AUC,
               "memorized_pairs": int(frame["mem_epoch"].notna().sum())}
    if not limits:
        section["missing"] = "the run has no S_E pairs, so no null to set the threshold: mem_epoch is null"
    return frame, section

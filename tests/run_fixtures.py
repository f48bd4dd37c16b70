"""The tiny data set and run config shared by the test suites (imported by tests/conftest.py and tests)."""

from __future__ import annotations

from pathlib import Path

from clipmem.scoring.config import DataConfig, RunConfig, SplitConfig, TrainConfig
from clipmem.scoring.config import SynthConfig
from clipmem.scoring.splits import SplitSizes

TINY_SYNTH = SynthConfig(n_pairs=900, seed=3, faults={"swapped": 0.05, "vague": 0.01, "atypical": 0.02})
TINY_SIZES = SplitSizes(shared=600, candidate=120, independent=120, extra=60)


def tiny_run_config(data_path: Path, epochs: int = 25, seed: int = 0) -> RunConfig:
    return RunConfig(
        data=DataConfig(kind="folder", path=str(data_path)),
        split=SplitConfig(sizes=TINY_SIZES, seed=seed),
        train=TrainConfig(model="clipmem-tiny", epochs=epochs, batch_size=128, warmup_steps=10,
                          init_seed=seed, data_seed=seed),
    )


def split_tiny_run(path: Path, data_path: Path, epochs: int = 2):
    """A tiny run directory with its split planned and nothing trained: (RunDir, RunConfig)."""
    from clipmem.scoring.pipeline import split_step
    from clipmem.scoring.rundir import RunDir

    run = RunDir(path)
    cfg = tiny_run_config(data_path, epochs=epochs)
    run.prepare_new(overwrite=False)
    split_step(run, cfg)
    return run, cfg


def train_watched(planned, tmp_path: Path, **train_options):
    """Train f and g of a planned run (RunDir, RunConfig) with these train options, in this process; returns
    (models, the batches seen as (model name, rows, images, text), corpus)."""
    from dataclasses import replace

    from clipmem.scoring.models import create_model
    from clipmem.scoring.pipeline import load_corpus
    from clipmem.scoring.schemes import PUBLISHED_MODELS
    from clipmem.scoring.train import train_models

    run, cfg = planned
    cfg = replace(cfg, train=replace(cfg.train, **train_options))
    corpus, _, model_cfg = load_corpus(run, cfg)
    models = {name: create_model(model_cfg, cfg.train.init_seed) for name in PUBLISHED_MODELS}
    seen = []
    train_models(models, corpus, cfg.train, tmp_path / "ck", tmp_path / "log.jsonl", show_progress=False,
                 batch_hook=lambda name, rows, images, text: seen.append((name, rows.clone(), images.clone(),
                                                                           text.clone())))
    return models, seen, corpus


def weights(model):
    """Every floating-point tensor of the model's state, flattened into one."""
    import torch

    return torch.cat([p.detach().flatten() for p in model.state_dict().values() if p.dtype.is_floating_point])


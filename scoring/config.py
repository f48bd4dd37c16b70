"""One config object per pipeline step; together they are saved as the run's config.json."""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field, fields

from clipmem.scoring.data.base import SourceOptions
from clipmem.scoring.data.synthetic import SynthConfig
from clipmem.scoring.splits import SplitSizes
from clipmem.scoring.transform import AugmentConfig


@dataclass
class DataConfig:
    kind: str = "synthetic"          # synthetic | folder | coco | csv | webdataset
    path: str | None = None          # None with synthetic: generated inside the run dir
    synth: SynthConfig = field(default_factory=SynthConfig)
    options: SourceOptions = field(default_factory=SourceOptions)
    on_error: str = "fail"           # fail | skip (skipped items go to skipped.jsonl)
    inject: dict[str, float] = field(default_factory=dict)  # tag -> fraction of S_C and of S_I
    inject_seed: int = 0


@dataclass
class SplitConfig:
    sizes: SplitSizes = field(default_factory=SplitSizes)
    seed: int = 0
    scheme: str = "published"        # published (S_S/S_C/S_I/S_E, models f and g) | kfold
    folds: int = 0                   # kfold: number of folds K >= 2 (K models)


@dataclass
class TrainConfig:
    model: str = "clipmem-demo"
    epochs: int = 80
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    init_seed: int = 0               # f and g start from the same weights
    data_seed: int = 0               # batch order, caption draws and augmentations
    captions_per_image: int = 0      # 0: all of a pair's captions; k: the first k, one drawn per step
    text_noise: float = 0.0          # σ of Gaussian noise added to text embeddings in training (0: none)
    image_views: int = 0             # 0: a fresh augmentation every step; k: k fixed views per pair, one drawn per step
    remove_ids: list[str] = field(default_factory=list)  # pairs left out of training (and of scoring)
    compact_vocab: bool = True       # shrink the token table to the tokens the data uses
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    device: str = "auto"             # auto | cpu | cuda
    keep_checkpoints: int = 2        # per-epoch checkpoints kept for --resume


@dataclass
class ScoreConfig:
    views: int = 8
    seed: int = 1234
    reference_captions: int = 256    # reference set size for the contrastive variant
    batch_size: int = 1024
    towers: bool = True              # image-side / text-side scores and the encoder-swap check
    layers: bool = True              # LayerMem curves of both towers
    layer_curves_top_k: int = 50     # per-pair layer curves kept for the most memorized pairs


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)

    def to_json(self) -> dict:
        import open_clip
        import torch

        from clipmem import __version__

        return {
            **asdict(self),
            "versions": {
                "clipmem": __version__,
                "torch": torch.__version__,
                "open_clip": open_clip.__version__,
                "python": platform.python_version(),
            },
        }

    @classmethod
    def from_json(cls, raw: dict) -> "RunConfig":
        return _build(cls, raw)


def _build(cls, raw: dict):
    """Rebuild nested dataclasses from their asdict() form, ignoring unknown keys."""
    kwargs = {}
    for f in fields(cls):
        if f.name not in raw:
            continue
        value = raw[f.name]
        sub = f.default_factory if f.default_factory is not None else None  # type: ignore[misc]
        if sub is not None and hasattr(sub, "__dataclass_fields__") and isinstance(value, dict):
            value = _build(sub, value)
        kwargs[f.name] = value
    return cls(**kwargs)

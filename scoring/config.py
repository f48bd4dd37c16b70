"""One config object per pipeline step; together they are saved as the run's config.json.

Torch-free, like the rest of the run-directory contract: the backend loads run configs too.
"""

from __future__ import annotations

import importlib.util
import platform
import runpy
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar

from clipmem.scoring.errors import ClipmemError
from clipmem.scoring.splits import SplitSizes


@dataclass
class SynthConfig:
    """Everything that determines the synthetic set (checked by scoring.data.synthetic.check_config)."""

    n_pairs: int = 3300
    image_size: int = 32
    captions_per_image: int = 5
    two_object_rate: float = 0.25
    seed: int = 0
    # renderings of each scene: 1 = the image alone; k > 1 adds k - 1 more (new noise, position and size jitter,
    # the same scene and captions), written beside it for training with TrainConfig.renderings
    renderings: int = 1
    # Fault rates are fractions of all pairs; the split plan places every faulty
    # pair in the scored splits (S_C and S_I), so with the default demo split
    # (2,400 / 300 / 300 / 300) 1.5% of all pairs is 8% of the scored ones.
    faults: dict[str, float] = field(
        default_factory=lambda: {
            "swapped": 0.015,
            "wrong_attribute": 0.006,
            "vague": 0.005,
            "atypical": 0.009,
            "duplicate": 0.005,
        }
    )


@dataclass(frozen=True)
class SourceOptions:
    """How to read a source; the names follow open_clip's own options where they exist."""

    csv_img_key: str = "filepath"
    csv_caption_key: str = "title"
    csv_separator: str = "\t"
    wds_caption_key: str = "caption"   # key inside a .json caption member
    coco_images: str | None = None     # COCO image folder; default: beside the annotation JSON
    label_key: str | None = None       # a per-image label for the linear probe: CSV column or folder attribute


@dataclass(frozen=True)
class AugmentConfig:
    """The training views (scoring.transform): a small shift plus brightness/contrast jitter."""

    max_shift: int = 3
    brightness: float = 0.1
    contrast: float = 0.1
    enabled: bool = True


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


# the recipe --pretrained starts from where the user sets no other (scoring.cli): a tenth of the from-scratch peak
# learning rate, so the first steps refine the pretrained features instead of overwriting them; a short warm-up,
# which only has to settle AdamW's moment estimates, since the weights already sit in a trained basin; and half the
# demo's epochs, since the models start near a solution (docs/fine-tuning.md)
FINE_TUNE_RECIPE = {"lr": 2e-4, "warmup_steps": 10, "epochs": 20}

# where training adds the text-embedding noise (TrainConfig.text_noise_on; scoring.train.noisy_text_forward)
TEXT_NOISE_PLACEMENTS = ("normalized", "projection")


@dataclass
class TrainConfig:
    # the built-in demo: a ResNet image tower that learns shape as well as colour in 40 epochs (docs/experiments.md)
    model: str = "clipmem-demo-shape"
    epochs: int = 40
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    init_seed: int = 0               # f and g start from the same weights
    data_seed: int = 0               # batch order, caption draws and augmentations
    captions_per_image: int = 0      # 0: all of a pair's captions; k: the first k, one drawn per step
    text_noise: float = 0.0          # σ of Gaussian noise added to text embeddings in training (0: none)
    text_noise_on: str = "normalized"  # normalized: on the unit text embedding | projection: before normalising
    image_views: int = 0             # 0: a fresh augmentation every step; k: k fixed views per pair, one drawn per step
    renderings: int = 1              # 1: each pair's image; k: its first k renderings (data with them), one per step
    remove_ids: list[str] = field(default_factory=list)  # pairs left out of training (and of scoring)
    compact_vocab: bool = True       # shrink the token table to the tokens the data uses
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    device: str = "auto"             # auto | cpu | cuda
    keep_checkpoints: int = 2        # per-epoch checkpoints kept for --resume
    replicas: int = 1                # independently seeded sets of the models on the same split; scores: their mean
    # the epochs after which f and g are scored (trajectory.parquet; scoring.trajectory, docs/trajectory.md): sorted,
    # ending with the last epoch; empty: not tracked
    track_epochs: list[int] = field(default_factory=list)
    # fine-tuning (--pretrained): every model starts from these weights instead of init_seed's; the file's SHA-256
    # says which base a run used. Locks as open_clip_train's options, applied by the model's lock_*_tower
    pretrained: str | None = None
    pretrained_sha256: str | None = None
    lock_image: bool = False
    lock_image_unlocked_groups: int = 0
    lock_image_freeze_bn_stats: bool = False
    lock_text: bool = False
    lock_text_unlocked_layers: int = 0
    lock_text_freeze_layer_norm: bool = False

    # what a field missing from a saved config means, where that differs from the default of new runs: runs
    # saved before the field existed were trained the old way
    MISSING_MEANS: ClassVar[dict] = {"text_noise_on": "projection"}


@dataclass
class ScoreConfig:
    views: int = 8
    seed: int = 1234
    reference_captions: int = 256    # reference set size for the contrastive variant
    batch_size: int = 1024
    towers: bool = True              # image-side / text-side scores and the encoder-swap check
    layers: bool = True              # LayerMem curves of both towers
    layer_curves_top_k: int = 50     # per-pair layer curves kept for the most memorized pairs
    fdr: float = 0.05                # false discovery rate of the `memorized` flag (BH over the scored pairs)


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)

    def to_json(self) -> dict:
        from clipmem import __version__

        return {
            **asdict(self),
            "versions": {
                "clipmem": __version__,
                "torch": package_version("torch"),
                "open_clip": package_version("open_clip"),
                "python": platform.python_version(),
            },
        }

    @classmethod
    def from_json(cls, raw: dict) -> "RunConfig":
        return _build(cls, raw)


def _build(cls, raw: dict, where: str = "the settings"):
    """Rebuild nested dataclasses from their asdict() form, ignoring unknown keys."""
    if not isinstance(raw, dict):
        raise TypeError(f"{where} should be a JSON object, not {raw!r}")
    kwargs = {}
    missing_means = getattr(cls, "MISSING_MEANS", {})
    for f in fields(cls):
        if f.name not in raw:
            if f.name in missing_means:
                kwargs[f.name] = missing_means[f.name]
            continue
        value = raw[f.name]
        sub = f.default_factory if f.default_factory is not None else None  # type: ignore[misc]
        if sub is not None and hasattr(sub, "__dataclass_fields__"):
            value = _build(sub, value, f"'{f.name}'")
        kwargs[f.name] = value
    return cls(**kwargs)


def package_version(package: str) -> str:
    """The package's own `__version__`, read from its version.py without importing the package (importing
    torch takes seconds and the backend never loads it). Not the distribution's metadata: torch's
    `__version__` names its build (e.g. '2.14.1+cu130') where the metadata may say '2.14.1'."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ClipmemError(f"package {package} is not installed")
    return str(runpy.run_path(str(Path(spec.submodule_search_locations[0]) / "version.py"))["__version__"])

"""The scoring layer's commands (synth, split, train, score, run, report, export-splits, experiment, ...),
added to the `clipmem` command by the composition root, clipmem/cli.py."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from clipmem.scoring.console import console
from clipmem.scoring.console import fail as _fail
from clipmem.scoring.errors import ClipmemError

app = typer.Typer()

# the removal grid's N: the published curve's 50, 100, ..., 3200 of 5,000 candidates as fractions of the pairs the
# baseline scores (6, 12, 24, 48, 96, 192, 384 of the built-in set's 600)
DEFAULT_REMOVAL_COUNTS = "1%,2%,4%,8%,16%,32%,64%"
# clipmem-demo-shape learns shape in 40 epochs, the default run's recipe; docs/experiments.md gives the grid's time
EXPERIMENT_EPOCHS = 40
# 5 settings, 15 runs with 3 seeds: on a slow 2-core CPU the text-noise grid alone takes over an hour
# (docs/experiments.md, "Time"), so it runs on request like removal and images-captions
DEFAULT_GRIDS = "captions"
SIZES_HELP = ("Split sizes as SHARED,CANDIDATE,INDEPENDENT,EXTRA: counts (2400,300,300,300) or fractions "
              "of the dataset (0.7,0.1,0.1,0.1; fractions summing to 1 use every pair). S_S trains both models, "
              "S_C only f, S_I only g, S_E neither.")




def _given_options(ctx: typer.Context, keep: tuple[str, ...]) -> list[str]:
    """The options given on the command line (or by environment), but those in `keep`, as flags."""
    # by the source's name: typer ships its own copy of click, whose enum differs from click's
    sources = {param.name: ctx.get_parameter_source(param.name) for param in ctx.command.params}
    return [param.opts[0] for param in ctx.command.params if param.name not in keep
            and sources[param.name] is not None and sources[param.name].name not in ("DEFAULT", "DEFAULT_MAP")]


def _refuse_settings_on_resume(ctx: typer.Context, keep: tuple[str, ...]) -> None:
    """--resume continues with the settings the run saved; an option that would change them is refused, not
    ignored. `keep` names those that may differ (where the run continues, not how)."""
    given = _given_options(ctx, keep)
    if given:
        raise ClipmemError(f"--resume continues with the run's saved settings; drop {', '.join(given)} "
                           "(or start the run again with --overwrite)")



def _no_ingester():
    raise ClipmemError("--ingest needs the backend: run this command as `clipmem experiment`")


_experiment_ingester = _no_ingester


def use_experiment_ingester(factory) -> None:
    """Set the context manager that `clipmem experiment --ingest` stores finished runs with; it yields a
    callback taking (RunDir, run name). The composition root passes the backend's."""
    global _experiment_ingester
    _experiment_ingester = factory

def _parse_sizes(text: str):
    from clipmem.scoring.splits import SplitSizes

    try:
        parts = [float(p) for p in text.split(",")]
        if len(parts) != 4:
            raise ValueError
    except ValueError:
        raise ClipmemError(f"--sizes '{text}': expected four comma-separated numbers, e.g. 2400,300,300,300") from None
    return SplitSizes(*parts)


def _run_config(dataset: str, data: Optional[Path], sizes: Optional[str], split_seed: Optional[int],
                source: Optional[dict] = None, scheme: Optional[str] = None, folds: Optional[int] = None):
    from clipmem.scoring.config import DataConfig, RunConfig, SourceOptions, SplitConfig
    from clipmem.scoring.data.inject import check_rates
    from clipmem.scoring.data.sources import SOURCE_KINDS
    from clipmem.scoring.data.synthetic import parse_rates

    source = source or {}
    cfg = RunConfig()
    if dataset not in SOURCE_KINDS:
        raise ClipmemError(f"unknown --dataset '{dataset}'; known: {', '.join(SOURCE_KINDS)}")
    if dataset != "synthetic" or data is not None:
        if data is None:
            raise ClipmemError(f"--dataset {dataset} needs --data PATH")
        # brace patterns of shards are not paths; keep them as given
        path = str(data) if dataset == "webdataset" else str(Path(data).resolve())
        cfg.data = DataConfig(kind=dataset, path=path)
    inject = parse_rates(source.pop("inject", None) or "")
    check_rates(inject)
    on_error = source.pop("on_error", None) or "fail"
    if on_error not in ("fail", "skip"):
        raise ClipmemError(f"--on-error must be fail or skip, got '{on_error}'")
    options = SourceOptions(**{k: v for k, v in source.items() if v is not None})
    cfg.data = replace(cfg.data, options=options, on_error=on_error, inject=inject)
    split = SplitConfig()
    if sizes:
        split = replace(split, sizes=_parse_sizes(sizes))
    if split_seed is not None:
        split = replace(split, seed=split_seed)
    if scheme is not None or folds is not None:
        split = replace(split, scheme=scheme or ("kfold" if folds else "published"), folds=folds or 0)
        from clipmem.scoring.pipeline import check_scheme

        cfg.split = split
        check_scheme(cfg)
    cfg.split = split
    return cfg


@dataclass(frozen=True)
class TrainOverrides:
    """The training options of a command; None (or False) keeps the run's setting."""

    model: Optional[str] = None
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    seed: Optional[int] = None
    captions_per_image: Optional[int] = None
    device: Optional[str] = None
    no_augment: bool = False
    full_vocab: bool = False
    text_noise: Optional[float] = None
    text_noise_on: Optional[str] = None
    image_views: Optional[int] = None
    renderings: Optional[int] = None
    remove_ids: Optional[Path] = None
    replicas: Optional[int] = None
    warmup: Optional[int] = None
    pretrained: Optional[str] = None
    lock_image: bool = False
    lock_image_unlocked_groups: Optional[int] = None
    lock_image_freeze_bn_stats: bool = False
    lock_text: bool = False
    lock_text_unlocked_layers: Optional[int] = None
    lock_text_freeze_layer_norm: bool = False
    track_epochs: Optional[str] = None

    @classmethod
    def given(cls, ctx: typer.Context) -> "TrainOverrides":
        """From the command's parameters of the same names (a command may lack some: they stay unset)."""
        return cls(**{f.name: ctx.params[f.name] for f in fields(cls) if f.name in ctx.params})

    def apply(self, cfg):
        """cfg with these options applied to its training settings, checked before anything is written."""
        from clipmem.scoring.config import AugmentConfig

        from clipmem.scoring.config import TEXT_NOISE_PLACEMENTS

        same_names = ("model", "epochs", "batch_size", "lr", "captions_per_image", "device", "text_noise",
                      "text_noise_on", "image_views", "renderings", "replicas")
        t = replace(cfg.train, **{k: getattr(self, k) for k in same_names if getattr(self, k) is not None})
        if self.seed is not None:
            t = replace(t, init_seed=self.seed, data_seed=self.seed)
        if self.no_augment:
            t = replace(t, augment=AugmentConfig(enabled=False))
        if self.full_vocab:
            t = replace(t, compact_vocab=False)
        if self.remove_ids is not None:
            t = replace(t, remove_ids=read_id_list(self.remove_ids))
        if t.epochs < 1 or t.batch_size < 2:
            raise ClipmemError(f"--epochs must be >= 1 and --batch-size >= 2 (got {t.epochs}, {t.batch_size})")
        if t.replicas < 1:
            raise ClipmemError(f"--replicas must be >= 1, got {t.replicas}")
        if t.text_noise_on not in TEXT_NOISE_PLACEMENTS:
            raise ClipmemError(f"--text-noise-on must be one of {', '.join(TEXT_NOISE_PLACEMENTS)}, "
                               f"got '{t.text_noise_on}'")
        if t.renderings < 1:
            raise ClipmemError(f"--renderings must be >= 1 (the image itself), got {t.renderings}")
        if cfg.data.kind == "synthetic" and cfg.data.path is None and t.renderings > cfg.data.synth.renderings:
            # the built-in set, generated in the run directory, is written with the renderings training draws from
            cfg.data = replace(cfg.data, synth=replace(cfg.data.synth, renderings=t.renderings))
        if t.text_noise < 0 or t.image_views < 0 or t.captions_per_image < 0:
            raise ClipmemError("--text-noise, --image-views and --captions-per-image must be >= 0 "
                               f"(got {t.text_noise}, {t.image_views}, {t.captions_per_image})")
        from clipmem.scoring.models import resolve_config

        resolve_config(t.model)  # an unknown name fails here, before anything is written
        if self.warmup is not None:
            if self.warmup < 0:
                raise ClipmemError(f"--warmup must be >= 0 steps, got {self.warmup}")
            t = replace(t, warmup_steps=self.warmup)
        if self.pretrained is not None:
            t = self._fine_tune(t)
        locks = {k: getattr(self, k) for k in ("lock_image", "lock_image_freeze_bn_stats", "lock_text",
                                               "lock_text_freeze_layer_norm") if getattr(self, k)}
        locks.update({k: getattr(self, k) for k in ("lock_image_unlocked_groups", "lock_text_unlocked_layers")
                      if getattr(self, k) is not None})
        t = replace(t, **locks)
        from clipmem.scoring.pretrained import check_locks

        check_locks(t)
        from clipmem.scoring.trajectory import check_trackable, parse_track_epochs

        if self.track_epochs is not None:  # last: --pretrained may have set the epochs
            t = replace(t, track_epochs=parse_track_epochs(self.track_epochs, t.epochs))
        check_trackable(t, cfg.split.scheme)
        cfg.train = t
        return cfg

    def _fine_tune(self, t):
        """The recipe starting from --pretrained: the weights checked (a tag, a missing file, weights that do not
        fit the model are refused here, before anything is written), their vocabulary, and the fine-tuning
        defaults (config.FINE_TUNE_RECIPE) for what the command line leaves unset."""
        from clipmem.scoring.config import FINE_TUNE_RECIPE
        from clipmem.scoring.pretrained import check_fits, read_pretrained

        source = read_pretrained(self.pretrained, t.model)
        check_fits(source, t.model)
        if source.vocab.kept is not None and self.full_vocab:
            raise ClipmemError(f"--full-vocab: the text tower of --pretrained {source.path} was trained with the "
                               f"{source.vocab.size}-token vocabulary of its run ({source.vocab_file}), which it keeps")
        given = {"lr": self.lr, "warmup_steps": self.warmup, "epochs": self.epochs}
        defaults = {k: v for k, v in FINE_TUNE_RECIPE.items() if given[k] is None}
        # open_clip's full vocabulary: the token table is not compacted to the data's tokens
        full = {"compact_vocab": False} if source.vocab.kept is None else {}
        return replace(t, pretrained=str(source.path), pretrained_sha256=source.sha256, **defaults, **full)


def read_id_list(path: Path) -> list[str]:
    """Sample ids, one per line, or the `sample_id` column of a CSV such as the dashboard's export."""
    import csv

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ClipmemError(f"cannot read the id list {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ClipmemError(f"id list {path} is not UTF-8 text") from None
    if lines and "sample_id" in next(csv.reader([lines[0]])):
        rows = list(csv.DictReader(lines))
        ids = [r["sample_id"].strip() for r in rows if r.get("sample_id", "").strip()]
    else:
        ids = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not ids:
        raise ClipmemError(f"id list {path} names no sample ids")
    return list(dict.fromkeys(ids))


def _source(csv_img_key, csv_caption_key, csv_separator, wds_caption_key, coco_images, on_error, inject,
            label_key=None) -> dict:
    return dict(csv_img_key=csv_img_key, csv_caption_key=csv_caption_key, csv_separator=csv_separator,
                wds_caption_key=wds_caption_key, coco_images=str(Path(coco_images).resolve()) if coco_images else None,
                on_error=on_error, inject=inject, label_key=label_key)


# options shared by several commands
ModelOpt = typer.Option(None, "--model", help="clipmem-demo-shape (default: a small ResNet image tower), "
                                              "clipmem-demo (a ViT that learns colour but hardly shape; give it "
                                              "--epochs 80), clipmem-tiny, any open_clip architecture name such as "
                                              "ViT-B-32, or a path to a JSON model config.")
EpochsOpt = typer.Option(None, "--epochs", help="Training epochs for each model (default 40).")
BatchOpt = typer.Option(None, "--batch-size", help="Pairs per optimisation step (default 256).")
LrOpt = typer.Option(None, "--lr", help="Peak AdamW learning rate (default 2e-3).")
SeedOpt = typer.Option(None, "--seed", help="Seed for initial weights, batch order, captions and augmentations.")
CaptionsOpt = typer.Option(None, "--captions-per-image",
                           help="Captions of each pair used in training: 0 = all (default), k = the first k, "
                                "one drawn per step (1 is the published single-caption baseline).")
DeviceOpt = typer.Option(None, "--device", help="auto (default: CUDA when present), cpu or cuda.")
NoAugOpt = typer.Option(False, "--no-augment", help="Train and score without image augmentation.")
FullVocabOpt = typer.Option(False, "--full-vocab",
                            help="Keep open_clip's 49,408-token vocabulary instead of the tokens the data uses.")
DatasetOpt = typer.Option("synthetic", "--dataset", help="Source kind: synthetic (built-in), folder (images + "
                          "metadata.jsonl), coco (captions JSON), csv (open_clip CSV/TSV) or webdataset (tar shards).")
DataOpt = typer.Option(None, "--data", help="Dataset path: the folder, the COCO JSON, the CSV file, or the shards "
                       "('shards/{000000..000099}.tar'). Without it the built-in set is generated in RUN_DIR/data.")
CsvImgOpt = typer.Option(None, "--csv-img-key", help="CSV column with image paths (open_clip's default: filepath).")
CsvCapOpt = typer.Option(None, "--csv-caption-key", help="CSV column with captions (open_clip's default: title).")
CsvSepOpt = typer.Option(None, "--csv-separator", help="CSV field separator (open_clip's default: a tab).")
WdsKeyOpt = typer.Option(None, "--wds-caption-key",
                         help="Key of the caption inside a WebDataset .json member (default: caption).")
CocoImagesOpt = typer.Option(None, "--coco-images", help="COCO image folder (default: the JSON's folder).")
OnErrorOpt = typer.Option(None, "--on-error", help="fail (default): stop at the first bad item, naming it. "
                          "skip: leave bad items out and list them in RUN_DIR/skipped.jsonl.")
InjectOpt = typer.Option(None, "--inject", help="Corrupt a fraction of S_C and of S_I to measure detection on your "
                         "own data, e.g. swapped=0.02,vague=0.01 (tags: swapped, vague, duplicate).")
SizesOpt = typer.Option(None, "--sizes", help=SIZES_HELP)
LabelKeyOpt = typer.Option(None, "--label-key", help="A per-image label for the linear-probe utility metric: a CSV "
                           "column or a key of a folder dataset's attributes (the built-in set uses shape and colour).")
TextNoiseOpt = typer.Option(None, "--text-noise", help="σ of Gaussian noise N(0, σ²) added to the text embeddings "
                            "during training, a memorization mitigation (default 0: none; 0.15 was best published). "
                            "Where it is added: --text-noise-on.")
TextNoiseOnOpt = typer.Option(None, "--text-noise-on", help="Where --text-noise is added: normalized (default): to "
                              "the unit-length text embedding, not renormalised, so each image-text cosine moves "
                              "by N(0, σ²) at any width (the published reading); projection: to the text "
                              "projection's output before normalisation (clipmem's earlier placement; a cosine moves "
                              "by about σ / (RMS · sqrt(width)), σ / 9.3 for clipmem-demo). Runs saved without "
                              "this setting were trained with projection and keep it.")
RenderingsOpt = typer.Option(None, "--renderings", help="Renderings of each scene used in training: 1 (default) = "
                              "the image alone; k = renderings 0..k-1, one drawn per pair and step (the analogue of "
                              "the paper's generated images; scoring, the null and utility use rendering 0, the "
                              "image). The built-in set is then generated with k renderings; other data needs "
                              "them listed under 'renderings' in a folder's metadata.jsonl.")
ImageViewsOpt = typer.Option(None, "--image-views", help="0 (default): a fresh augmentation of each image at every "
                             "step; k: k fixed augmented views per image, one drawn per step.")
RemoveIdsOpt = typer.Option(None, "--remove-ids", help="File of sample ids (one per line, or a CSV with a sample_id "
                            "column such as the dashboard's export) to leave out of training and scoring.")
ViewsOpt = typer.Option(None, "--views", help="Augmented views per pair when scoring (default 8).")
SchemeOpt = typer.Option(None, "--scheme", help="published (default): S_S/S_C/S_I/S_E and models f, g. kfold: S_E held "
                         "out, the other pairs (as many as S_S + S_C + S_I of --sizes) in --folds K folds; model k "
                         "trains on every fold but k, and every non-S_E pair is scored (model k against the mean of "
                         "the other K-1).")
FoldsOpt = typer.Option(None, "--folds", help="Number of folds K >= 2 of --scheme kfold (K models are trained).")
ReplicasOpt = typer.Option(None, "--replicas", help="Train R independently seeded sets of the models (f and g, or "
                           "the fold models) on the same split and score each pair by the mean over them; the "
                           "per-pair spread across replicas goes to clipmem_raw_sd (default 1; R sets take R times "
                           "the training and scoring time). Replica 0 is the run's own f.pt and g.pt.")
WarmupOpt = typer.Option(None, "--warmup", help="Steps of linear learning-rate warm-up (default 50; 10 with "
                         "--pretrained), as open_clip_train's --warmup.")
PretrainedOpt = typer.Option(None, "--pretrained", help="Fine-tune: f and g (and fold models, replicas) all start from "
                             "these weights, an open_clip checkpoint or a state dict on disk ('module.' prefixes "
                             "allowed; --model must name its architecture). An open_clip tag such as openai needs the "
                             "hub and is refused: pass a local file. The text tower keeps its vocabulary: open_clip's "
                             "full one, or for another clipmem run's f.pt that run's (vocab.json beside it; captions "
                             "with words outside it are refused). Unless given, --lr 2e-4, --warmup 10 and --epochs "
                             "20: a tenth of the from-scratch learning rate so the first steps refine the pretrained "
                             "features rather than overwrite them, a short warm-up since the weights are already "
                             "trained, fewer epochs since training starts near a solution (docs/fine-tuning.md).")
LockImageOpt = typer.Option(False, "--lock-image", help="Freeze the image tower (open_clip's lock_image_tower, as "
                            "open_clip_train's option): its weights stay the pretrained ones. Needs --pretrained.")
LockImageGroupsOpt = typer.Option(None, "--lock-image-unlocked-groups", help="With --lock-image: leave the last N "
                                  "layer groups of the image tower trainable (default 0).")
LockImageBnOpt = typer.Option(False, "--lock-image-freeze-bn-stats", help="With --lock-image: freeze the BatchNorm "
                              "running statistics of the locked layers (ResNet towers).")
LockTextOpt = typer.Option(False, "--lock-text", help="Freeze the text tower (open_clip's lock_text_tower, as "
                           "open_clip_train's option): its weights stay the pretrained ones. Needs --pretrained.")
LockTextLayersOpt = typer.Option(None, "--lock-text-unlocked-layers", help="With --lock-text: leave the last N layer "
                                 "groups of the text tower trainable (default 0).")
LockTextLnOpt = typer.Option(False, "--lock-text-freeze-layer-norm", help="With --lock-text: accepted as "
                             "open_clip_train's option; open_clip 3.x freezes a locked layer's LayerNorms with it "
                             "whether given or not.")
TrackEpochsOpt = typer.Option(None, "--track-epochs", help="Score f and g after these epochs too: a list such as "
                              "8,16,24,32,40 or every:K; the last epoch is always tracked. Writes trajectory.parquet "
                              "(per pair and epoch A_f, A_g, raw CLIPMem, and the null's) and adds mem_epoch, mem_auc "
                              "and mem_variability to scores.parquet (docs/trajectory.md). Published scheme, one "
                              "replica, one process.")
FdrOpt = typer.Option(None, "--fdr", help="False discovery rate of the `memorized` flag: a scored pair is flagged when "
                      "its Benjamini-Hochberg q-value against the run's null (its S_E pairs) is at most this "
                      "(default 0.05; 0 < FDR < 1).")


def _with_fdr(cfg, fdr: Optional[float]):
    """cfg with the --fdr given (checked), or as it was."""
    if fdr is None:
        return cfg
    if not 0 < fdr < 1:
        raise ClipmemError(f"--fdr must lie strictly between 0 and 1, got {fdr}")
    cfg.score = replace(cfg.score, fdr=fdr)
    return cfg


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", help="Folder to create; it must not exist or be empty."),
    n: int = typer.Option(3300, "--n", help="Number of image-caption pairs."),
    seed: int = typer.Option(0, "--seed", help="Generation seed; the same seed writes the same files."),
    faults: Optional[str] = typer.Option(None, "--faults",
                                         help="Fault rates as fractions of all pairs, e.g. "
                                              "swapped=0.015,vague=0.005 (tags: swapped, wrong_attribute, vague, "
                                              "atypical, duplicate). Default: the demo mix."),
    image_size: int = typer.Option(32, "--image-size", help="Image side in pixels."),
    renderings: int = typer.Option(1, "--renderings", help="Renderings of each scene: 1 (default) = the image "
                                   "alone; k = k-1 more (new noise, position and size jitter, same captions) under "
                                   "renderings/, listed in metadata.jsonl, for training with --renderings."),
):
    """Write the built-in synthetic dataset: PNG images plus metadata.jsonl with captions and truth tags."""
    from clipmem.scoring.config import SynthConfig
    from clipmem.scoring.data.synthetic import parse_rates, write

    try:
        cfg = SynthConfig(n_pairs=n, seed=seed, image_size=image_size, renderings=renderings)
        if faults is not None:
            cfg.faults = parse_rates(faults)
        path = write(cfg, out)
    except ClipmemError as exc:
        _fail(exc)
    console.print(f"wrote {n} pairs to {path}")


@app.command()
def split(
    out: Path = typer.Option(..., "--out", help="Run directory to create."),
    dataset: str = DatasetOpt,
    data: Optional[Path] = DataOpt,
    sizes: Optional[str] = SizesOpt,
    seed: Optional[int] = typer.Option(None, "--seed", help="Split seed (default 0)."),
    csv_img_key: Optional[str] = CsvImgOpt,
    csv_caption_key: Optional[str] = CsvCapOpt,
    csv_separator: Optional[str] = CsvSepOpt,
    wds_caption_key: Optional[str] = WdsKeyOpt,
    coco_images: Optional[Path] = CocoImagesOpt,
    on_error: Optional[str] = OnErrorOpt,
    inject: Optional[str] = InjectOpt,
    label_key: Optional[str] = LabelKeyOpt,
    scheme: Optional[str] = SchemeOpt,
    folds: Optional[int] = FoldsOpt,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace whatever RUN_DIR holds."),
):
    """Plan the split S_S / S_C / S_I / S_E (or k folds and S_E) and start a run directory (config.json, split.json)."""
    from clipmem.scoring.pipeline import split_step
    from clipmem.scoring.rundir import RunDir

    try:
        cfg = _run_config(dataset, data, sizes, seed, _source(csv_img_key, csv_caption_key, csv_separator,
                                                               wds_caption_key, coco_images, on_error, inject,
                                                               label_key), scheme, folds)
        run = RunDir(out)
        run.prepare_new(overwrite)
        counts = split_step(run, cfg)
    except ClipmemError as exc:
        _fail(exc)
    folds = f" in {cfg.split.folds} folds (f = fold0, g = fold1)" if cfg.split.scheme == "kfold" else ""
    console.print(f"split plan written to {run.split}: {counts}{folds}")


@app.command()
def train(
    ctx: typer.Context,
    run_dir: Path = typer.Argument(..., help="Run directory made by `clipmem split`."),
    model: Optional[str] = ModelOpt,
    epochs: Optional[int] = EpochsOpt,
    batch_size: Optional[int] = BatchOpt,
    lr: Optional[float] = LrOpt,
    seed: Optional[int] = SeedOpt,
    captions_per_image: Optional[int] = CaptionsOpt,
    device: Optional[str] = DeviceOpt,
    no_augment: bool = NoAugOpt,
    full_vocab: bool = FullVocabOpt,
    text_noise: Optional[float] = TextNoiseOpt,
    text_noise_on: Optional[str] = TextNoiseOnOpt,
    image_views: Optional[int] = ImageViewsOpt,
    renderings: Optional[int] = RenderingsOpt,
    remove_ids: Optional[Path] = RemoveIdsOpt,
    replicas: Optional[int] = ReplicasOpt,
    warmup: Optional[int] = WarmupOpt,
    pretrained: Optional[str] = PretrainedOpt,
    lock_image: bool = LockImageOpt,
    lock_image_unlocked_groups: Optional[int] = LockImageGroupsOpt,
    lock_image_freeze_bn_stats: bool = LockImageBnOpt,
    lock_text: bool = LockTextOpt,
    lock_text_unlocked_layers: Optional[int] = LockTextLayersOpt,
    lock_text_freeze_layer_norm: bool = LockTextLnOpt,
    track_epochs: Optional[str] = TrackEpochsOpt,
    resume: bool = typer.Option(False, "--resume", help="Continue from the last per-epoch checkpoint, with the saved "
                                "settings (only --device and --only may be given)."),
    only: Optional[str] = typer.Option(None, "--only", help="Train only these models (comma-separated, e.g. f, "
                                       "or fold0,fold1) as a job of their own; start one job per model to train "
                                       "them at once with the same options. Same weights as training all together."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar (for logs and workers)."),
):
    """Train f on S_S ∪ S_C and g on S_S ∪ S_I (or the k fold models) with the same recipe, initialisation and steps.

    Under torchrun (`torchrun --nproc_per_node N -m clipmem train RUN_DIR`) the processes train together with DistributedDataParallel, sharing each batch.
    """
    from clipmem.scoring.pipeline import train_step
    from clipmem.scoring.rundir import RunDir

    try:
        run = RunDir(run_dir)
        cfg = run.load_config()
        if resume:
            _refuse_settings_on_resume(ctx, keep=("run_dir", "resume", "device", "only", "no_progress"))
            if device is not None:
                cfg.train = replace(cfg.train, device=device)
        else:
            cfg = TrainOverrides.given(ctx).apply(cfg)
        models = [m.strip() for m in only.split(",") if m.strip()] if only else None
        summary = train_step(run, cfg, resume=resume, only=models, show_progress=not no_progress)
    except ClipmemError as exc:
        _fail(exc)
    if summary.get("world_size", 1) > 1 and "weights_sha256" not in summary:
        return  # ranks other than 0: rank 0 reports
    names = summary["models"]
    console.print(f"trained {' and '.join(names) if len(names) == 2 else ', '.join(names)}"
                  + (f" ({summary['replicas']} replicas)" if summary.get("replicas", 1) > 1 else "")
                  + f": {summary['steps']} steps each, {summary['samples_per_s']} samples/s"
                  + (f" on {summary['world_size']} processes" if summary.get("world_size", 1) > 1 else ""))


@app.command()
def score(
    run_dir: Path = typer.Argument(..., help="Run directory with trained models."),
    views: Optional[int] = ViewsOpt,
    model: Optional[str] = typer.Option(None, "--model", help="Architecture of imported checkpoints: an open_clip "
                                        "name or a JSON config (open_clip's model config, or open_clip_config.json)."),
    checkpoint_f: Optional[Path] = typer.Option(None, "--checkpoint-f", help="Score this checkpoint as f (trained "
                                                "on S_S ∪ S_C): an open_clip trainer checkpoint or a state dict."),
    checkpoint_g: Optional[Path] = typer.Option(None, "--checkpoint-g", help="Score this checkpoint as g (trained "
                                                "on S_S ∪ S_I)."),
    shard: Optional[int] = typer.Option(None, "--shard", help="Score only part I (0-based) of --num-shards N "
                                        "contiguous parts of the scored pairs into RUN_DIR/score_parts/"
                                        "part-I-of-N.parquet; a current part file is not recomputed."),
    num_shards: Optional[int] = typer.Option(None, "--num-shards", help="Number of parts N for --shard (and for "
                                             "--merge when parts of several N are present)."),
    merge: bool = typer.Option(False, "--merge", help="Finish the run from the parts of every shard: scaled scores, "
                               "layer tables, embeddings, utility. Refuses, naming them, when parts are missing."),
    fdr: Optional[float] = FdrOpt,
):
    """Compute CLIPMem, its contrastive variant and the CLIPScore baselines; evaluate utility on S_E.

    With --checkpoint-f/--checkpoint-g, models trained elsewhere (e.g. by open_clip's trainer on the CSVs of
    `clipmem export-splits`) are scored instead of clipmem's own. With --shard/--num-shards several processes (or
    machines sharing RUN_DIR) score parts at once, and `--merge` finishes the run; under torchrun each rank scores
    the part of its rank and rank 0 merges.
    """
    from clipmem.scoring.pipeline import score_step
    from clipmem.scoring.rundir import RunDir

    try:
        run = RunDir(run_dir)
        cfg = run.load_config()
        if (checkpoint_f is None) != (checkpoint_g is None):
            raise ClipmemError("give both --checkpoint-f and --checkpoint-g, or neither")
        if model is not None and checkpoint_f is None:
            raise ClipmemError("--model applies to imported checkpoints; give --checkpoint-f and --checkpoint-g")
        if checkpoint_f is not None:
            from clipmem.scoring.models import resolve_config

            # externally trained models use open_clip's full vocabulary
            cfg.train = replace(cfg.train, model=model or cfg.train.model, compact_vocab=False)
            resolve_config(cfg.train.model)
        if views is not None:
            if views < 1:
                raise ClipmemError(f"--views must be >= 1, got {views}")
            cfg.score = replace(cfg.score, views=views)
        cfg = _with_fdr(cfg, fdr)
        result = score_step(run, cfg, checkpoint_f, checkpoint_g, shard=shard, num_shards=num_shards, merge=merge)
    except ClipmemError as exc:
        _fail(exc)
    if "part" in result:
        if shard is not None:  # with --shard; under torchrun the other ranks say nothing
            done = "already current, skipped" if result["skipped"] else f"written in {result['seconds']} s"
            console.print(f"shard {result['shard']} of {result['num_shards']}: {result['part']} {done}")
        return
    _print_report(Path(run_dir))


@app.command()
def run(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", help="Run directory to create (or continue, with --resume)."),
    dataset: str = DatasetOpt,
    data: Optional[Path] = DataOpt,
    sizes: Optional[str] = SizesOpt,
    model: Optional[str] = ModelOpt,
    epochs: Optional[int] = EpochsOpt,
    batch_size: Optional[int] = BatchOpt,
    lr: Optional[float] = LrOpt,
    seed: Optional[int] = SeedOpt,
    captions_per_image: Optional[int] = CaptionsOpt,
    device: Optional[str] = DeviceOpt,
    no_augment: bool = NoAugOpt,
    full_vocab: bool = FullVocabOpt,
    views: Optional[int] = ViewsOpt,
    text_noise: Optional[float] = TextNoiseOpt,
    text_noise_on: Optional[str] = TextNoiseOnOpt,
    image_views: Optional[int] = ImageViewsOpt,
    renderings: Optional[int] = RenderingsOpt,
    remove_ids: Optional[Path] = RemoveIdsOpt,
    replicas: Optional[int] = ReplicasOpt,
    warmup: Optional[int] = WarmupOpt,
    pretrained: Optional[str] = PretrainedOpt,
    lock_image: bool = LockImageOpt,
    lock_image_unlocked_groups: Optional[int] = LockImageGroupsOpt,
    lock_image_freeze_bn_stats: bool = LockImageBnOpt,
    lock_text: bool = LockTextOpt,
    lock_text_unlocked_layers: Optional[int] = LockTextLayersOpt,
    lock_text_freeze_layer_norm: bool = LockTextLnOpt,
    label_key: Optional[str] = LabelKeyOpt,
    csv_img_key: Optional[str] = CsvImgOpt,
    csv_caption_key: Optional[str] = CsvCapOpt,
    csv_separator: Optional[str] = CsvSepOpt,
    wds_caption_key: Optional[str] = WdsKeyOpt,
    coco_images: Optional[Path] = CocoImagesOpt,
    on_error: Optional[str] = OnErrorOpt,
    inject: Optional[str] = InjectOpt,
    scheme: Optional[str] = SchemeOpt,
    folds: Optional[int] = FoldsOpt,
    fdr: Optional[float] = FdrOpt,
    track_epochs: Optional[str] = TrackEpochsOpt,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace whatever RUN_DIR holds."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run where it stopped, with its "
                                "saved settings (only --device may be given)."),
):
    """Every step in one go: data, split, train f and g (or the fold models), score, evaluate, report."""
    from clipmem.scoring.pipeline import run_all
    from clipmem.scoring.rundir import RunDir

    try:
        run_dir = RunDir(out)
        if resume:
            if overwrite:
                raise ClipmemError("--resume continues RUN_DIR and --overwrite replaces it; give one of them")
            _refuse_settings_on_resume(ctx, keep=("out", "resume", "device"))
            cfg = _resumable_config(run_dir)
            if device is not None:
                cfg.train = replace(cfg.train, device=device)
        else:
            cfg = _run_config(dataset, data, sizes, seed, _source(csv_img_key, csv_caption_key, csv_separator,
                                                                   wds_caption_key, coco_images, on_error, inject,
                                                                   label_key), scheme, folds)
            cfg = TrainOverrides.given(ctx).apply(cfg)
            if views is not None:
                cfg.score = replace(cfg.score, views=views)
            cfg = _with_fdr(cfg, fdr)
            run_dir.prepare_new(overwrite)
            run_dir.save_config(cfg)  # first: a run stopped at any later point (even in its split) can resume
        metrics = run_all(run_dir, cfg, resume=resume)
    except ClipmemError as exc:
        _fail(exc)
    t = metrics.get("timings", {})
    console.print(f"finished {out}: split {t.get('split_seconds')} s, train {t.get('train_seconds')} s, "
                  f"score {t.get('score_seconds')} s, peak memory {metrics.get('peak_rss_mb')} MB")
    _print_report(out)


def _resumable_config(run):
    """The saved settings of an interrupted run, or a refusal saying why there is nothing to resume."""
    if not run.path.is_dir() or not any(run.path.iterdir()):
        raise ClipmemError(f"{run.path} holds no run to resume; start it without --resume")
    if run.is_finished():
        raise ClipmemError(f"{run.path} already holds a finished run; pass --overwrite to replace it")
    if not run.config.is_file():
        raise ClipmemError(f"{run.path} holds no config.json: its run stopped before its settings were saved, so "
                           "it cannot be resumed; start it again with its options and --overwrite")
    return run.load_config()


@app.command("export-splits")
def export_splits_command(
    run_dir: Path = typer.Argument(..., help="Run directory with a split plan."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for the CSVs (default: RUN_DIR/export)."),
):
    """Write train_f.csv (S_S ∪ S_C), train_g.csv (S_S ∪ S_I) and extra.csv (S_E) for open_clip's trainer.

    Prints the torchrun command lines that train f and g with clipmem's recipe on them.
    """
    from clipmem.scoring.export import export_run
    from clipmem.scoring.rundir import RunDir

    try:
        result = export_run(RunDir(run_dir), out)
    except ClipmemError as exc:
        _fail(exc)
    for name, rows in result["rows"].items():
        console.print(f"{result['folder'] / name}: {rows} rows")
    console.print("Train f and g with open_clip's trainer:")
    for line in result["commands"]:
        console.print(line, soft_wrap=True, highlight=False, markup=False)


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="A finished run directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
):
    """Mean CLIPMem per truth tag and how well each score finds faulty and swapped pairs."""
    try:
        _print_report(run_dir, as_json)
    except ClipmemError as exc:
        _fail(exc)


@app.command("compare-schemes")
def compare_schemes(
    run_a: Path = typer.Argument(..., help="A finished run (e.g. the published scheme)."),
    run_b: Path = typer.Argument(..., help="Another finished run of the same data (e.g. --scheme kfold)."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
):
    """Do two runs agree on which pairs are memorized? Spearman rank correlation of CLIPMem on the pairs both
    score, and each run's swapped-pair detection AUROC (on its own scored pairs and on the common ones)."""
    import pandas as pd

    from clipmem.scoring.report import compare_runs
    from clipmem.scoring.rundir import RunDir

    try:
        frames, labels = [], []
        for path in (run_a, run_b):
            run = RunDir(path)
            run.require_finished()
            frames.append(pd.read_parquet(run.scores))
            cfg = run.load_config()
            labels.append(f"{path} ({cfg.split.scheme}{f', K={cfg.split.folds}' if cfg.split.scheme == 'kfold' else ''})")
        result = compare_runs(frames[0], frames[1])
    except ClipmemError as exc:
        _fail(exc)
    result = {"run_a": labels[0], "run_b": labels[1], **result}
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    console.print(f"A = {labels[0]}: {result['pairs_a']} scored pairs", highlight=False)
    console.print(f"B = {labels[1]}: {result['pairs_b']} scored pairs", highlight=False)
    console.print(f"{result['common_pairs']} pairs scored by both; Spearman ρ of clipmem "
                  f"{_num(result['spearman_clipmem'])}, of clipmem_contrastive "
                  f"{_num(result['spearman_clipmem_contrastive'])}", highlight=False)
    table = Table("swapped-pair AUROC", "A, own pairs", "B, own pairs", "A, common", "B, common",
                  title="Finding swapped pairs")
    for row in result["swapped_auroc"]:
        table.add_row(row["score"], *(_num(row[k]) for k in ("a_own", "b_own", "a_common", "b_common")))
    console.print(table)


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@app.command()
def experiment(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", help="Experiment directory: created, or continued where it stopped."),
    name: Optional[str] = typer.Option(None, "--name", help="Experiment name; runs are ingested as NAME.SETTING.sSEED "
                                       "(default: the directory's name)."),
    grids: str = typer.Option(DEFAULT_GRIDS, "--grids", help="Comma-separated grids: captions "
                              "(1 to 5 captions per image) by default; on request text-noise (σ 0, 0.01, 0.05, "
                              "0.1, 0.15, 0.2, 0.25, 0.3), removal (retrain without the top-CLIPMem, "
                              "lowest-similarity or random N scored pairs; 21 settings) and images-captions (1 or 5 "
                              "renderings per scene × 1 or 5 captions); "
                              "with --pretrained also towers (both towers fine-tuned / image tower only, text "
                              "locked / text tower only, image locked) and from-scratch (fine-tuned vs the same "
                              "split from random weights), which need it."),
    seeds: int = typer.Option(3, "--seeds", help="Seeds per setting (0..SEEDS-1); every setting uses the same ones."),
    removal_counts: str = typer.Option(DEFAULT_REMOVAL_COUNTS, "--removal-counts", help="The sweep of N for the "
                                       "removal grid: pair counts (50,150) or percentages of the pairs the baseline "
                                       "scores (default: the published curve's N = 50..3200 of 5,000 as fractions, "
                                       "6..384 of the built-in set's 600)."),
    removal_methods: Optional[str] = typer.Option(None, "--removal-methods", help="The removal grid's ways of "
                                                  "choosing the N pairs, comma-separated: top-clipmem (highest "
                                                  "CLIPMem), lowest-similarity (lowest image-caption cosine under g, "
                                                  "the CLIPScore filter) and random (default: all three)."),
    epochs: int = typer.Option(EXPERIMENT_EPOCHS, "--epochs", help=f"Training epochs of every run (default "
                               f"{EXPERIMENT_EPOCHS}, as `clipmem run`)."),
    jobs: int = typer.Option(0, "--jobs", help="Runs trained at once: 0 = one per CPU core up to 4 (1 on a GPU)."),
    ingest: bool = typer.Option(True, "--ingest/--no-ingest", help="Ingest each finished run into the database "
                                "(CLIPMEM_DATABASE_URL) under the experiment name; runs already there are kept."),
    report_only: bool = typer.Option(False, "--report", help="Only write the report of the runs finished so far."),
    dataset: str = DatasetOpt,
    data: Optional[Path] = DataOpt,
    sizes: Optional[str] = SizesOpt,
    model: Optional[str] = ModelOpt,
    batch_size: Optional[int] = BatchOpt,
    device: Optional[str] = DeviceOpt,
    text_noise_on: Optional[str] = TextNoiseOnOpt,
    pretrained: Optional[str] = PretrainedOpt,
    lock_image: bool = LockImageOpt,
    lock_image_unlocked_groups: Optional[int] = LockImageGroupsOpt,
    lock_image_freeze_bn_stats: bool = LockImageBnOpt,
    lock_text: bool = LockTextOpt,
    lock_text_unlocked_layers: Optional[int] = LockTextLayersOpt,
    lock_text_freeze_layer_norm: bool = LockTextLnOpt,
    views: Optional[int] = ViewsOpt,
    label_key: Optional[str] = LabelKeyOpt,
    csv_img_key: Optional[str] = CsvImgOpt,
    csv_caption_key: Optional[str] = CsvCapOpt,
    csv_separator: Optional[str] = CsvSepOpt,
    wds_caption_key: Optional[str] = WdsKeyOpt,
    coco_images: Optional[Path] = CocoImagesOpt,
    on_error: Optional[str] = OnErrorOpt,
    inject: Optional[str] = InjectOpt,
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete the experiment directory and start again."),
):
    """Run a mitigation grid (captions per image, text-embedding noise, removal of pairs, images × captions) over
    several seeds.

    Every setting is an ordinary run with the same split and seeds; a finished run is never retrained, so
    rerunning the command resumes it. Writes OUT/report/report.md with figures; the dashboard's Runs page shows
    the same once the runs are ingested.
    """
    import shutil

    from clipmem.scoring.experiment import open_experiment, parse_removal_counts

    try:
        exp_name = name or Path(out).resolve().name
        if report_only:
            count, path = _experiment_report(Path(out), exp_name)
            console.print(f"report of {count} runs written to {path}")
            return
        grid_list = [g.strip() for g in grids.split(",") if g.strip()]
        counts = parse_removal_counts(removal_counts)
        if seeds < 1:
            raise ClipmemError(f"--seeds must be >= 1, got {seeds}")
        cfg = _run_config(dataset, data, sizes, None, _source(csv_img_key, csv_caption_key, csv_separator,
                                                              wds_caption_key, coco_images, on_error, inject,
                                                              label_key))
        cfg = TrainOverrides.given(ctx).apply(cfg)
        # experiments compare mean CLIPMem and utility; the per-encoder views would triple the scoring time
        cfg.score = replace(cfg.score, towers=False, layers=False, **({"views": views} if views else {}))
        if overwrite and Path(out).exists():
            shutil.rmtree(out)
        methods = None if removal_methods is None else [m.strip() for m in removal_methods.split(",") if m.strip()]
        exp = open_experiment(Path(out), exp_name, grid_list, list(range(seeds)), counts, cfg, methods)
        runs = _run_with_progress(exp, seeds, jobs, ingest)
        _, path = _experiment_report(Path(out), exp_name)
    except ClipmemError as exc:
        _fail(exc)
    console.print(f"{len(runs)} runs finished; report written to {path}")


def _experiment_report(out: Path, exp_name: str) -> tuple[int, Path]:
    """(runs reported, report path) of the experiment's finished runs."""
    from clipmem.scoring.experiment import report_rows
    from clipmem.scoring.experiment_report import write_report

    rows = report_rows(out)
    if not rows:
        raise ClipmemError(f"{out} holds no finished experiment runs to report on")
    return len(rows), write_report(rows, out / "report", f"Experiment {exp_name}")


def _run_with_progress(exp, seeds: int, jobs: int, ingest: bool) -> list:
    """Train and score every planned run of the experiment under one progress bar, ingesting each as it ends."""
    from contextlib import nullcontext

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from clipmem.scoring.experiment import run_experiment
    from clipmem.scoring.processes import interrupt_on_stop_signals

    columns = (TextColumn("[bold]experiment"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
               TimeElapsedColumn())
    # SIGTERM and SIGHUP stop the experiment as Ctrl+C does: run_experiment then stops its worker processes
    with (_experiment_ingester() if ingest else nullcontext()) as on_finished, interrupt_on_stop_signals(), \
            Progress(*columns, console=console) as bar:
        task = bar.add_task("starting", total=len(exp.settings()) * seeds)

        def progress(message, n_done, total):
            bar.update(task, completed=n_done, total=total, description=message)

        return run_experiment(exp, jobs=jobs, on_finished=on_finished, progress=progress)


def _digits(values, least: int) -> int:
    """Decimals that show the largest of values to two significant digits, and at least `least`."""
    import math

    big = max((abs(v) for v in values if v is not None and math.isfinite(v) and v != 0), default=1.0)
    return max(least, 1 - math.floor(math.log10(big)))


def _interval_text(value: float, interval: dict | None, digits: int) -> str:
    """"0.512 [0.498, 0.527]": a mean with its 95% interval, or the mean alone when there is none; a value that
    rounds to zero prints without a sign."""
    def number(x: float) -> str:
        return f"{round(x, digits) + 0.0:.{digits}f}"

    if not interval or any(interval.get(k) is None or interval[k] != interval[k] for k in ("lo", "hi")):  # or NaN
        return number(value)
    return f"{number(value)} [{number(interval['lo'])}, {number(interval['hi'])}]"


def _print_reasons(summary: dict) -> None:
    """Why pairs are memorized (docs/why.md): reason counts, reason x truth, and how well `miscaption` tells
    mis-captions from the rest among the most memorized pairs; nothing for runs scored before reasons."""
    reasons = summary.get("reasons")
    if not reasons:
        return
    top = f"{reasons['top_fraction']:.0%}"
    table = Table("reason", "pairs", f"among the {top} most memorized", title="Why memorized: each pair's reason")
    for row in reasons["counts"]:
        table.add_row(row["reason"], str(row["pairs"]), str(row["memorized_top"]))
    console.print(table)
    if reasons.get("by_truth"):
        truths = sorted({row["truth"] for row in reasons["by_truth"]})
        count = {(row["reason"], row["truth"]): row["pairs"] for row in reasons["by_truth"]}
        table = Table("reason", *truths, title="Reason against truth tag (all scored pairs)")
        for reason in dict.fromkeys(row["reason"] for row in reasons["by_truth"]):
            table.add_row(reason, *(str(count[reason, t]) for t in truths))
        console.print(table)
    if summary.get("miscaption_detection"):
        table = Table("score", "AUROC", "avg precision", "precision@k", "k", "pairs",
                      title=f"Finding mis-captions (swapped, wrong_attribute, vague) among the {top} most memorized")
        for row in summary["miscaption_detection"]:
            table.add_row(row["score"], f"{row['auroc']:.3f}", f"{row['average_precision']:.3f}",
                          f"{row['precision_at_k']:.3f}", str(row["k"]), str(row["pairs"]))
        console.print(table)


def _print_report(run_dir: Path, as_json: bool = False) -> None:
    import pandas as pd

    from clipmem.scoring.report import summarize
    from clipmem.scoring.rundir import RunDir
    from clipmem.scoring.significance import jsonable

    run = RunDir(run_dir)
    run.require_finished()
    scores = pd.read_parquet(run.scores)
    summary = summarize(scores, pd.read_parquet(run.layers) if run.layers.is_file() else None)
    metrics = json.loads(run.metrics.read_text())
    summary["utility"] = {k: metrics[k] for k in ("f", "g") if k in metrics}
    summary["skipped_items"] = len(run.skipped.read_text().splitlines()) if run.skipped.is_file() else 0
    significance = metrics.get("significance") or {}
    summary["fdr"] = significance.get("fdr")
    if "scheme" in metrics:
        summary["scheme"] = metrics["scheme"]
        summary["utility_per_fold_model"] = metrics.get("folds", {})
    if as_json:
        sys.stdout.write(json.dumps(jsonable(summary), indent=2) + "\n")
        return
    console.print(f"[bold]{run_dir}[/]: {len(scores)} scored pairs, mean CLIPMem {summary['mean_clipmem']:.3f}")
    if "scheme" in summary:
        scheme = summary["scheme"]
        console.print(f"{scheme['name']} scheme, {scheme['folds']} fold models; a pair of fold k: model k against the "
                      f"mean of the others. Literal models: f = {scheme['literal_models']['f']}, "
                      f"g = {scheme['literal_models']['g']}", highlight=False)
    if summary["skipped_items"]:
        console.print(f"{summary['skipped_items']} source items were skipped as unreadable: see {run.skipped}")
    if summary["flagged_by_truth"]:
        fdr = "the run's FDR" if summary["fdr"] is None else f"FDR {summary['fdr']:g}"
        table = Table("truth", "pairs", "flagged", "fraction", title=f"Pairs flagged memorized (q <= {fdr})")
        for row in summary["flagged_by_truth"]:
            table.add_row(row["truth"], str(row["pairs"]), str(row["flagged"]), f"{row['fraction']:.3f}")
        console.print(table)
    else:
        reason = significance.get("missing") or ("the run was scored before significance testing: score it again "
                                                 "for p-values, q-values and memorized flags")
        console.print(f"No pairs flagged: {reason}", highlight=False, soft_wrap=True)
    table = Table("truth", "pairs", "CLIPMem", "raw", "contrastive",
                  title="Mean score per truth tag [95% bootstrap interval over pairs]")
    raw_digits = _digits([row["clipmem_raw"] for row in summary["by_truth"]], 4)
    for row in summary["by_truth"]:
        ci = row["intervals"]
        table.add_row(row["truth"], str(row["pairs"]), _interval_text(row["clipmem"], ci["clipmem"], 3),
                      _interval_text(row["clipmem_raw"], ci["clipmem_raw"], raw_digits),
                      _interval_text(row["clipmem_contrastive"], ci["clipmem_contrastive"], 3))
    console.print(table)
    if summary["memorization_epoch_by_truth"]:
        _print_memorization(run, scores, summary["memorization_epoch_by_truth"])
    for key, title in (("detection_faulty", "Finding faulty pairs (every tag but clean)"),
                       ("detection_swapped", "Finding swapped pairs")):
        if not summary[key]:
            console.print(f"{title}: no such pairs in this run")
            continue
        table = Table("score", "AUROC", "avg precision", "precision@k", "k", title=title)
        for row in summary[key]:
            table.add_row(row["score"], f"{row['auroc']:.3f}", f"{row['average_precision']:.3f}",
                          f"{row['precision_at_k']:.3f}", str(row["k"]))
        console.print(table)
    _print_reasons(summary)
    if summary.get("by_fold"):
        table = Table("fold", "pairs", "mean raw", "A with (other folds' models)", "A without (fold model)",
                      title="Per fold (a large mean raw means the fold's model trained worse than the others)")
        for row in summary["by_fold"]:
            table.add_row(str(row["fold"]), str(row["pairs"]), f"{row['clipmem_raw']:+.4f}", f"{row['align_f']:.4f}",
                          f"{row['align_g']:.4f}")
        console.print(table)
    if summary["towers_by_truth"]:
        table = Table("truth", "image-side (raw)", "text-side (raw)", "swap image", "swap text", "text > image",
                      title="Which encoder memorizes: mean [95% bootstrap interval over pairs]")
        columns = ("mem_image_raw", "mem_text_raw", "mem_swap_image", "mem_swap_text")
        digits = _digits([row.get(c) for row in summary["towers_by_truth"] for c in columns], 4)
        for row in summary["towers_by_truth"]:
            ci = row["intervals"]
            table.add_row(row["truth"], *(_interval_text(row[c], ci.get(c), digits) if c in row else "-"
                                          for c in ("mem_image_raw", "mem_text_raw", "mem_swap_image",
                                                    "mem_swap_text")),
                          "yes" if row["text_exceeds_image"] else "no")
        console.print(table)
        for row in summary["towers_by_truth"]:
            for name in ("verdict", "swap_verdict"):
                if name in row:
                    console.print(f"{row['truth']}: {row[name]}", highlight=False, soft_wrap=True)
    if summary.get("layers"):
        table = Table("tower", "layer", "truth", "LayerMem", "ΔLayerMem",
                      title="Memorization per layer [95% bootstrap interval over pairs, where the run has them]")
        digits = _digits([row[c] for row in summary["layers"] for c in ("layer_mem", "delta_layer_mem")], 4)
        for row in summary["layers"]:
            mem = {"lo": row.get("layer_mem_lo"), "hi": row.get("layer_mem_hi")}
            delta = {"lo": row.get("delta_layer_mem_lo"), "hi": row.get("delta_layer_mem_hi")}
            table.add_row(row["tower"], str(row["layer"]), row["truth"], _interval_text(row["layer_mem"], mem, digits),
                          _interval_text(row["delta_layer_mem"], delta, digits))
        console.print(table)
    if summary.get("unit_mem"):
        table = Table("tower", "layer", "UnitMem", "f (over S_C)", "g (over S_I)",
                      title="UnitMem per layer (docs/layers.md): each unit's selectivity to one training pair, "
                            "averaged over the block's units")
        for row in summary["unit_mem"]:
            table.add_row(row["tower"], str(row["layer"]),
                          *(f"{row[c]:.4f}" for c in ("unit_mem", "unit_mem_f", "unit_mem_g")))
        console.print(table)
    table = Table("model", *sorted(next(iter(summary["utility"].values()), {})), title="Utility on S_E")
    for name, values in summary["utility"].items():
        table.add_row(name, *(f"{values[k]:.3f}" for k in sorted(values)))
    console.print(table)


def _print_memorization(run, scores, rows: list[dict]) -> None:
    """Runs trained with --track-epochs (docs/trajectory.md): mean raw CLIPMem per truth tag and tracked epoch, and
    the median memorization epoch per tag."""
    import pandas as pd

    from clipmem.scoring.trajectory import tag_curves, thresholds

    if run.trajectory.is_file():
        trajectory = pd.read_parquet(run.trajectory)
        curves, limits = tag_curves(scores, trajectory), thresholds(trajectory)
        epochs = sorted(curves["epoch"].unique())
        table = Table("truth", *(f"epoch {e}" for e in epochs), title="Mean raw CLIPMem per truth tag over training; "
                      "the null's 95th percentile per direction")
        for truth, group in curves.groupby("truth"):
            values = group.set_index("epoch")["clipmem_raw"]
            table.add_row(truth, *(f"{values[e]:+.4f}" if e in values else "-" for e in epochs))
        for key in sorted({k for by_key in limits.values() for k in by_key}):
            table.add_row(f"null q95, {key}", *(f"{limits[e][key]:+.4f}" if key in limits.get(e, {}) else "-"
                                                for e in epochs))
        console.print(table)
    table = Table("truth", "pairs", "memorized", "fraction", "median epoch",
                  title="Memorization epoch: first tracked epoch above the null's 95th percentile")
    for row in rows:
        median = "never" if row["median_mem_epoch"] is None else f"{row['median_mem_epoch']:g}"
        table.add_row(row["truth"], str(row["pairs"]), str(row["memorized"]), f"{row['fraction']:.3f}", median)
    console.print(table)


@app.command("experiment-worker", hidden=True)
def experiment_worker(run_dir: Path, threads: int) -> None:
    """Train and score one planned run of `clipmem experiment` (which starts it in a fresh interpreter)."""
    from clipmem.scoring.experiment import worker_main

    worker_main(run_dir, threads)

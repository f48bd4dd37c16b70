"""Train the reference models f (S_S ∪ S_C) and g (S_S ∪ S_I) in lockstep.

The main noise in CLIPMem is f and g drifting apart, so their training is
coupled: same initial weights, one shared sequence of batch "slots" in which a
slot is either a shared pair (the same for both models) or the i-th candidate for
f and the i-th independent pair for g, and one augmentation/caption draw per slot
used by both. Both therefore take the same number of optimisation steps with the
same recipe. Draws are seeded per (epoch, step), so `--resume` continues exactly.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import torch
from open_clip import ClipLoss
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from scoring.config import TrainConfig
from scoring.data.tensors import TensorCorpus
from scoring.errors import ClipmemError
from scoring.transform import augment, sample_views

MODELS = ("f", "g")
NOISE_STREAM, VIEW_STREAM = 7919, 104729  # seed offsets: text noise and fixed image views draw from streams of their own


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ClipmemError("--device cuda asked for, but no CUDA device is available")
    return torch.device(name)


def slot_tables(corpus: TensorCorpus) -> tuple[torch.Tensor, torch.Tensor]:
    """Row of each slot for f and for g (-1 where a model has no pair in that slot)."""
    shared, cand, indep = corpus.rows("shared"), corpus.rows("candidate"), corpus.rows("independent")
    width = max(len(cand), len(indep))
    pad = lambda rows: torch.cat([rows, torch.full((width - len(rows),), -1, dtype=torch.long)])  # noqa: E731
    return torch.cat([shared, pad(cand)]), torch.cat([shared, pad(indep)])


def step_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 100_003 + step)


def fixed_image_views(n_rows: int, cfg: TrainConfig):
    """k augmentation draws per pair, fixed for the whole training: row r's view j is entry r * k + j.

    The image-side counterpart of k captions per image: a pair is seen through k
    images instead of a fresh augmentation at every step.
    """
    if not cfg.augment.enabled:
        raise ClipmemError("image_views > 0 needs augmentation: without it every view of a pair is the same image")
    return sample_views(n_rows * cfg.image_views, cfg.augment, step_generator(cfg.data_seed + VIEW_STREAM, -1, -1))


def noisy_text_forward(model, images: torch.Tensor, text: torch.Tensor, noise: torch.Tensor):
    """The model's forward with Gaussian noise added to the text embeddings before normalisation.

    The noise goes on the projection's output, whose entries have roughly unit
    scale at any width, so σ means the same for a tiny model and a ViT-B; on the
    normalised vector σ = 0.15 would swamp a 512-d embedding.
    """
    image_features = model.encode_image(images, normalize=True)
    text_features = torch.nn.functional.normalize(model.encode_text(text) + noise, dim=-1)
    return image_features, text_features, model.logit_scale.exp()


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to zero (open_clip's default schedule)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW without weight decay on gains, biases, embeddings' norms and the logit scale, as open_clip does."""
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if exclude(n, p) and p.requires_grad], "weight_decay": 0.0},
        {"params": [p for n, p in named if not exclude(n, p) and p.requires_grad], "weight_decay": cfg.weight_decay},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)


def latest_checkpoint(directory: Path) -> Path | None:
    found = sorted(directory.glob("epoch_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    return found[-1] if found else None


def load_training_state(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or not {"epoch", "f", "g"} <= set(state):
            raise ValueError("missing keys")
    except Exception as exc:  # torch raises many types for a damaged file
        raise ClipmemError(f"checkpoint {path} is corrupt or not a clipmem checkpoint ({type(exc).__name__}); "
                           "delete it to resume from the previous epoch, or pass --overwrite") from None
    return state


def train_pair(
    models: dict[str, torch.nn.Module],
    corpus: TensorCorpus,
    cfg: TrainConfig,
    checkpoint_dir: Path,
    log_path: Path,
    resume: bool = False,
    show_progress: bool = True,
    batch_hook=None,
) -> dict:
    """Train f and g; returns a summary (steps, seconds, samples/s, final losses).

    `batch_hook(model_name, corpus_rows)`, when given, sees every batch before its step.
    """
    device = pick_device(cfg.device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    tables = dict(zip(MODELS, slot_tables(corpus)))
    n_slots = len(tables["f"])
    steps_per_epoch = math.ceil(n_slots / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    optimizers = {}
    for name, model in models.items():
        model.to(device).train()
        optimizers[name] = make_optimizer(model, cfg)
    loss_fn = ClipLoss()
    pixels, tokens = corpus.pixels, corpus.tokens
    max_shift = cfg.augment.max_shift if cfg.augment.enabled else 0
    fixed_views = fixed_image_views(len(corpus.ids), cfg) if cfg.image_views > 0 else None
    if cfg.text_noise < 0:
        raise ClipmemError(f"text noise σ must be >= 0, got {cfg.text_noise}")
    embed_dim = 0
    if cfg.text_noise > 0:
        with torch.no_grad():
            embed_dim = models["f"].encode_text(tokens[:1].to(device)).shape[-1]

    start_epoch = 0
    if resume:
        last = latest_checkpoint(checkpoint_dir)
        if last is not None:
            state = load_training_state(last)
            for name in MODELS:
                models[name].load_state_dict(state[name]["state_dict"])
                optimizers[name].load_state_dict(state[name]["optimizer"])
            start_epoch = int(state["epoch"])
    elif log_path.exists():
        log_path.unlink()

    samples, seconds = 0, 0.0
    losses = {name: float("nan") for name in MODELS}
    progress = Progress(
        TextColumn("[bold]train f,g"),
        BarColumn(),
        TextColumn("epoch {task.fields[epoch]}"),
        TextColumn("loss f {task.fields[loss_f]:.3f} g {task.fields[loss_g]:.3f}"),
        TextColumn("{task.fields[rate]:.0f} samples/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not show_progress,
        transient=False,
    )
    with progress:
        task = progress.add_task("train", total=total_steps, completed=start_epoch * steps_per_epoch,
                                 epoch=f"{start_epoch}/{cfg.epochs}", loss_f=float("nan"), loss_g=float("nan"), rate=0.0)
        for epoch in range(start_epoch, cfg.epochs):
            order = torch.randperm(n_slots, generator=step_generator(cfg.data_seed, epoch, -1))
            epoch_loss = {name: 0.0 for name in MODELS}
            t0 = time.perf_counter()
            epoch_samples = 0
            for step in range(steps_per_epoch):
                global_step = epoch * steps_per_epoch + step
                slots = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                gen = step_generator(cfg.data_seed, epoch, step)
                views = sample_views(len(slots), cfg.augment, gen)
                caption_u = torch.rand(len(slots), generator=gen)
                # drawn only when used, so the default recipe's random stream is unchanged
                view_pick = noise = None
                if fixed_views is not None:
                    view_pick = (torch.rand(len(slots), generator=gen) * cfg.image_views).long()
                if cfg.text_noise > 0:
                    noise_gen = step_generator(cfg.data_seed + NOISE_STREAM, epoch, step)
                    noise = torch.randn(len(slots), embed_dim, generator=noise_gen)
                lr = lr_at(global_step, total_steps, cfg)
                for name in MODELS:
                    rows = tables[name][slots]
                    keep = rows >= 0
                    rows = rows[keep]
                    if len(rows) < 2:
                        continue  # a contrastive loss needs a negative; rare tail slot
                    if batch_hook is not None:
                        batch_hook(name, rows)
                    if fixed_views is None:
                        drawn = views.select(keep)
                    else:
                        drawn = fixed_views.select(rows * cfg.image_views + view_pick[keep])
                    images = augment(pixels[rows], drawn, max_shift).to(device, non_blocking=True)
                    text = tokens[corpus.pick_captions(rows, caption_u[keep])].to(device, non_blocking=True)
                    for group in optimizers[name].param_groups:
                        group["lr"] = lr
                    with autocast:
                        if noise is None:
                            image_features, text_features, logit_scale = models[name](images, text)[:3]
                        else:
                            image_features, text_features, logit_scale = noisy_text_forward(
                                models[name], images, text, cfg.text_noise * noise[keep].to(device))
                        loss = loss_fn(image_features, text_features, logit_scale)
                    optimizers[name].zero_grad(set_to_none=True)
                    loss.backward()
                    optimizers[name].step()
                    with torch.no_grad():  # open_clip clamps the scale to 100
                        models[name].logit_scale.clamp_(0, math.log(100))
                    epoch_loss[name] += loss.item()
                    epoch_samples += len(rows)
                elapsed = time.perf_counter() - t0
                progress.update(task, advance=1, epoch=f"{epoch + 1}/{cfg.epochs}",
                                loss_f=epoch_loss["f"] / (step + 1), loss_g=epoch_loss["g"] / (step + 1),
                                rate=epoch_samples / max(elapsed, 1e-9))
            epoch_seconds = time.perf_counter() - t0
            samples += epoch_samples
            seconds += epoch_seconds
            losses = {name: epoch_loss[name] / steps_per_epoch for name in MODELS}
            _save_epoch(checkpoint_dir, epoch + 1, models, optimizers, cfg)
            with open(log_path, "a") as fh:
                fh.write(json.dumps({"epoch": epoch + 1, "loss_f": losses["f"], "loss_g": losses["g"],
                                     "seconds": epoch_seconds, "samples_per_s": epoch_samples / epoch_seconds}) + "\n")
    for model in models.values():
        model.eval()
    return {
        "epochs": cfg.epochs,
        "steps": total_steps,
        "steps_per_model": total_steps,
        "device": str(device),
        "train_seconds_this_session": round(seconds, 2),
        "samples_per_s": round(samples / seconds, 1) if seconds else None,
        "final_loss_f": losses["f"],
        "final_loss_g": losses["g"],
    }


def _save_epoch(directory: Path, epoch: int, models, optimizers, cfg: TrainConfig) -> None:
    state = {
        "epoch": epoch,
        "train_config": asdict(cfg),
        **{name: {"state_dict": models[name].state_dict(), "optimizer": optimizers[name].state_dict()} for name in MODELS},
    }
    path = directory / f"epoch_{epoch}.pt"
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    for old in sorted(directory.glob("epoch_*.pt"), key=lambda p: int(p.stem.split("_")[1]))[: -cfg.keep_checkpoints or None]:
        old.unlink()


def save_model(path: Path, model: torch.nn.Module, epoch: int, name: str) -> None:
    """Save in the format open_clip's trainer uses: {'epoch', 'name', 'state_dict'}."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"epoch": epoch, "name": name, "state_dict": model.state_dict()}, tmp)
    tmp.replace(path)


def load_model_weights(model: torch.nn.Module, path: Path) -> None:
    """Load an open_clip trainer checkpoint or a plain state dict (keys may carry 'module.')."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ClipmemError(f"checkpoint {path} does not exist") from None
    except Exception as exc:
        raise ClipmemError(f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ClipmemError(f"checkpoint {path} holds no state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise ClipmemError(f"checkpoint {path} does not fit the model architecture: {first}") from None

"""Train the reference models f (S_S ∪ S_C) and g (S_S ∪ S_I) — or the K fold models — in lockstep.

The main noise in CLIPMem is f and g drifting apart, so their training is
coupled: same initial weights, one shared sequence of batch "slots" in which a
slot is either a shared pair (the same for both models) or the i-th candidate for
f and the i-th independent pair for g, and one augmentation/caption draw per slot
used by both. Both therefore take the same number of optimisation steps with the
same recipe. Draws are seeded per (epoch, step), so `--resume` continues exactly.
The k-fold scheme uses the same loop over K models: each pair has one slot, left
empty by the model that holds its fold out (scoring.schemes.slot_table).

`clipmem train RUN_DIR` (alone, or under torchrun as `torchrun ... -m clipmem train RUN_DIR`) trains a run's models;
see scoring.distributed.
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

from clipmem.scoring.config import TrainConfig
from clipmem.scoring.data.tensors import TensorCorpus
from clipmem.scoring.distributed import SINGLE, Dist, RaggedClipLoss, share_sizes
from clipmem.scoring.errors import ClipmemError
from clipmem.scoring.rundir import checksum_path, verify_checksum, write_checksum
from clipmem.scoring.schemes import PUBLISHED_MODELS, model_names, published_slots, slot_batch_size, slot_table
from clipmem.scoring.transform import augment, sample_views

MODELS = PUBLISHED_MODELS  # the published scheme's models; see scoring.schemes for the k-fold ones
NOISE_STREAM, VIEW_STREAM = 7919, 104729  # seed offsets: text noise and fixed image views draw from streams of their own


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ClipmemError("--device cuda asked for, but no CUDA device is available")
    return torch.device(name)


slot_tables = published_slots  # f's and g's row per slot (scoring.schemes.slot_table generalises it to K models)


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

    The noise goes on the projection's output, whose entries start at roughly unit
    scale at any width under open_clip's initialisation, so σ means about the same
    for a tiny model and a ViT-B; on the normalised vector σ = 0.15 would swamp a
    512-d embedding.
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


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW without weight decay on gains, biases, embeddings' norms and the logit scale, as open_clip does."""
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if exclude(n, p) and p.requires_grad], "weight_decay": 0.0},
        {"params": [p for n, p in named if not exclude(n, p) and p.requires_grad], "weight_decay": cfg.weight_decay},
    ]
    extra = {"fused": True} if fused else {}  # fused=True: one CUDA kernel for the whole update
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6, **extra)


def latest_checkpoint(directory: Path) -> Path | None:
    found = sorted(directory.glob("epoch_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    return found[-1] if found else None


def load_training_state(path: Path, names=PUBLISHED_MODELS) -> dict:
    advice = "delete it to resume from the previous epoch, or pass --overwrite"
    try:
        verified = verify_checksum(path)
    except ClipmemError as exc:
        raise ClipmemError(f"checkpoint {exc}; {advice}") from None
    if not verified:
        print(f"note: {path} has no recorded checksum ({checksum_path(path).name}): resuming from it unverified")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or not {"epoch", *names} <= set(state):
            raise ValueError("missing keys")
    except Exception as exc:  # torch raises many types for a damaged file
        raise ClipmemError(f"checkpoint {path} is corrupt or not a clipmem checkpoint ({type(exc).__name__}); "
                           f"{advice}") from None
    return state


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host to device: pinned and non-blocking on CUDA; the tensor itself on the CPU."""
    if device.type != "cuda" or t.device.type == "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


class TrainForward(torch.nn.Module):
    """One model's training forward (optionally with text-embedding noise) as a module, so DDP can wrap it."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, text: torch.Tensor, noise: torch.Tensor | None = None):
        if noise is None:
            return self.model(images, text)[:3]
        return noisy_text_forward(self.model, images, text, noise)


def train_models(
    models: dict[str, torch.nn.Module],
    corpus: TensorCorpus,
    cfg: TrainConfig,
    checkpoint_dir: Path,
    log_path: Path,
    resume: bool = False,
    show_progress: bool = True,
    batch_hook=None,
    ctx: Dist = SINGLE,
    device: torch.device | None = None,
) -> dict:
    """Train a scheme's models in lockstep; returns a summary (steps, seconds, samples/s, final losses).

    `models` are f and g (published scheme) or fold0..fold{K-1} (k-fold), in that order, all
    with the same initial weights. Under torchrun (`ctx` active) each rank trains on its share
    of every batch with the models wrapped in DistributedDataParallel; only rank 0 writes.
    `batch_hook(model_name, corpus_rows, images, tokens)`, when given, sees every batch exactly as the
    model is about to (this rank's share under torchrun), e.g. to audit what a mitigation changes.
    """
    device = device or pick_device(cfg.device)
    on_cuda = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda else nullcontext()
    names = list(models)
    table = slot_table(corpus)
    planned = model_names(corpus)
    if table.shape[0] != len(planned) or not set(names) <= set(planned):
        raise ClipmemError(f"the split plan defines models {', '.join(planned)}, but {', '.join(names)} were given")
    # a subset of the models (separate jobs) steps through the same slots and draws as all of them at once
    tables = {name: table[planned.index(name)] for name in names}
    n_slots = table.shape[1]
    batch = slot_batch_size(table, cfg.batch_size)
    steps_per_epoch = math.ceil(n_slots / batch)
    total_steps = steps_per_epoch * cfg.epochs
    if ctx.is_main:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    optimizers, forwards = {}, {}
    for name, model in models.items():
        model.to(device).train()
        if on_cuda:
            model.visual.to(memory_format=torch.channels_last)
        optimizers[name] = make_optimizer(model, cfg, fused=on_cuda)
        forwards[name] = TrainForward(model)
    if ctx.active:
        from torch.nn.parallel import DistributedDataParallel

        forwards = {name: DistributedDataParallel(f, device_ids=[device.index] if on_cuda else None)
                    for name, f in forwards.items()}
        loss_fn = RaggedClipLoss(ctx.rank, ctx.world_size)
    else:
        loss_fn = ClipLoss()
    min_rows = max(2, ctx.world_size)  # a contrastive loss needs a negative, and every rank a row
    pixels, tokens = corpus.pixels, corpus.tokens
    if on_cuda:  # uint8 pixels and tokens live on the GPU; augmentation runs there
        pixels, tokens = _to_device(pixels, device), _to_device(tokens, device)
    max_shift = cfg.augment.max_shift if cfg.augment.enabled else 0
    fixed_views = fixed_image_views(len(corpus.ids), cfg) if cfg.image_views > 0 else None
    if cfg.text_noise < 0:
        raise ClipmemError(f"text noise σ must be >= 0, got {cfg.text_noise}")
    embed_dim = 0
    if cfg.text_noise > 0:
        with torch.no_grad():
            embed_dim = models[names[0]].encode_text(tokens[:1].to(device)).shape[-1]

    start_epoch = 0
    if resume:
        last = latest_checkpoint(checkpoint_dir)
        if last is not None:
            state = load_training_state(last, names)
            for name in names:
                models[name].load_state_dict(state[name]["state_dict"])
                optimizers[name].load_state_dict(state[name]["optimizer"])
            start_epoch = int(state["epoch"])
    elif log_path.exists() and ctx.is_main:
        log_path.unlink()
    ctx.barrier()  # every rank has read the checkpoint before rank 0 writes the next

    samples, seconds = 0, 0.0
    losses = {name: float("nan") for name in names}
    progress = Progress(
        TextColumn(f"[bold]train {','.join(names) if len(names) <= 2 else f'{len(names)} fold models'}"),
        BarColumn(),
        TextColumn("epoch {task.fields[epoch]}"),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[rate]:.0f} samples/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not show_progress or not ctx.is_main,
        transient=False,
    )
    with progress:
        task = progress.add_task("train", total=total_steps, completed=start_epoch * steps_per_epoch,
                                 epoch=f"{start_epoch}/{cfg.epochs}", loss="-", rate=0.0)
        for epoch in range(start_epoch, cfg.epochs):
            order = torch.randperm(n_slots, generator=step_generator(cfg.data_seed, epoch, -1))
            # on the device, in float64: the sum of the step losses, read once per epoch
            epoch_loss = {name: torch.zeros((), dtype=torch.float64, device=device) for name in names}
            t0 = time.perf_counter()
            epoch_samples = 0
            for step in range(steps_per_epoch):
                global_step = epoch * steps_per_epoch + step
                slots = order[step * batch : (step + 1) * batch]
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
                for name in names:
                    rows = tables[name][slots]
                    keep = rows >= 0
                    rows = rows[keep]
                    n_rows = len(rows)
                    if n_rows < min_rows:
                        continue  # rare tail slot
                    if fixed_views is None:
                        drawn = views.select(keep)
                    else:
                        drawn = fixed_views.select(rows * cfg.image_views + view_pick[keep])
                    captions = corpus.pick_captions(rows, caption_u[keep])
                    picked_noise = None if noise is None else noise[keep]
                    if ctx.active:  # this rank's share of the global batch
                        share = ctx.share(n_rows)
                        loss_fn.set_sizes(share_sizes(n_rows, ctx.world_size))
                        rows, drawn, captions = rows[share], drawn.select(share), captions[share]
                        picked_noise = None if picked_noise is None else picked_noise[share]
                    if on_cuda:
                        images = augment(pixels[_to_device(rows, device)], drawn.to(device), max_shift)
                        images = images.contiguous(memory_format=torch.channels_last)
                        text = tokens[_to_device(captions, device)]
                    else:
                        images = augment(pixels[rows], drawn, max_shift)
                        text = tokens[captions]
                    if batch_hook is not None:
                        batch_hook(name, rows, images, text)
                    for group in optimizers[name].param_groups:
                        group["lr"] = lr
                    with autocast:
                        extra = () if picked_noise is None else (cfg.text_noise * _to_device(picked_noise, device),)
                        image_features, text_features, logit_scale = forwards[name](images, text, *extra)
                        loss = loss_fn(image_features, text_features, logit_scale)
                    optimizers[name].zero_grad(set_to_none=True)
                    loss.backward()
                    optimizers[name].step()
                    with torch.no_grad():  # open_clip clamps the scale to 100
                        models[name].logit_scale.clamp_(0, math.log(100))
                    epoch_loss[name] += loss.detach().to(torch.float64)
                    epoch_samples += n_rows
                elapsed = time.perf_counter() - t0
                progress.update(task, advance=1, epoch=f"{epoch + 1}/{cfg.epochs}",
                                rate=epoch_samples / max(elapsed, 1e-9))
            totals = torch.stack([epoch_loss[name] for name in names])
            if ctx.active:  # each rank holds its weighted share of every step's loss
                torch.distributed.all_reduce(totals)
                totals = totals / ctx.world_size
            losses = dict(zip(names, (totals / steps_per_epoch).tolist()))
            epoch_seconds = time.perf_counter() - t0
            samples += epoch_samples
            seconds += epoch_seconds
            progress.update(task, loss=" ".join(f"{name} {value:.3f}" for name, value in losses.items()))
            if ctx.is_main:
                _save_epoch(checkpoint_dir, epoch + 1, models, optimizers, cfg)
                with open(log_path, "a") as fh:
                    fh.write(json.dumps({"epoch": epoch + 1, **{f"loss_{name}": losses[name] for name in names},
                                         "seconds": epoch_seconds,
                                         "samples_per_s": epoch_samples / epoch_seconds}) + "\n")
    for model in models.values():
        model.eval()
        if on_cuda:
            model.visual.to(memory_format=torch.contiguous_format)
    return {
        "models": names,
        "epochs": cfg.epochs,
        "steps": total_steps,
        "steps_per_model": total_steps,
        "slots_per_step": batch,
        "device": str(device),
        "world_size": ctx.world_size,
        "train_seconds_this_session": round(seconds, 2),
        "samples_per_s": round(samples / seconds, 1) if seconds else None,
        **{f"final_loss_{name}": losses[name] for name in names},
    }


train_pair = train_models  # the published scheme's name for it


def _save_epoch(directory: Path, epoch: int, models, optimizers, cfg: TrainConfig) -> None:
    state = {
        "epoch": epoch,
        "train_config": asdict(cfg),
        **{name: {"state_dict": model.state_dict(), "optimizer": optimizers[name].state_dict()}
           for name, model in models.items()},
    }
    _save_checked(state, directory / f"epoch_{epoch}.pt")
    for old in sorted(directory.glob("epoch_*.pt"), key=lambda p: int(p.stem.split("_")[1]))[: -cfg.keep_checkpoints or None]:
        old.unlink()
        checksum_path(old).unlink(missing_ok=True)


def _save_checked(obj, path: Path) -> None:
    """torch.save to a temporary renamed into place, then its SHA-256 beside it. The old checksum goes
    first: a kill in between leaves a file without one (loaded unverified, with a note), never a file
    with a checksum that does not fit it."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    checksum_path(path).unlink(missing_ok=True)
    tmp.replace(path)
    write_checksum(path)


def save_model(path: Path, model: torch.nn.Module, epoch: int, name: str) -> None:
    """Save in the format open_clip's trainer uses: {'epoch', 'name', 'state_dict'}, with its checksum beside it."""
    _save_checked({"epoch": epoch, "name": name, "state_dict": model.state_dict()}, path)


def load_model_weights(model: torch.nn.Module, path: Path) -> None:
    """Load an open_clip trainer checkpoint or a plain state dict (keys may carry 'module.'), checked against
    the checksum beside it when it has one (clipmem's own models do; open_clip's do not)."""
    try:
        if path.is_file():
            verify_checksum(path)
    except ClipmemError as exc:
        raise ClipmemError(f"checkpoint {exc}") from None
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


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
see scoring.distributed. With `--replicas R` it trains R sets of them on the same split, one after the other, each
with its own initial weights and draws (`replica_config`); scoring averages their scores.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch
from open_clip import ClipLoss
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from clipmem.scoring.config import TEXT_NOISE_PLACEMENTS, TrainConfig
from clipmem.scoring.data.tensors import TensorCorpus
from clipmem.scoring.distributed import SINGLE, Dist, RaggedClipLoss, pick_device, share_sizes
from clipmem.scoring.errors import ClipmemError
from clipmem.scoring.rundir import atomic_write, checksum_path, verify_checksum, write_checksum
from clipmem.scoring.schemes import PUBLISHED_MODELS, model_names, slot_batch_size, slot_table
from clipmem.scoring.transform import ViewParams, augment, normalization_of, sample_views

# seed offsets: text noise, fixed image views and rendering picks draw from streams of their own, so a knob left
# at its default leaves every other draw as it was
NOISE_STREAM, VIEW_STREAM, RENDERING_STREAM = 7919, 104729, 1299709
# seed offset of replica r (--replicas): r * REPLICA_STREAM, far from the seeds users pick (--seed 0, 1, 2, ...), so the
# replicas of one run are not the models of a run with another seed
REPLICA_STREAM = 1_000_033


def replica_config(cfg: TrainConfig, replica: int) -> TrainConfig:
    """The recipe of replica `replica`: initial weights and data draws seeded apart; replica 0 is the run's own."""
    if replica == 0:
        return cfg
    offset = replica * REPLICA_STREAM
    return replace(cfg, init_seed=cfg.init_seed + offset, data_seed=cfg.data_seed + offset)


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


def noisy_text_forward(model, images: torch.Tensor, text: torch.Tensor, noise: torch.Tensor, on: str = "normalized"):
    """The model's forward with Gaussian noise added to the text embeddings.

    on="normalized" (the default): the noise goes on the L2-normalised text embedding and the sum is not
    normalised again, so each image-text cosine (image embedding v, unit length) moves by v·noise ~ N(0, σ²)
    at any embedding width; renormalising would shrink that to about σ / sqrt(1 + dσ²), which depends on the
    width d again. on="projection" (clipmem before issue 16): the noise goes on the projection's output before
    normalisation, whose coordinates have RMS r (about 1 under open_clip's initialisation), so a cosine moves
    by about σ / (r·sqrt(d)): σ / 9.3 for clipmem-demo (r = 1.16 trained, d = 64).
    """
    image_features = model.encode_image(images, normalize=True)
    if on == "normalized":
        text_features = model.encode_text(text, normalize=True) + noise
    elif on == "projection":
        text_features = torch.nn.functional.normalize(model.encode_text(text) + noise, dim=-1)
    else:
        raise ClipmemError(f"unknown text-noise placement '{on}'; known: {', '.join(TEXT_NOISE_PLACEMENTS)}")
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

    def __init__(self, model: torch.nn.Module, noise_on: str = "normalized"):
        super().__init__()
        self.model, self.noise_on = model, noise_on

    def forward(self, images: torch.Tensor, text: torch.Tensor, noise: torch.Tensor | None = None):
        if noise is None:
            return self.model(images, text)[:3]
        return noisy_text_forward(self.model, images, text, noise, on=self.noise_on)


@dataclass(frozen=True)
class SlotPlan:
    """The batch slots that every model steps through, and how many steps that makes."""

    names: list[str]  # the models trained here, in order
    tables: dict[str, torch.Tensor]  # each model's corpus row per slot (-1: its slot is empty)
    n_slots: int
    batch: int  # slots per step
    steps_per_epoch: int
    total_steps: int


def plan_slots(names: list[str], corpus: TensorCorpus, cfg: TrainConfig) -> SlotPlan:
    table = slot_table(corpus)
    planned = model_names(corpus)
    if table.shape[0] != len(planned) or not set(names) <= set(planned):
        raise ClipmemError(f"the split plan defines models {', '.join(planned)}, but {', '.join(names)} were given")
    # a subset of the models (separate jobs) steps through the same slots and draws as all of them at once
    tables = {name: table[planned.index(name)] for name in names}
    batch = slot_batch_size(table, cfg.batch_size)
    steps_per_epoch = math.ceil(table.shape[1] / batch)
    return SlotPlan(names, tables, table.shape[1], batch, steps_per_epoch, steps_per_epoch * cfg.epochs)


class StepDraws(NamedTuple):
    """One step's random draws, shared by every model: augmentations, caption picks, fixed-view picks, noise,
    rendering picks."""

    views: ViewParams
    caption_u: torch.Tensor
    view_pick: torch.Tensor | None
    noise: torch.Tensor | None
    rendering: torch.Tensor | None = None


def draw_step(cfg: TrainConfig, epoch: int, step: int, n_slots: int, fixed_views: bool, embed_dim: int) -> StepDraws:
    gen = step_generator(cfg.data_seed, epoch, step)
    views = sample_views(n_slots, cfg.augment, gen)
    caption_u = torch.rand(n_slots, generator=gen)
    # drawn only when used, so the default recipe's random stream is unchanged
    view_pick = noise = None
    if fixed_views:
        view_pick = (torch.rand(n_slots, generator=gen) * cfg.image_views).long()
    if cfg.text_noise > 0:
        noise_gen = step_generator(cfg.data_seed + NOISE_STREAM, epoch, step)
        noise = torch.randn(n_slots, embed_dim, generator=noise_gen)
    rendering = None
    if cfg.renderings > 1:
        rendering_gen = step_generator(cfg.data_seed + RENDERING_STREAM, epoch, step)
        rendering = (torch.rand(n_slots, generator=rendering_gen) * cfg.renderings).long()
    return StepDraws(views, caption_u, view_pick, noise, rendering)


class Lockstep:
    """The models, their optimisers and the data on the training device: trains one epoch at a time.

    Under torchrun (`ctx` active) each model's forward is wrapped in DistributedDataParallel and
    every rank trains on its share of each batch.
    """

    def __init__(self, models: dict[str, torch.nn.Module], corpus: TensorCorpus, cfg: TrainConfig, plan: SlotPlan,
                 ctx: Dist, device: torch.device, batch_hook=None):
        self.models, self.corpus, self.cfg, self.plan, self.ctx, self.device = models, corpus, cfg, plan, ctx, device
        self.batch_hook = batch_hook
        self.on_cuda = device.type == "cuda"
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.on_cuda else nullcontext()
        self.optimizers, self.forwards = {}, {}
        # each model's views normalised as its config says (read before any DDP wrapping)
        self.norms = {name: normalization_of(model) for name, model in models.items()}
        for name, model in models.items():
            model.to(device).train()
            if self.on_cuda:
                model.visual.to(memory_format=torch.channels_last)
            self.optimizers[name] = make_optimizer(model, cfg, fused=self.on_cuda)
            self.forwards[name] = TrainForward(model, cfg.text_noise_on)
        if ctx.active:
            from torch.nn.parallel import DistributedDataParallel

            self.forwards = {name: DistributedDataParallel(f, device_ids=[device.index] if self.on_cuda else None)
                             for name, f in self.forwards.items()}
            self.loss_fn = RaggedClipLoss(ctx.rank, ctx.world_size)
        else:
            self.loss_fn = ClipLoss()
        self.min_rows = max(2, ctx.world_size)  # a contrastive loss needs a negative, and every rank a row
        if cfg.renderings < 1:
            raise ClipmemError(f"renderings per scene must be >= 1, got {cfg.renderings}")
        # with k > 1 renderings, the pixels trained on are (N, k, 3, H, W): one rendering drawn per slot and step
        self.pixels = corpus.pixels if cfg.renderings == 1 else corpus.renderings(cfg.renderings)
        self.tokens = corpus.tokens
        if self.on_cuda:  # uint8 pixels and tokens live on the GPU; augmentation runs there
            self.pixels, self.tokens = _to_device(self.pixels, device), _to_device(self.tokens, device)
        self.max_shift = cfg.augment.max_shift if cfg.augment.enabled else 0
        self.fixed_views = fixed_image_views(len(corpus.ids), cfg) if cfg.image_views > 0 else None
        if cfg.text_noise < 0:
            raise ClipmemError(f"text noise σ must be >= 0, got {cfg.text_noise}")
        if cfg.text_noise_on not in TEXT_NOISE_PLACEMENTS:
            raise ClipmemError(f"unknown text-noise placement '{cfg.text_noise_on}'; known: "
                               f"{', '.join(TEXT_NOISE_PLACEMENTS)}")
        self.embed_dim = 0
        if cfg.text_noise > 0:
            with torch.no_grad():
                self.embed_dim = models[plan.names[0]].encode_text(self.tokens[:1].to(device)).shape[-1]

    def resume_from(self, checkpoint_dir: Path) -> int:
        """Load the latest checkpoint's weights and optimiser states; returns the epoch to continue from."""
        last = latest_checkpoint(checkpoint_dir)
        if last is None:
            return 0
        state = load_training_state(last, self.plan.names)
        for name in self.plan.names:
            self.models[name].load_state_dict(state[name]["state_dict"])
            self.optimizers[name].load_state_dict(state[name]["optimizer"])
        return int(state["epoch"])

    def epoch(self, epoch: int, on_step) -> tuple[dict[str, float], int]:
        """Train every model for one epoch; returns the mean loss per model (over ranks) and the rows trained.
        `on_step(rows so far)` is called after each step."""
        plan, cfg = self.plan, self.cfg
        order = torch.randperm(plan.n_slots, generator=step_generator(cfg.data_seed, epoch, -1))
        # on the device, in float64: the sum of the step losses, read once per epoch
        epoch_loss = {name: torch.zeros((), dtype=torch.float64, device=self.device) for name in plan.names}
        epoch_samples = 0
        for step in range(plan.steps_per_epoch):
            slots = order[step * plan.batch : (step + 1) * plan.batch]
            draws = draw_step(cfg, epoch, step, len(slots), self.fixed_views is not None, self.embed_dim)
            lr = lr_at(epoch * plan.steps_per_epoch + step, plan.total_steps, cfg)
            for name in plan.names:
                loss, n_rows = self.model_step(name, slots, draws, lr)
                if loss is not None:
                    epoch_loss[name] += loss.detach().to(torch.float64)
                    epoch_samples += n_rows
            on_step(epoch_samples)
        totals = torch.stack([epoch_loss[name] for name in plan.names])
        if self.ctx.active:  # each rank holds its weighted share of every step's loss
            torch.distributed.all_reduce(totals)
            totals = totals / self.ctx.world_size
        return dict(zip(plan.names, (totals / plan.steps_per_epoch).tolist())), epoch_samples

    def model_step(self, name: str, slots: torch.Tensor, draws: StepDraws, lr: float):
        """One optimisation step of one model on its rows of these slots; returns (loss, rows), or
        (None, rows) for a rare tail slot too small to train on."""
        cfg, ctx, device = self.cfg, self.ctx, self.device
        rows = self.plan.tables[name][slots]
        keep = rows >= 0
        rows = rows[keep]
        n_rows = len(rows)
        if n_rows < self.min_rows:
            return None, n_rows
        if self.fixed_views is None:
            drawn = draws.views.select(keep)
        else:
            drawn = self.fixed_views.select(rows * cfg.image_views + draws.view_pick[keep])
        captions = self.corpus.pick_captions(rows, draws.caption_u[keep])
        picked_noise = None if draws.noise is None else draws.noise[keep]
        rendering = None if draws.rendering is None else draws.rendering[keep]
        if ctx.active:  # this rank's share of the global batch
            share = ctx.share(n_rows)
            self.loss_fn.set_sizes(share_sizes(n_rows, ctx.world_size))
            rows, drawn, captions = rows[share], drawn.select(share), captions[share]
            picked_noise = None if picked_noise is None else picked_noise[share]
            rendering = None if rendering is None else rendering[share]
        # each row's image, or its drawn rendering
        index = (rows,) if rendering is None else (rows, rendering)
        if self.on_cuda:
            pixels = self.pixels[tuple(_to_device(i, device) for i in index)]
            images = augment(pixels, drawn.to(device), self.max_shift, norm=self.norms[name])
            images = images.contiguous(memory_format=torch.channels_last)
            text = self.tokens[_to_device(captions, device)]
        else:
            images = augment(self.pixels[index], drawn, self.max_shift, norm=self.norms[name])
            text = self.tokens[captions]
        if self.batch_hook is not None:
            self.batch_hook(name, rows, images, text)
        optimizer = self.optimizers[name]
        for group in optimizer.param_groups:
            group["lr"] = lr
        with self.autocast:
            extra = () if picked_noise is None else (cfg.text_noise * _to_device(picked_noise, device),)
            image_features, text_features, logit_scale = self.forwards[name](images, text, *extra)
            loss = self.loss_fn(image_features, text_features, logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # open_clip clamps the scale to 100
            self.models[name].logit_scale.clamp_(0, math.log(100))
        return loss, n_rows

    def finish(self) -> None:
        for model in self.models.values():
            model.eval()
            if self.on_cuda:
                model.visual.to(memory_format=torch.contiguous_format)


def _progress_bar(names: list[str], show: bool) -> Progress:
    return Progress(
        TextColumn(f"[bold]train {','.join(names) if len(names) <= 2 else f'{len(names)} fold models'}"),
        BarColumn(),
        TextColumn("epoch {task.fields[epoch]}"),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[rate]:.0f} samples/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not show,
        transient=False,
    )


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
    tracker=None,
) -> dict:
    """Train a scheme's models in lockstep; returns a summary (steps, seconds, samples/s, final losses).

    `models` are f and g (published scheme) or fold0..fold{K-1} (k-fold), in that order, all
    with the same initial weights. Under torchrun (`ctx` active) each rank trains on its share
    of every batch with the models wrapped in DistributedDataParallel; only rank 0 writes.
    `batch_hook(model_name, corpus_rows, images, tokens)`, when given, sees every batch exactly as the
    model is about to (this rank's share under torchrun), e.g. to audit what a mitigation changes.
    `tracker` (scoring.trajectory.Tracker), when given, scores the models after each tracked epoch, before its
    checkpoint is written: an epoch whose checkpoint exists has its rows.
    """
    device = device or pick_device(cfg.device)
    plan = plan_slots(list(models), corpus, cfg)
    names = plan.names
    if ctx.is_main:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    trainer = Lockstep(models, corpus, cfg, plan, ctx, device, batch_hook)
    start_epoch = 0
    if resume:
        start_epoch = trainer.resume_from(checkpoint_dir)
    elif log_path.exists() and ctx.is_main:
        log_path.unlink()
    ctx.barrier()  # every rank has read the checkpoint before rank 0 writes the next
    if tracker is not None:
        tracker.start(start_epoch, models)

    samples, seconds = 0, 0.0
    losses = {name: float("nan") for name in names}
    with _progress_bar(names, show_progress and ctx.is_main) as progress:
        task = progress.add_task("train", total=plan.total_steps, completed=start_epoch * plan.steps_per_epoch,
                                 epoch=f"{start_epoch}/{cfg.epochs}", loss="-", rate=0.0)
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()

            def on_step(epoch_samples: int, epoch: int = epoch, t0: float = t0) -> None:
                progress.update(task, advance=1, epoch=f"{epoch + 1}/{cfg.epochs}",
                                rate=epoch_samples / max(time.perf_counter() - t0, 1e-9))

            losses, epoch_samples = trainer.epoch(epoch, on_step)
            epoch_seconds = time.perf_counter() - t0
            samples += epoch_samples
            seconds += epoch_seconds
            progress.update(task, loss=" ".join(f"{name} {value:.3f}" for name, value in losses.items()))
            if tracker is not None:
                tracker.after_epoch(epoch + 1, models)
            if ctx.is_main:
                _save_epoch(checkpoint_dir, epoch + 1, models, trainer.optimizers, cfg)
                with open(log_path, "a") as fh:
                    fh.write(json.dumps({"epoch": epoch + 1, **{f"loss_{name}": losses[name] for name in names},
                                         "seconds": epoch_seconds,
                                         "samples_per_s": epoch_samples / epoch_seconds}) + "\n")
    trainer.finish()
    return {
        "models": names,
        "epochs": cfg.epochs,
        "steps": plan.total_steps,
        "steps_per_model": plan.total_steps,
        "slots_per_step": plan.batch,
        "device": str(device),
        "world_size": ctx.world_size,
        "train_seconds_this_session": round(seconds, 2),
        "samples_per_s": round(samples / seconds, 1) if seconds else None,
        **{f"final_loss_{name}": losses[name] for name in names},
        **({"track_seconds_this_session": round(tracker.seconds, 2)} if tracker is not None else {}),
    }


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
    # through a file object: given a path, torch.save names the archive's folder after the temporary file,
    # whose name holds the process id, so the same weights would give other bytes in every run
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
        checksum_path(path).unlink(missing_ok=True)
    write_checksum(path)


def save_model(path: Path, model: torch.nn.Module, epoch: int, name: str) -> None:
    """Save in the format open_clip's trainer uses: {'epoch', 'name', 'state_dict'}, with its checksum beside it."""
    _save_checked({"epoch": epoch, "name": name, "state_dict": model.state_dict()}, path)


def read_state_dict(path: Path) -> dict:
    """The weights of an open_clip trainer checkpoint or a plain state dict, keys without a 'module.' prefix, checked
    against the checksum beside the file when it has one (clipmem's own models do; open_clip's do not)."""
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
    return {k.removeprefix("module."): v for k, v in state.items()}


def fit_state_dict(model: torch.nn.Module, state: dict, path: Path) -> None:
    """Load weights read from `path` into the model, or say where they do not fit its architecture."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise ClipmemError(f"checkpoint {path} does not fit the model architecture: {first}") from None


def load_model_weights(model: torch.nn.Module, path: Path) -> None:
    """Load an open_clip trainer checkpoint or a plain state dict (keys may carry 'module.'), checked against
    the checksum beside it when it has one (clipmem's own models do; open_clip's do not)."""
    fit_state_dict(model, read_state_dict(path), path)

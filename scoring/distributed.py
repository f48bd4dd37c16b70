"""Several processes at once: torchrun training (DistributedDataParallel) and sharded scoring.

Launched by torchrun, a process finds RANK, WORLD_SIZE and LOCAL_RANK in its environment.
`clipmem train` and `clipmem score` look for them, so both of these work:

    torchrun --nproc_per_node 2 -m clipmem train RUN_DIR   # or: torchrun ... $(which clipmem) train RUN_DIR

Training keeps the global batch at the recipe's batch size: every rank draws the same slots,
augmentations and captions for the whole batch (the draws are seeded per step) and trains on
its contiguous share of each model's rows; gradients are averaged by DDP and the loss is
open_clip's ClipLoss with local_loss and gather_with_grad, extended to shares of unequal size.
Rank 0 writes checkpoints, logs and the final models. Scoring under torchrun scores one shard
per rank and merges on rank 0 after a barrier.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from open_clip import ClipLoss

from clipmem.scoring.errors import ClipmemError

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Dist:
    """Where this process stands: rank r of world_size processes (1 and 0 when alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, n: int) -> slice:
        """This rank's contiguous share of n items (shares differ in size by at most one)."""
        return share_bounds(n, self.world_size, self.rank)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


SINGLE = Dist()


def share_bounds(n: int, parts: int, index: int) -> slice:
    """Part `index` of `parts` contiguous, near-equal parts of range(n) (the first n % parts get one more)."""
    base, extra = divmod(n, parts)
    start = index * base + min(index, extra)
    return slice(start, start + base + (index < extra))


def share_sizes(n: int, parts: int) -> list[int]:
    """Sizes of the `parts` contiguous shares of n items."""
    return [n // parts + (index < n % parts) for index in range(parts)]


def from_environment() -> Dist:
    """The torchrun environment, or SINGLE when the process was not started by torchrun (or alone)."""
    if not all(k in os.environ for k in ENV_KEYS):
        return SINGLE
    try:
        found = Dist(rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                     local_rank=int(os.environ["LOCAL_RANK"]))
    except ValueError:
        raise ClipmemError("RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
    if not 0 <= found.rank < found.world_size:
        raise ClipmemError(f"RANK={found.rank} does not lie in [0, WORLD_SIZE={found.world_size})")
    return found if found.world_size > 1 else SINGLE


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ClipmemError("--device cuda asked for, but no CUDA device is available")
    return torch.device(name)


def device_for(ctx: Dist, name: str) -> torch.device:
    """The device of this rank: its local GPU on CUDA, else the CPU."""
    device = pick_device(name)
    if device.type == "cuda" and ctx.active:
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    return device


def init(ctx: Dist, device: torch.device, backend: str | None = None, long_timeout: bool = False) -> bool:
    """Join the process group (NCCL on CUDA, gloo on the CPU) unless alone or already joined.

    Returns whether this call created it (and so should shut it down). `long_timeout` lets a
    barrier wait up to 24 h (sharded scoring: ranks wait there for the slowest shard).
    """
    if not ctx.active or dist.is_initialized():
        return False
    import warnings
    from datetime import timedelta

    # open_clip's gather (and ours) use torch.distributed.nn.all_gather, which torch now calls deprecated
    warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated")

    extra = {"timeout": timedelta(hours=24)} if long_timeout else {}
    dist.init_process_group(backend or ("nccl" if device.type == "cuda" else "gloo"), **extra)
    return True


def shutdown(ctx: Dist) -> None:
    if ctx.active and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def gather_ragged(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """All ranks' rows of x, in rank order, with gradients flowing back to each owner; rank r holds sizes[r] rows.

    all_gather needs equal shapes, so every share is zero-padded to the largest and trimmed after.
    """
    import torch.distributed.nn as dist_nn

    longest = max(sizes)
    if x.shape[0] < longest:
        x = torch.cat([x, x.new_zeros(longest - x.shape[0], *x.shape[1:])])
    parts = dist_nn.all_gather(x)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


class RaggedClipLoss(ClipLoss):
    """open_clip's ClipLoss(local_loss=True, gather_with_grad=True) for shares of unequal size.

    Each rank scores its own rows against every rank's rows. The local mean is weighted by
    (local rows x world size / global rows), so that DDP's gradient average equals the gradient
    of the global batch's mean loss, as in single-process training; the returned value is that
    weighted local term (average it over ranks for the global loss). `set_sizes` must be called
    with every rank's row count before each forward.
    """

    def __init__(self, rank: int, world_size: int):
        super().__init__(local_loss=True, gather_with_grad=True, rank=rank, world_size=world_size)
        self.sizes: list[int] = []

    def set_sizes(self, sizes: list[int]) -> None:
        self.sizes = list(sizes)

    def get_ground_truth(self, device, num_logits) -> torch.Tensor:
        return torch.arange(num_logits, device=device, dtype=torch.long) + sum(self.sizes[: self.rank])

    def get_logits(self, image_features, text_features, logit_scale, logit_bias=None):
        if len(set(self.sizes)) == 1:  # equal shares: open_clip's own gather
            return super().get_logits(image_features, text_features, logit_scale, logit_bias)
        all_image = gather_ragged(image_features, self.sizes)
        all_text = gather_ragged(text_features, self.sizes)
        logits_per_image = logit_scale * image_features @ all_text.T
        logits_per_text = logit_scale * text_features @ all_image.T
        if logit_bias is not None:
            logits_per_image += logit_bias
            logits_per_text += logit_bias
        return logits_per_image, logits_per_text

    def forward(self, image_features, text_features, logit_scale, logit_bias=None, output_dict=False):
        loss = super().forward(image_features, text_features, logit_scale, logit_bias)
        loss = loss * (self.sizes[self.rank] * self.world_size / sum(self.sizes))
        return {"contrastive_loss": loss} if output_dict else loss


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of a model's state dict (names, dtypes, shapes and bytes), to check ranks agree."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def gather_objects(ctx: Dist, obj) -> list:
    """obj from every rank, in rank order (a one-element list when alone)."""
    if not ctx.active:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


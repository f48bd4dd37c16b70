"""Batched, seeded image augmentation that keeps captions true.

A view is a small translation (reflect-padded crop) plus brightness/contrast
jitter: no flips, no hue change, no large crops, since captions name left/right,
top/bottom and colours. Parameters are drawn per pair from an explicit generator
so that f and g can be shown exactly the same views.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from clipmem.scoring.config import AugmentConfig

_MEAN = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)


@dataclass
class ViewParams:
    """Per-pair augmentation draws: shifts (B, 2) ints and jitter factors (B, 2)."""

    shift: torch.Tensor
    jitter: torch.Tensor

    def select(self, mask) -> "ViewParams":
        return ViewParams(self.shift[mask], self.jitter[mask])

    def to(self, device: torch.device) -> "ViewParams":
        """On `device` (pinned, non-blocking copies to a GPU)."""
        if torch.device(device).type != "cuda" or self.shift.device.type == "cuda":
            return ViewParams(self.shift.to(device), self.jitter.to(device))
        return ViewParams(self.shift.pin_memory().to(device, non_blocking=True),
                          self.jitter.pin_memory().to(device, non_blocking=True))


def sample_views(n: int, cfg: AugmentConfig, generator: torch.Generator) -> ViewParams:
    s = cfg.max_shift if cfg.enabled else 0
    shift = torch.randint(0, 2 * s + 1, (n, 2), generator=generator)
    u = torch.rand((n, 2), generator=generator) * 2 - 1
    scale = torch.tensor([cfg.brightness, cfg.contrast]) if cfg.enabled else torch.zeros(2)
    return ViewParams(shift=shift, jitter=1 + u * scale)


def _stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if device.type == "cpu":
        return _MEAN, _STD
    return _MEAN.to(device), _STD.to(device)


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) to the float input open_clip's towers expect (on the pixels' device)."""
    mean, std = _stats(pixels.device)
    return (pixels.float() / 255.0 - mean) / std


def augment(pixels: torch.Tensor, params: ViewParams, max_shift: int) -> torch.Tensor:
    """Apply the drawn views to uint8 images; returns normalised float images on the pixels' device."""
    device = pixels.device
    if params.shift.device != device:
        params = params.to(device)
    x = pixels.float() / 255.0
    if max_shift > 0:
        b, _, h, w = x.shape
        padded = F.pad(x, (max_shift,) * 4, mode="reflect")
        rows = params.shift[:, 0:1] + torch.arange(h, device=device)  # (B, H)
        cols = params.shift[:, 1:2] + torch.arange(w, device=device)  # (B, W)
        batch = torch.arange(b, device=device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    brightness = params.jitter[:, 0].view(-1, 1, 1, 1)
    contrast = params.jitter[:, 1].view(-1, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean) * brightness
    mean, std = _stats(device)
    return (x.clamp(0, 1) - mean) / std

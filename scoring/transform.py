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
    # in place on a float copy of its own (never the caller's tensor): the same operations in the same order, without a buffer per step
    return pixels.to(torch.float32, copy=True).div_(255.0).sub_(mean).div_(std)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Positions -size < i < 2·size - 1 mirrored into [0, size) as reflect padding does (edge not repeated)."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def augment(pixels: torch.Tensor, params: ViewParams, max_shift: int,
            source: torch.Tensor | None = None) -> torch.Tensor:
    """Apply the drawn views to uint8 images; returns normalised float images on the pixels' device.

    View i shows image `source[i]` of `pixels` (default: image i), so n views of one image need no
    n-fold copy of its pixels.

    The numbers are bit-identical to the plain formulation (reflect-pad, crop at the shift, jitter about
    the image mean, normalise) that training and scoring have always used: the crop is one gather of
    source positions mirrored at the edges, made in (height, width, channel) memory order, the order
    the plain formulation's mean is reduced in (a float sum depends on its order); every later step is
    elementwise and runs in place on that one buffer, the per-channel constants laid out in the same
    order so that they vectorise; the result has the channel-last strides the towers always received.
    """
    device = pixels.device
    if params.shift.device != device:
        params = params.to(device)
    if source is not None and source.device != device:
        source = source.to(device)
    mean_rgb, std_rgb = _stats(device)
    brightness = params.jitter[:, 0].view(-1, 1, 1, 1)
    contrast = params.jitter[:, 1].view(-1, 1, 1, 1)
    if max_shift == 0:
        x = (pixels if source is None else pixels[source]).to(torch.float32, copy=True).div_(255.0)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return x.sub_(mean).mul_(contrast).add_(mean).mul_(brightness).clamp_(0, 1).sub_(mean_rgb).div_(std_rgb)
    n, c, h, w = pixels.shape
    b = len(params.shift)
    if source is None:
        source = torch.arange(b, device=device)
    rows = _reflect(params.shift[:, 0:1] - max_shift + torch.arange(h, device=device), h)  # (B, H)
    cols = _reflect(params.shift[:, 1:2] - max_shift + torch.arange(w, device=device), w)  # (B, W)
    at = (source[:, None, None] * (h * w) + rows[:, :, None] * w + cols[:, None, :]).view(-1)
    x = pixels.permute(0, 2, 3, 1).reshape(n * h * w, c).index_select(0, at).view(b, h, w, c).float()
    x.div_(255.0)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    mean_hwc = mean_rgb.view(1, 1, 1, c).expand(1, h, w, c).contiguous()
    std_hwc = std_rgb.view(1, 1, 1, c).expand(1, h, w, c).contiguous()
    x.sub_(mean).mul_(contrast).add_(mean).mul_(brightness).clamp_(0, 1).sub_(mean_hwc).div_(std_hwc)
    return x.permute(0, 3, 1, 2)

"""Batched, seeded image augmentation that keeps captions true, and the normalisation the towers read.

A view is a small translation (reflect-padded crop) plus brightness/contrast
jitter: no flips, no hue change, no large crops, since captions name left/right,
top/bottom and colours. Parameters are drawn per pair from an explicit generator
so that f and g can be shown exactly the same views.

Every view is normalised with the mean and std of the model's config, as open_clip's
preprocessing is: its `preprocess_cfg` (open_clip's {"model_cfg", "preprocess_cfg"} file
form), else open_clip's defaults, OpenAI's. The models carry it where open_clip puts it,
`model.visual.preprocess_cfg` (scoring.models.create_model sets it), so that whatever
shows a model pixels, training or scoring, normalises them as that model's config says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from clipmem.scoring.config import AugmentConfig
from clipmem.scoring.errors import ClipmemError


@dataclass(frozen=True)
class Normalization:
    """Per-channel (R, G, B) mean and std that images in [0, 1] are normalised with before a tower reads them."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # (1, 3, 1, 1) float32 CPU tensors of mean and std, made once
    tensors: tuple[torch.Tensor, torch.Tensor] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "tensors", (torch.tensor(self.mean).view(1, 3, 1, 1),
                                             torch.tensor(self.std).view(1, 3, 1, 1)))

    def stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std as (1, 3, 1, 1) tensors on `device`."""
        mean, std = self.tensors
        if device.type == "cpu":
            return mean, std
        return mean.to(device), std.to(device)


OPENAI = Normalization(tuple(OPENAI_DATASET_MEAN), tuple(OPENAI_DATASET_STD))


def normalization(preprocess_cfg: dict | None, source: str = "the model config") -> Normalization:
    """The normalisation an open_clip `preprocess_cfg` names: its 'mean' and 'std' where given (open_clip's
    merge_preprocess_dict skips a None), else OpenAI's, open_clip's PreprocessCfg defaults. Values that are not
    three finite numbers, or a std not above 0, are refused naming `source`."""
    values = {}
    for key, default in (("mean", OPENAI.mean), ("std", OPENAI.std)):
        given = (preprocess_cfg or {}).get(key)
        if given is None:
            values[key] = default
            continue
        try:
            numbers = tuple(float(v) for v in given)
        except (TypeError, ValueError):
            numbers = ()
        if len(numbers) != 3 or not all(math.isfinite(v) for v in numbers) or (key == "std" and min(numbers) <= 0):
            raise ClipmemError(f"{source}: preprocess_cfg {key} must be three finite numbers (R, G, B)"
                               f"{', each above 0' if key == 'std' else ''}, got {given!r}")
        values[key] = numbers
    if values["mean"] == OPENAI.mean and values["std"] == OPENAI.std:
        return OPENAI
    return Normalization(values["mean"], values["std"])


def normalization_of(model) -> Normalization:
    """The normalisation of a model's config, read where open_clip keeps it (`model.visual.preprocess_cfg`, or
    its legacy image_mean/image_std); a model without it gets open_clip's defaults, OpenAI's."""
    from open_clip import get_model_preprocess_cfg

    return normalization(get_model_preprocess_cfg(model), f"the preprocess_cfg of {type(model).__name__}")


def shared_normalization(models) -> Normalization:
    """The one normalisation of these models, which see the same images; models that disagree are refused."""
    norms = {normalization_of(m) for m in models}
    if len(norms) > 1:
        raise ClipmemError("models that see the same images normalise them differently: "
                           + "; ".join(f"mean {n.mean}, std {n.std}" for n in norms))
    return norms.pop() if norms else OPENAI


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


def normalize(pixels: torch.Tensor, norm: Normalization = OPENAI) -> torch.Tensor:
    """uint8 (B, 3, H, W) to the float input open_clip's towers expect (on the pixels' device), normalised by
    `norm` (the model's: `normalization_of`)."""
    mean, std = norm.stats(pixels.device)
    # in place on a float copy of its own (never the caller's tensor): the same operations in the same order, without a buffer per step
    return pixels.to(torch.float32, copy=True).div_(255.0).sub_(mean).div_(std)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Positions -size < i < 2·size - 1 mirrored into [0, size) as reflect padding does (edge not repeated)."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def augment(pixels: torch.Tensor, params: ViewParams, max_shift: int,
            source: torch.Tensor | None = None, norm: Normalization = OPENAI) -> torch.Tensor:
    """Apply the drawn views to uint8 images; returns float images on the pixels' device, normalised by `norm`
    (the model's: `normalization_of`).

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
    mean_rgb, std_rgb = norm.stats(device)
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

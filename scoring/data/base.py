"""The one shape every source is read into: ids, captions, truth tags and lazy images.

A source reader returns a `PairDataset`: parallel lists of ids, caption lists,
truth tags and image references, plus `open_image(ref)` that decodes one image on
demand (as 8-bit RGB through scoring.images: size-bounded, transparency on white), so a
million-row source is held as strings, never as pixels.

Bad items go through `Problems`: with on_error="fail" the first one stops the
read with a message naming the file and row; with "skip" it is left out and
recorded, so nothing is dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from clipmem.scoring.errors import ClipmemError
from clipmem.scoring.images import ImageError

ON_ERROR = ("fail", "skip")


class Problems:
    """Collects skipped items, or raises on the first one."""

    def __init__(self, on_error: str = "fail"):
        if on_error not in ON_ERROR:
            raise ClipmemError(f"--on-error must be one of {', '.join(ON_ERROR)}, got '{on_error}'")
        self.on_error = on_error
        self.skipped: list[dict] = []

    def report(self, where: str, reason: str, sample_id: str | None = None) -> None:
        if self.on_error == "fail":
            raise ClipmemError(f"{where}: {reason} (pass --on-error skip to leave such items out)")
        self.skipped.append({"where": where, "sample_id": sample_id, "reason": reason})


def clean_caption(value) -> str | None:
    """A usable caption string, or None for empty/whitespace-only/non-text values."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not value or any("\udc80" <= ch <= "\udcff" for ch in value):  # surrogate-escaped bad bytes
        return None
    return value


def caption_problem(value) -> str:
    if isinstance(value, bytes):
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return "caption is not valid UTF-8"
    if isinstance(value, str) and any("\udc80" <= ch <= "\udcff" for ch in value):
        return "caption is not valid UTF-8"
    return "caption is empty or whitespace only"


@dataclass
class PairDataset:
    """Pairs of one image and one or more captions.

    `image_refs` are paths relative to `root` (or `shard.tar#member` for images
    inside tar shards); `attributes` carries optional labels (e.g. the synthetic
    shape and colour) used by zero-shot evaluation.
    """

    name: str
    root: Path
    ids: list[str]
    captions: list[list[str]]
    truth: list[str]
    image_refs: list[str]
    open_image: Callable[[str], Image.Image]  # 8-bit RGB: scoring.images.decode_rgb
    attributes: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    # refs that are plain files under root (False for members of tar shards)
    plain_files: bool = True
    # per pair, refs of further renderings of its scene (a folder's `renderings`); empty when the source has none
    renderings: list[list[str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def index_of(self) -> dict[str, int]:
        return {sid: i for i, sid in enumerate(self.ids)}

    def subset(self, keep: list[int]) -> "PairDataset":
        pick = lambda xs: [xs[i] for i in keep] if xs else xs  # noqa: E731
        return replace(self, ids=pick(self.ids), captions=pick(self.captions), truth=pick(self.truth),
                       image_refs=pick(self.image_refs), attributes=pick(self.attributes),
                       renderings=pick(self.renderings))

    def image_path(self, i: int) -> Path:
        return Path(self.root) / self.image_refs[i]

    def load_pixels(self, indices: list[int] | np.ndarray, size: int) -> torch.Tensor:
        """Decode the given pairs' images as one uint8 tensor (N, 3, size, size)."""
        out = torch.empty((len(indices), 3, size, size), dtype=torch.uint8)
        for row, i in enumerate(indices):
            out[row] = self._pixels(int(i), self.image_refs[int(i)], size)
        return out

    def load_renderings(self, indices: list[int] | np.ndarray, k: int, size: int) -> torch.Tensor:
        """Renderings 1 .. k-1 of the given pairs' scenes as one uint8 tensor (N, k - 1, 3, size, size)."""
        out = torch.empty((len(indices), k - 1, 3, size, size), dtype=torch.uint8)
        for row, i in enumerate(indices):
            refs = self.renderings[int(i)] if self.renderings else []
            if len(refs) < k - 1:
                raise ClipmemError(
                    f"pair {self.ids[int(i)]} has {len(refs) + 1} rendering(s) of its scene, but training asks for "
                    f"{k} (--renderings): the built-in set has them when written with --renderings {k}, a folder "
                    "when its metadata.jsonl lists them under 'renderings'")
            for j, ref in enumerate(refs[: k - 1]):
                out[row, j] = self._pixels(int(i), ref, size)
        return out

    def _pixels(self, i: int, ref: str, size: int) -> torch.Tensor:
        img = self.open_checked(i, ref)
        if img.size != (size, size):
            img = img.resize((size, size), Image.BICUBIC)
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)

    def open_checked(self, i: int, ref: str | None = None) -> Image.Image:
        """Pair i's image (or the image `ref` of its scene), with a message naming the pair when it fails."""
        ref = self.image_refs[i] if ref is None else ref
        try:
            return self.open_image(ref)
        except FileNotFoundError:
            raise ClipmemError(f"image of pair {self.ids[i]} ({ref}) does not exist") from None
        except (ImageError, OSError, ValueError, UnidentifiedImageError, KeyError) as exc:
            raise ClipmemError(f"cannot decode image of pair {self.ids[i]} ({ref}): {exc}") from None


def verify_images(dataset: PairDataset, problems: Problems) -> PairDataset:
    """Decode every image once, so a bad one is found before training rather than during it."""
    keep = []
    for i in range(len(dataset)):
        try:
            dataset.open_checked(i)
        except ClipmemError as exc:
            problems.report(f"{dataset.root}/{dataset.image_refs[i]}", str(exc), dataset.ids[i])
            continue
        keep.append(i)
    return dataset if len(keep) == len(dataset) else dataset.subset(keep)

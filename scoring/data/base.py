"""The one shape every source is read into: ids, captions, truth tags and lazy images."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from scoring.errors import ClipmemError


@dataclass
class PairDataset:
    """Pairs of one image and one or more captions.

    Images are loaded lazily through `open_image`, so a large source is never held
    in memory as decoded pixels; `attributes` carries optional labels (e.g. the
    synthetic shape and colour) used by zero-shot evaluation.
    """

    name: str
    root: Path
    ids: list[str]
    captions: list[list[str]]
    truth: list[str]
    image_refs: list[str]
    open_image: Callable[[str], Image.Image]
    attributes: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def index_of(self) -> dict[str, int]:
        return {sid: i for i, sid in enumerate(self.ids)}

    def load_pixels(self, indices: list[int] | np.ndarray, size: int) -> torch.Tensor:
        """Decode the given pairs' images as one uint8 tensor (N, 3, size, size)."""
        out = torch.empty((len(indices), 3, size, size), dtype=torch.uint8)
        for row, i in enumerate(indices):
            ref = self.image_refs[int(i)]
            try:
                img = self.open_image(ref).convert("RGB")
            except (OSError, ValueError) as exc:
                raise ClipmemError(f"cannot decode image of pair {self.ids[int(i)]} ({ref}): {exc}") from None
            if img.size != (size, size):
                img = img.resize((size, size), Image.BICUBIC)
            out[row] = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        return out


def load_dataset(kind: str, path: Path | None) -> PairDataset:
    """Open a source by kind ('folder' or 'synthetic'); synthetic needs a written folder."""
    from scoring.data.folder import read_folder

    if kind in ("folder", "synthetic"):
        if path is None:
            raise ClipmemError(f"--data PATH is required for --dataset {kind}")
        return read_folder(Path(path), name=kind)
    raise ClipmemError(f"unknown dataset kind '{kind}'; known: folder, synthetic")

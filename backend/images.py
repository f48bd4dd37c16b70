"""Where a pair's image is, and thumbnails of it.

Plain files stay where the run found them and are recorded relative to the run's data
root. Images inside WebDataset tar shards ("shard.tar#member") are decoded once at
ingest and stored in the database as thumbnails. Serving resolves the recorded file
inside the data root and refuses anything that would leave it.
"""

from __future__ import annotations

import io
import tarfile
import threading
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

from PIL import Image

from backend.rundir import TAR_REF, UNSAFE_REF
from scoring.errors import ClipmemError
from scoring.images import MAX_PIXELS, ImageError, open_image, to_rgb


class ImageOutsideRoot(Exception):
    """A recorded image location that resolves outside its run's data root."""


def is_stored(ref: str) -> bool:
    """True when the image is not a plain file, so ingest stores a thumbnail of it."""
    return TAR_REF.match(ref) is not None


def resolve_inside(root: Path, ref: str) -> Path:
    """The recorded file, resolved (symlinks too) and checked to be inside `root`."""
    if UNSAFE_REF.search(ref):
        raise ImageOutsideRoot(ref)
    root = root.resolve()
    path = (root / ref).resolve()
    if not path.is_relative_to(root):
        raise ImageOutsideRoot(ref)
    return path


class PixelBudget:
    """Admits image decodes while the pixels being decoded at once stay within `limit`, so concurrent
    requests for large images wait their turn instead of multiplying the memory one of them needs
    (about 8 bytes a pixel while an RGBA image is flattened); small thumbnails pass side by side."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_use = 0
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        pixels = min(pixels, self.limit)  # one image over the budget still runs, alone
        with self._changed:
            self._changed.wait_for(lambda: self.in_use + pixels <= self.limit)
            self.in_use += pixels
        try:
            yield
        finally:
            with self._changed:
                self.in_use -= pixels
                self._changed.notify_all()


def encode(img: Image.Image, media_type: str) -> bytes:
    buf = io.BytesIO()
    if media_type == "image/jpeg":
        img.save(buf, format="JPEG", quality=88)
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


def resize_longest(img: Image.Image, size: int, enlarge: bool = True) -> Image.Image:
    """Scale so the longest side is `size`; small images are enlarged (unless not asked) without blurring
    their pixels."""
    w, h = img.size
    scale = size / max(w, h)
    if scale > 1 and not enlarge:
        return img
    target = (max(1, round(w * scale)), max(1, round(h * scale)))
    if target == img.size:
        return img
    return img.resize(target, Image.NEAREST if scale > 1 else Image.LANCZOS)


def thumbnail(source: bytes | Path, size: int, enlarge: bool = True, max_pixels: int = MAX_PIXELS,
              budget: PixelBudget | None = None) -> tuple[bytes, str]:
    """(encoded bytes, media type) of the image scaled to longest side `size`, decoded as training sees it
    (scoring.images: refused over `max_pixels`, transparency on white). Raises ImageError (no path in it).

    JPEG sources stay JPEG (photos); everything else becomes lossless PNG.
    """
    with open_image(source, max_pixels) as img:
        media_type = "image/jpeg" if img.format == "JPEG" else "image/png"
        img.draft(None, (size, size))  # JPEG: decode at up to 1/8 scale, still at least `size` on each side
        with budget.hold(img.width * img.height) if budget else nullcontext():
            return encode(resize_longest(to_rgb(img), size, enlarge), media_type), media_type


def store_shard_images(data_root: Path, refs: list[tuple[int, str, str]], size: int) -> list[tuple[int, str, bytes]]:
    """Thumbnails of the tar-shard images among `refs` = (pair_index, sample_id, ref).

    Each shard is opened once; returns (pair_index, media_type, bytes).
    """
    by_shard: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for pair_index, sample_id, ref in refs:
        match = TAR_REF.match(ref)
        if match:
            by_shard[match["shard"]].append((pair_index, sample_id, match["member"]))
    out = []
    for shard, members in by_shard.items():
        try:
            path = resolve_inside(data_root, shard)
        except ImageOutsideRoot:
            raise ClipmemError(f"shard {shard} is outside the data root {data_root}") from None
        try:
            tar = tarfile.open(path)
        except (OSError, tarfile.TarError) as exc:
            raise ClipmemError(f"cannot open shard {path} (images of sample {members[0][1]} and others): {exc}") \
                from None
        with tar:
            for pair_index, sample_id, member in members:
                try:
                    handle = tar.extractfile(member)
                    if handle is None:
                        raise KeyError(member)
                    data, media_type = thumbnail(handle.read(), size, enlarge=False)
                except KeyError:
                    raise ClipmemError(f"shard {path} has no member {member} (image of sample {sample_id})") from None
                except (ImageError, OSError) as exc:
                    raise ClipmemError(f"cannot decode {member} in {path} (image of sample {sample_id}): {exc}") \
                        from None
                out.append((pair_index, media_type, data))
    return out

"""Where a pair's image is, and thumbnails of it.

Plain files stay where the run found them and are recorded relative to the run's data
root. Images inside WebDataset tar shards ("shard.tar#member") are decoded once at
ingest and stored in the database as thumbnails. Serving resolves the recorded file
inside the data root and refuses anything that would leave it.
"""

from __future__ import annotations

import ctypes
import io
import tarfile
import threading
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator

from PIL import Image

from clipmem.backend.rundir import UNSAFE_REF
from clipmem.scoring.columns import split_image_ref
from clipmem.scoring.errors import ClipmemError
from clipmem.scoring.images import MAX_PIXELS, ImageError, open_image, to_rgb


class ImageOutsideRoot(Exception):
    """A recorded image location that resolves outside its run's data root."""


def is_stored(ref: str) -> bool:
    """True when the image is not a plain file, so ingest stores a thumbnail of it."""
    return split_image_ref(ref)[1] is not None


def resolve_inside(root: Path, ref: str) -> Path:
    """The recorded file, resolved (symlinks too) and checked to be inside `root`."""
    if UNSAFE_REF.search(ref):
        raise ImageOutsideRoot(ref)
    root = root.resolve()
    path = (root / ref).resolve()
    if not path.is_relative_to(root):
        raise ImageOutsideRoot(ref)
    return path


def _malloc_trim() -> Callable[[], object]:
    """glibc's malloc_trim(0), or nothing where there is no glibc."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return lambda: None
    return lambda: trim(0)


# glibc keeps memory freed by a thread in that thread's malloc arena, so decodes of large images taking
# turns on the server's worker threads each left ~5 bytes a pixel resident in another arena (measured:
# 16 requests for a 49-megapixel PNG took the API from 0.2 to 1.3 GB resident; trimming after each large
# decode, back to 0.26 GB)
release_freed_memory = _malloc_trim()
TRIM_AFTER_PIXELS = 4_000_000


class DecodeBusy(Exception):
    """The pixel budget did not admit a decode in time, or too many already wait: try again later."""


class PixelBudget:
    """Admits image decodes while the pixels being decoded at once stay within `limit`, so concurrent
    requests for large images wait their turn instead of multiplying the memory one of them needs
    (about 5 bytes a pixel while an RGB image is scaled, more for RGBA); small thumbnails pass side by
    side. After a large decode the freed memory is handed back to the system.

    Waiting is bounded, as each waiter holds one of the server's worker threads: at most `max_waiting`
    requests wait, each at most `wait_s` seconds; others get DecodeBusy at once or when their time is up.
    """

    def __init__(self, limit: int, wait_s: float = 10.0, max_waiting: int = 8):
        self.limit = limit
        self.wait_s = wait_s
        self.max_waiting = max_waiting
        self.in_use = 0
        self.waiting = 0
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        pixels = min(pixels, self.limit)  # one image over the budget still runs, alone

        def fits() -> bool:
            return self.in_use + pixels <= self.limit

        with self._changed:
            if not fits():
                if self.waiting >= self.max_waiting:
                    raise DecodeBusy
                self.waiting += 1
                try:
                    admitted = self._changed.wait_for(fits, timeout=self.wait_s)
                finally:
                    self.waiting -= 1
                if not admitted:
                    raise DecodeBusy
            self.in_use += pixels
        try:
            yield
        finally:
            if pixels >= TRIM_AFTER_PIXELS:
                release_freed_memory()
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
    if scale > 1:
        return img.resize(target, Image.NEAREST)
    # reducing by whole factors first: 8x faster from 49 megapixels (0.15 against 1.2 s), and at a gap of
    # 3 Pillow's docs call the result indistinguishable from plain Lanczos
    return img.resize(target, Image.LANCZOS, reducing_gap=3.0)


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
            data = encode(resize_longest(to_rgb(img), size, enlarge), media_type)
            img.close()  # its decoded pixels are freed before the budget's release hands memory back
    return data, media_type


def store_shard_images(data_root: Path, refs: list[tuple[int, str, str]], size: int) -> list[tuple[int, str, bytes]]:
    """Thumbnails of the tar-shard images among `refs` = (pair_index, sample_id, ref).

    Each shard is opened once; returns (pair_index, media_type, bytes).
    """
    by_shard: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for pair_index, sample_id, ref in refs:
        shard, member = split_image_ref(ref)
        if member is not None:
            by_shard[shard].append((pair_index, sample_id, member))
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

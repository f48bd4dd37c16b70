"""Decoding one image file into 8-bit RGB: bounded in size, transparency flattened onto one background.

Training, scoring, export and the backend's thumbnails all decode through here (torch-free, so the
backend may import it), so a transparent icon looks the same to the model as on the dashboard:

- The pixel count (width x height from the file's header) is checked before any pixel is decoded; an
  image over `max_pixels` is refused, so a small file that claims a huge size (a decompression bomb)
  costs nothing.
- Transparent pixels are composited onto BACKGROUND (white): RGBA, LA, palette or greyscale/RGB images
  with a transparency key, and premultiplied modes. A half-transparent red pixel becomes (255, 127, 127).
- 16-bit greyscale (I;16 and the 32-bit integer mode I, e.g. 16-bit PNG) is scaled from 0-65535 to
  0-255 rather than clipped, which would turn nearly every pixel white.

Messages never contain the file's path (the backend shows them to clients); the caller names the file.
"""

from __future__ import annotations

import io
import struct
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from clipmem.scoring.errors import ClipmemError

BACKGROUND = (255, 255, 255)
# 50 megapixels holds 8K frames and all but the largest camera sensors, and bounds one decode to about
# 200 MB (RGBA); CLIP models see 224-336 px, so bigger images only cost memory.
MAX_PIXELS = 50_000_000
# Pillow's own bomb check (a warning from 89 megapixels, an error from 179, while opening) is replaced by
# ours, which every image clipmem decodes passes through: it is per call, lower, and names the size.
Image.MAX_IMAGE_PIXELS = None
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# what a malformed file makes Pillow's decoders raise (besides OSError/UnidentifiedImageError)
DECODE_ERRORS = (OSError, ValueError, EOFError, SyntaxError, IndexError, struct.error)


class ImageError(ClipmemError):
    """An image that cannot be used: undecodable or over the pixel limit. The message holds no path."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "not an image file in a format Pillow reads"  # Pillow's own message holds the path
    if isinstance(exc, OSError) and exc.filename is not None:
        return exc.strerror or type(exc).__name__  # errno errors name the path; their strerror does not
    return str(exc) or type(exc).__name__


@contextmanager
def open_image(source: bytes | Path | BinaryIO, max_pixels: int = MAX_PIXELS) -> Iterator[Image.Image]:
    """The image with only its header read, refused if over `max_pixels`. A missing file raises
    FileNotFoundError; anything else wrong raises ImageError."""
    try:
        img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except FileNotFoundError:
        raise
    except DECODE_ERRORS as exc:
        raise ImageError(_reason(exc)) from None
    with img:
        width, height = img.size
        if width * height > max_pixels:
            raise ImageError(f"it is {width} x {height} = {width * height:,} pixels, over the limit of "
                             f"{max_pixels:,} pixels")
        yield img


def to_rgb(img: Image.Image) -> Image.Image:
    """Decode an opened image into 8-bit RGB, compositing transparency onto BACKGROUND."""
    try:
        img.load()
        if img.mode in SIXTEEN_BIT_MODES:
            img = _sixteen_bit_to_eight(img)
        if img.mode in ALPHA_MODES or "transparency" in img.info or (img.mode == "P" and img.palette
                                                                     and img.palette.mode == "RGBA"):
            rgba = img.convert("LA").convert("RGBA") if img.mode == "La" else img.convert("RGBA")  # no La->RGBA
            out = Image.new("RGB", rgba.size, BACKGROUND)
            out.paste(rgba, mask=rgba.getchannel("A"))
            return out
        return img if img.mode == "RGB" else img.convert("RGB")
    except DECODE_ERRORS as exc:
        raise ImageError(_reason(exc)) from None


def _sixteen_bit_to_eight(img: Image.Image) -> Image.Image:
    """16-bit greyscale to L (LA when it has a transparency key), value v -> round(v * 255 / 65535)."""
    values = np.asarray(img).astype(np.int64).clip(0, 65535)
    grey = Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8))
    key = img.info.get("transparency")
    if isinstance(key, int):
        alpha = Image.fromarray(np.where(values == key, 0, 255).astype(np.uint8))
        return Image.merge("LA", (grey, alpha))
    return grey


def decode_rgb(source: bytes | Path | BinaryIO, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The whole image as 8-bit RGB (open_image, then to_rgb)."""
    with open_image(source, max_pixels) as img:
        return to_rgb(img)

"""Write a real image-caption set from the system's Noto Color Emoji font: each emoji as a 64 px image,
captioned with its Unicode character name ("grinning face with smiling eyes", "umbrella with rain drops").

Images and names were made by people (Google's designers, the Unicode consortium), not by clipmem, so this is
the nearest thing to "real data you did not write" that a machine without internet access has. It needs the
font (Debian: `apt-get install fonts-noto-color-emoji`); nothing is downloaded.

    .venv/bin/python bench/emoji_set.py --out data/emoji          # ~3,000 pairs, metadata.jsonl + PNGs
    .venv/bin/clipmem run --out runs/emoji --dataset folder --data data/emoji --inject swapped=0.05

Code points the font has no glyph for (it draws its .notdef box) are left out, as are glyphs that render
as nothing.
"""

from __future__ import annotations

import argparse
import json
import unicodedata
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
# CBDT bitmap fonts have one strike; Noto Color Emoji's is 109 px
STRIKE = 109
# the blocks that hold single-code-point emoji and pictographs
BLOCKS = ((0x2190, 0x21FF), (0x2300, 0x23FF), (0x2600, 0x27BF), (0x2B00, 0x2BFF), (0x1F000, 0x1F2FF),
          (0x1F300, 0x1FAFF))


def render(font: ImageFont.FreeTypeFont, text: str, size: int) -> np.ndarray:
    canvas = Image.new("RGB", (STRIKE + 27, STRIKE + 19), "white")
    ImageDraw.Draw(canvas).text((0, 0), text, font=font, embedded_color=True)
    return np.asarray(canvas.resize((size, size), Image.Resampling.LANCZOS))


def emoji(font: ImageFont.FreeTypeFont, size: int) -> list[tuple[int, str, np.ndarray]]:
    """(code point, lower-case name, image) of every named code point in BLOCKS that the font draws."""
    missing = render(font, chr(0x10FFFD), size)  # a private-use code point: the font's .notdef drawing
    found = []
    for start, end in BLOCKS:
        for cp in range(start, end + 1):
            try:
                name = unicodedata.name(chr(cp))
            except ValueError:
                continue
            image = render(font, chr(cp), size)
            if np.array_equal(image, missing) or (image < 250).sum() < 20:
                continue
            found.append((cp, name.lower(), image))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--font", type=Path, default=FONT)
    args = parser.parse_args()
    if not args.font.is_file():
        raise SystemExit(f"no emoji font at {args.font}: install it (Debian: apt-get install fonts-noto-color-emoji)")
    font = ImageFont.truetype(str(args.font), STRIKE)
    pairs = emoji(font, args.size)
    (args.out / "images").mkdir(parents=True, exist_ok=True)
    with open(args.out / "metadata.jsonl", "w", encoding="utf-8") as fh:
        for cp, name, image in pairs:
            file_name = f"images/u{cp:05x}.png"
            Image.fromarray(image).save(args.out / file_name)
            fh.write(json.dumps({"file_name": file_name, "id": f"u{cp:05x}", "text": name}) + "\n")
    print(f"wrote {len(pairs)} emoji to {args.out}")


if __name__ == "__main__":
    main()

"""Tiny fixtures of every source format holding the same pairs."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

PAIRS = [
    (f"img{i}", [f"a {c} {s}", f"the {s} is {c}"])
    for i, (c, s) in enumerate([("red", "circle"), ("blue", "square"), ("green", "cross"),
                                ("white", "diamond"), ("yellow", "triangle"), ("purple", "circle")])
]


def png_bytes(i: int) -> bytes:
    rng = np.random.default_rng(i)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, (name, _) in enumerate(PAIRS):
        (folder / f"{name}.png").write_bytes(png_bytes(i))


def make_folder(root: Path) -> Path:
    write_images(root)
    with open(root / "metadata.jsonl", "w") as fh:
        for name, caps in PAIRS:
            fh.write(json.dumps({"file_name": f"{name}.png", "id": name, "text": caps}) + "\n")
    return root


def make_coco(root: Path) -> Path:
    write_images(root / "images")
    ann = {"images": [{"id": i, "file_name": f"{name}.png"} for i, (name, _) in enumerate(PAIRS)],
           "annotations": [{"id": 100 * i + j, "image_id": i, "caption": c}
                           for i, (_, caps) in enumerate(PAIRS) for j, c in enumerate(caps)]}
    path = root / "captions.json"
    path.write_text(json.dumps(ann))
    return path


def make_csv(root: Path, sep: str = "\t", name: str = "train.tsv") -> Path:
    write_images(root / "images")
    lines = [sep.join(["filepath", "title"])]
    lines += [sep.join([f"images/{n}.png", c]) for n, caps in PAIRS for c in caps]
    path = root / name
    path.write_text("\n".join(lines) + "\n")
    return path


def make_shards(root: Path) -> str:
    """Two shards: the first with txt captions, the second with json captions (a list)."""
    root.mkdir(parents=True, exist_ok=True)
    for shard in range(2):
        with tarfile.open(root / f"{shard:06d}.tar", "w") as tar:
            for i, (name, caps) in enumerate(PAIRS):
                if i % 2 != shard:
                    continue
                members = {f"{name}.png": png_bytes(i)}
                if shard == 0:
                    members[f"{name}.txt"] = caps[0].encode()
                else:
                    members[f"{name}.json"] = json.dumps({"caption": caps}).encode()
                for member, data in members.items():
                    info = tarfile.TarInfo(member)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(root / "{000000..000001}.tar")

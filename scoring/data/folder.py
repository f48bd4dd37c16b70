"""Image folder with a metadata.jsonl manifest (the Hugging Face imagefolder convention).

Each line holds `file_name` (relative to the folder) and `text` (a caption or a
list of captions); optional `id`, `truth` and `attributes` are kept.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from scoring.errors import ClipmemError

MANIFEST_NAME = "metadata.jsonl"


def read_folder(root: Path, name: str = "folder"):
    from scoring.data.base import PairDataset

    root = Path(root)
    manifest = root / MANIFEST_NAME
    if not manifest.is_file():
        raise ClipmemError(f"no {MANIFEST_NAME} in {root}: not an image folder dataset")
    ids, captions, truth, refs, attributes = [], [], [], [], []
    seen: set[str] = set()
    with open(manifest, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{manifest}:{line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ClipmemError(f"{where}: not valid JSON ({exc.msg})") from None
            if "file_name" not in row:
                raise ClipmemError(f"{where}: missing 'file_name'")
            text = row.get("text", row.get("captions"))
            caps = [text] if isinstance(text, str) else list(text or [])
            caps = [c.strip() for c in caps if isinstance(c, str) and c.strip()]
            if not caps:
                raise ClipmemError(f"{where}: no non-empty caption in 'text'")
            sid = str(row.get("id", row["file_name"]))
            if sid in seen:
                raise ClipmemError(f"{where}: duplicate id '{sid}'")
            seen.add(sid)
            image_path = root / row["file_name"]
            if not image_path.is_file():
                raise ClipmemError(f"{where}: image file {image_path} does not exist")
            ids.append(sid)
            captions.append(caps)
            truth.append(str(row.get("truth", "clean")))
            refs.append(str(row["file_name"]))
            attributes.append(row.get("attributes") or {})
    if not ids:
        raise ClipmemError(f"{manifest} lists no pairs: the dataset is empty")

    def open_image(ref: str) -> Image.Image:
        img = Image.open(root / ref)
        img.load()
        return img

    return PairDataset(name=name, root=root, ids=ids, captions=captions, truth=truth,
                       image_refs=refs, open_image=open_image, attributes=attributes)

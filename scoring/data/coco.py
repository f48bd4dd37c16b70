"""COCO captions: an annotation JSON (`images`, `annotations` with `image_id` and `caption`)
plus its image folder. Every caption of an image is kept, in annotation order.
"""

from __future__ import annotations

import json
from pathlib import Path

from clipmem.scoring.data.base import PairDataset, Problems, caption_problem, clean_caption
from clipmem.scoring.errors import ClipmemError
from clipmem.scoring.images import decode_rgb


def read_coco(annotation: Path, images: Path | None, problems: Problems) -> PairDataset:
    images = Path(images) if images else annotation.parent
    try:
        raw = json.loads(annotation.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ClipmemError(f"{annotation} is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ClipmemError(f"{annotation} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    for key in ("images", "annotations"):
        if not isinstance(raw, dict) or not isinstance(raw.get(key), list):
            raise ClipmemError(f"{annotation} has no '{key}' list: not a COCO captions file")

    order, file_of, seen = [], {}, set()
    for n, img in enumerate(raw["images"]):
        where = f"{annotation}: images[{n}]"
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            problems.report(where, "entry lacks 'id' or 'file_name'")
            continue
        sid = str(img["id"])
        if sid in seen:
            problems.report(where, f"duplicate image id {sid}", sid)
            continue
        seen.add(sid)
        if not (images / img["file_name"]).is_file():
            problems.report(where, f"image file {images / img['file_name']} does not exist", sid)
            continue
        order.append(sid)
        file_of[sid] = str(img["file_name"])

    caps: dict[str, list[str]] = {sid: [] for sid in order}
    for n, ann in enumerate(raw["annotations"]):
        where = f"{annotation}: annotations[{n}]"
        if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
            problems.report(where, "entry lacks 'image_id' or 'caption'")
            continue
        sid = str(ann["image_id"])
        if sid not in seen:
            problems.report(where, f"caption refers to image id {sid}, which is not in 'images'", sid)
            continue
        if sid not in caps:
            continue  # its image was already reported missing
        text = clean_caption(ann["caption"])
        if text is None:
            problems.report(where, f"image {sid}: {caption_problem(ann['caption'])}", sid)
            continue
        caps[sid].append(text)

    keep = []
    for sid in order:
        if caps[sid]:
            keep.append(sid)
        else:
            problems.report(f"{annotation}: image {sid}", "image has no usable caption", sid)
    return PairDataset(
        name="coco", root=images, ids=keep, captions=[caps[s] for s in keep], truth=["clean"] * len(keep),
        image_refs=[file_of[s] for s in keep], open_image=lambda ref: decode_rgb(images / ref),
        attributes=[{} for _ in keep],
    )

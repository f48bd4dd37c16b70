"""Image folder with a metadata.jsonl manifest (the Hugging Face imagefolder convention).

Each line holds `file_name` (relative to the folder) and `text` (a caption or a
list of captions; `captions` is accepted too); optional `id`, `truth` and
`attributes` are kept, and `renderings`, a list of further images of the same scene
(relative file names; training draws among them with --renderings). The built-in
synthetic set is written in this layout.
"""

from __future__ import annotations

import json
from pathlib import Path

from clipmem.scoring.data.base import PairDataset, Problems, caption_problem, clean_caption
from clipmem.scoring.errors import ClipmemError
from clipmem.scoring.images import decode_rgb

MANIFEST_NAME = "metadata.jsonl"
RENDERINGS_KEY = "renderings"  # a row's further renderings of its scene, after the image itself


def read_folder(root: Path, problems: Problems, name: str = "folder") -> PairDataset:
    root = Path(root)
    manifest = root / MANIFEST_NAME
    if not manifest.is_file():
        raise ClipmemError(f"no {MANIFEST_NAME} in {root}: not an image folder dataset")
    ids, captions, truth, refs, attributes, renderings = [], [], [], [], [], []
    seen: set[str] = set()
    with open(manifest, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            where = f"{manifest}:{line_no}"
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                problems.report(where, "line is not valid UTF-8")
                continue
            except json.JSONDecodeError as exc:
                problems.report(where, f"not valid JSON ({exc.msg})")
                continue
            if not isinstance(row, dict) or "file_name" not in row:
                problems.report(where, "missing 'file_name'")
                continue
            sid = str(row.get("id", row["file_name"]))
            text = row.get("text", row.get("captions"))
            values = [text] if isinstance(text, str) or text is None else list(text)
            caps = [c for c in map(clean_caption, values) if c]
            if not caps:
                problems.report(where, f"pair {sid}: {caption_problem(values[0] if values else None)}", sid)
                continue
            if sid in seen:
                problems.report(where, f"duplicate id '{sid}'", sid)
                continue
            if not (root / row["file_name"]).is_file():
                problems.report(where, f"image file {root / row['file_name']} does not exist", sid)
                continue
            extra = row.get(RENDERINGS_KEY) or []
            if not isinstance(extra, list) or not all(isinstance(x, str) for x in extra):
                problems.report(where, f"pair {sid}: '{RENDERINGS_KEY}' should be a list of image file names", sid)
                continue
            missing = next((x for x in extra if not (root / x).is_file()), None)
            if missing is not None:
                problems.report(where, f"rendering {root / missing} of pair {sid} does not exist", sid)
                continue
            seen.add(sid)
            ids.append(sid)
            captions.append(caps)
            truth.append(str(row.get("truth", "clean")))
            refs.append(str(row["file_name"]))
            attributes.append(row.get("attributes") or {})
            renderings.append([str(x) for x in extra])

    return PairDataset(name=name, root=root, ids=ids, captions=captions, truth=truth,
                       image_refs=refs, open_image=lambda ref: decode_rgb(root / ref), attributes=attributes,
                       renderings=renderings if any(renderings) else [])

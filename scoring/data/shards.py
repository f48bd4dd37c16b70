"""WebDataset tar shards, read in place: `{000000..000099}.tar` brace patterns expand
to shard paths; each sample is the members sharing a key (the basename up to its
first dot), with one image member (jpg/jpeg/png/webp) and a caption member (`txt`,
or `json` with --wds-caption-key, which may hold a string or a list).

Shards are indexed once (member offsets and captions); an image is read by
seeking to its member, so nothing is unpacked to disk. References take the form
`SHARD#MEMBER` (scoring.columns), with SHARD relative to the shards' common folder.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

from braceexpand import braceexpand

from clipmem.scoring.columns import join_image_ref
from clipmem.scoring.config import SourceOptions
from clipmem.scoring.data.base import PairDataset, Problems, caption_problem, clean_caption
from clipmem.scoring.errors import ClipmemError
from clipmem.scoring.images import decode_rgb

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def read_shards(pattern: str, options: SourceOptions, problems: Problems) -> PairDataset:
    paths = [Path(p) for spec in pattern.split("::") for p in braceexpand(spec)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ClipmemError(f"shard {missing[0]} does not exist" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    root = Path(os.path.commonpath([str(p.resolve().parent) for p in paths]))
    ids, captions, refs = [], [], []
    offsets: dict[str, tuple[Path, int, int]] = {}
    seen: set[str] = set()
    for shard in paths:
        rel = os.path.relpath(shard.resolve(), root)
        samples: dict[str, dict[str, tarfile.TarInfo]] = {}
        order: list[str] = []
        try:
            with tarfile.open(shard, "r:") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    base = info.name.rsplit("/", 1)
                    key = (base[0] + "/" if len(base) > 1 else "") + base[-1].split(".", 1)[0]
                    ext = base[-1].split(".", 1)[1].lower() if "." in base[-1] else ""
                    if key not in samples:
                        samples[key] = {}
                        order.append(key)
                    samples[key][ext] = info
                texts = {}
                for key in order:
                    members = samples[key]
                    if "txt" in members:
                        texts[key] = ("txt", tar.extractfile(members["txt"]).read())
                    elif "json" in members:
                        texts[key] = ("json", tar.extractfile(members["json"]).read())
        except tarfile.TarError as exc:
            raise ClipmemError(f"shard {shard} is not a readable tar file ({exc})") from None
        for key in order:
            where = f"{shard}#{key}"
            members = samples[key]
            image = next((members[e] for e in IMAGE_EXTS if e in members), None)
            if image is None:
                problems.report(where, f"sample has no image member ({'/'.join(IMAGE_EXTS)})", key)
                continue
            if key not in texts:
                problems.report(where, "sample has no caption member (txt or json)", key)
                continue
            kind, raw = texts[key]
            values: list = [raw]
            if kind == "json":
                try:
                    obj = json.loads(raw.decode("utf-8"))
                    value = obj[options.wds_caption_key]
                except (UnicodeDecodeError, json.JSONDecodeError):
                    problems.report(where, "json member is not valid UTF-8 JSON", key)
                    continue
                except (KeyError, TypeError):
                    problems.report(where, f"json member has no key '{options.wds_caption_key}' (--wds-caption-key)", key)
                    continue
                values = value if isinstance(value, list) else [value]
            caps = [c for c in map(clean_caption, values) if c]
            if not caps:
                problems.report(where, caption_problem(values[0] if values else None), key)
                continue
            if key in seen:
                problems.report(where, f"duplicate sample key '{key}'", key)
                continue
            seen.add(key)
            ref = join_image_ref(rel, image.name)
            offsets[ref] = (shard, image.offset_data, image.size)
            ids.append(key)
            captions.append(caps)
            refs.append(ref)

    def open_image(ref: str):
        shard, offset, size = offsets[ref]
        with open(shard, "rb") as fh:
            fh.seek(offset)
            return decode_rgb(fh.read(size))

    return PairDataset(name="webdataset", root=root, ids=ids, captions=captions, truth=["clean"] * len(ids),
                       image_refs=refs, open_image=open_image, attributes=[], plain_files=False)

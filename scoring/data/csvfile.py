"""open_clip's CSV/TSV format: one row per (image, caption), columns named by
--csv-img-key (default `filepath`) and --csv-caption-key (default `title`),
separated by --csv-separator (default a tab), as open_clip's trainer reads it.

Rows with the same image path form one pair with several captions. Relative
image paths resolve against the CSV's folder. The file is streamed row by row;
images are only opened when decoded.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from clipmem.scoring.config import SourceOptions
from clipmem.scoring.data.base import PairDataset, Problems, caption_problem, clean_caption
from clipmem.scoring.errors import ClipmemError
from clipmem.scoring.images import decode_rgb


def read_csv(path: Path, options: SourceOptions, problems: Problems, check_files: bool = True) -> PairDataset:
    """Read the CSV; with check_files=False image existence is left to verification."""
    folder = path.parent
    captions: dict[str, list[str]] = {}
    csv.field_size_limit(1 << 24)
    # surrogateescape keeps undecodable bytes visible per field instead of failing the file
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        reader = csv.reader(fh, delimiter=options.csv_separator)
        try:
            header = next(reader)
        except StopIteration:
            raise ClipmemError(f"{path} is empty: no header row") from None
        for key, flag in ((options.csv_img_key, "--csv-img-key"), (options.csv_caption_key, "--csv-caption-key")):
            if key not in header:
                raise ClipmemError(f"{path} has no column '{key}' ({flag}); its columns are: {', '.join(header)}")
        if options.label_key is not None and options.label_key not in header:
            raise ClipmemError(f"{path} has no column '{options.label_key}' (--label-key); "
                               f"its columns are: {', '.join(header)}")
        img_col, cap_col = header.index(options.csv_img_key), header.index(options.csv_caption_key)
        label_col = header.index(options.label_key) if options.label_key is not None else None
        labels: dict[str, str] = {}
        width = len(header)
        exists: dict[str, bool] = {}
        for row_no, row in enumerate(reader, start=2):
            where = f"{path}:{row_no}"
            if len(row) != width:
                if not row:
                    continue
                problems.report(where, f"row has {len(row)} fields, the header has {width}")
                continue
            image = row[img_col]
            text = clean_caption(row[cap_col])
            if text is None:
                problems.report(where, f"image {image}: {caption_problem(row[cap_col])}", image)
                continue
            if image not in captions:
                if check_files:
                    full = os.path.join(folder, image)
                    if not exists.setdefault(image, os.path.isfile(full)):
                        problems.report(where, f"image file {full} does not exist", image)
                        continue
                captions[image] = []
                if label_col is not None and row[label_col].strip():
                    labels[image] = row[label_col].strip()
            captions[image].append(text)
    ids = list(captions)
    return PairDataset(
        name="csv", root=folder, ids=ids, captions=[captions[i] for i in ids], truth=["clean"] * len(ids),
        image_refs=ids, open_image=lambda ref: decode_rgb(folder / ref),
        attributes=[{options.label_key: labels[i]} if i in labels else {} for i in ids] if label_col is not None else [],
    )

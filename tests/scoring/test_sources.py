"""Every source reads the same pairs; bad items fail with a named location or are skipped and listed."""

import hashlib
import json

import numpy as np
import pytest

from clipmem.scoring.data.sources import load_dataset
from clipmem.scoring.config import SourceOptions
from clipmem.scoring.data.base import Problems, verify_images
from clipmem.scoring.errors import ClipmemError
from source_fixtures import PAIRS, make_coco, make_csv, make_folder, make_shards


def pairs_of(dataset, first_caption_only=False):
    """(image digest, captions) for every pair, independent of ids and order."""
    out = set()
    for i in range(len(dataset)):
        pixels = np.asarray(dataset.open_checked(i).convert("RGB"))
        caps = tuple(dataset.captions[i][:1] if first_caption_only else dataset.captions[i])
        out.add((hashlib.sha1(pixels.tobytes()).hexdigest(), caps))
    return out


def test_every_source_yields_the_same_pairs(tmp_path):
    folder = load_dataset("folder", make_folder(tmp_path / "folder"))
    expected = pairs_of(folder)
    assert len(expected) == len(PAIRS)
    coco = load_dataset("coco", make_coco(tmp_path / "coco"), SourceOptions(coco_images=str(tmp_path / "coco/images")))
    assert pairs_of(coco) == expected
    assert pairs_of(load_dataset("csv", make_csv(tmp_path / "tsv"))) == expected
    comma = load_dataset("csv", make_csv(tmp_path / "csv", sep=",", name="train.csv"), SourceOptions(csv_separator=","))
    assert pairs_of(comma) == expected
    shards = load_dataset("webdataset", make_shards(tmp_path / "shards"))
    assert len(shards) == len(PAIRS) and not shards.plain_files
    # shard 0 stores one txt caption per pair, shard 1 the full list as json
    assert pairs_of(shards, first_caption_only=True) == pairs_of(folder, first_caption_only=True)
    assert all(len(c) == 2 for c, r in zip(shards.captions, shards.image_refs) if r.startswith("000001.tar"))


def test_csv_streams_without_opening_images(tmp_path):
    path = tmp_path / "big.tsv"
    path.write_text("filepath\ttitle\n" + "".join(f"missing/{i}.jpg\tcaption {i}\n" for i in range(2000)))
    from clipmem.scoring.data.csvfile import read_csv

    ds = read_csv(path, SourceOptions(), Problems("fail"), check_files=False)
    assert len(ds) == 2000 and ds.captions[5] == ["caption 5"]


# ---- bad input: each case corrupts one item; fail names it, skip lists it ----

def _corrupt_folder(root, case):
    make_folder(root)
    lines = (root / "metadata.jsonl").read_text().splitlines()
    row = json.loads(lines[2])
    if case == "missing_image":
        (root / "img2.png").unlink()
    elif case == "undecodable":
        (root / "img2.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    elif case == "empty_caption":
        row["text"] = ["   "]
    elif case == "duplicate_id":
        row["id"] = "img1"
    if case in ("empty_caption", "duplicate_id"):
        lines[2] = json.dumps(row)
    if case == "bad_utf8":
        (root / "metadata.jsonl").write_bytes("\n".join(lines[:2]).encode() + b'\n{"file_name": "img2.png", '
                                               b'"text": ["caf\xe9"]}\n' + "\n".join(lines[3:]).encode() + b"\n")
    else:
        (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _corrupt_csv(root, case):
    path = make_csv(root)
    lines = path.read_bytes().split(b"\n")
    if case == "missing_image":
        (root / "images" / "img2.png").unlink()
    elif case == "undecodable":
        (root / "images" / "img2.png").write_bytes(b"not an image")
    elif case == "empty_caption":
        lines[5] = b"images/img2.png\t  "
    elif case == "bad_utf8":
        lines[5] = b"images/img2.png\tcaf\xe9 \xff"
    elif case == "wrong_column":
        lines[0] = b"path\ttitle"
    path.write_bytes(b"\n".join(lines))
    return path


def _corrupt_coco(root, case):
    path = make_coco(root)
    ann = json.loads(path.read_text())
    if case == "missing_image":
        (root / "images" / "img2.png").unlink()
    elif case == "undecodable":
        (root / "images" / "img2.png").write_bytes(b"junk")
    elif case == "empty_caption":
        ann["annotations"][4]["caption"] = ""
    elif case == "duplicate_id":
        ann["images"][2]["id"] = 1
    elif case == "absent_image":
        ann["annotations"].append({"id": 999, "image_id": 42, "caption": "orphan caption"})
    path.write_text(json.dumps(ann))
    return path


def _corrupt_shards(root, case):
    import io
    import tarfile

    pattern = make_shards(root)
    if case in ("undecodable", "empty_caption", "bad_utf8", "duplicate_id"):
        with tarfile.open(root / "000000.tar", "a") as tar:
            members = {
                "undecodable": {"bad.png": b"junk", "bad.txt": b"a caption"},
                "empty_caption": {"bad.png": open(root / "000000.tar", "rb").read()[:0] or _png(), "bad.txt": b"  "},
                "bad_utf8": {"bad.png": _png(), "bad.txt": b"caf\xe9"},
                "duplicate_id": {"img1.png": _png(), "img1.txt": b"again"},
            }[case]
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return pattern


def _png():
    from source_fixtures import png_bytes

    return png_bytes(99)


CASES = [
    ("folder", _corrupt_folder, "missing_image", "does not exist"),
    ("folder", _corrupt_folder, "undecodable", "cannot decode image of pair img2"),
    ("folder", _corrupt_folder, "empty_caption", "caption is empty"),
    ("folder", _corrupt_folder, "bad_utf8", "not valid UTF-8"),
    ("folder", _corrupt_folder, "duplicate_id", "duplicate id 'img1'"),
    ("csv", _corrupt_csv, "missing_image", "does not exist"),
    ("csv", _corrupt_csv, "undecodable", "cannot decode image of pair images/img2.png"),
    ("csv", _corrupt_csv, "empty_caption", "caption is empty"),
    ("csv", _corrupt_csv, "bad_utf8", "not valid UTF-8"),
    ("coco", _corrupt_coco, "missing_image", "does not exist"),
    ("coco", _corrupt_coco, "undecodable", "cannot decode image of pair 2"),
    ("coco", _corrupt_coco, "empty_caption", "caption is empty"),
    ("coco", _corrupt_coco, "duplicate_id", "duplicate image id 1"),
    ("coco", _corrupt_coco, "absent_image", "image id 42, which is not in 'images'"),
    ("webdataset", _corrupt_shards, "undecodable", "cannot decode image of pair bad"),
    ("webdataset", _corrupt_shards, "empty_caption", "caption is empty"),
    ("webdataset", _corrupt_shards, "bad_utf8", "not valid UTF-8"),
    ("webdataset", _corrupt_shards, "duplicate_id", "duplicate sample key 'img1'"),
]


def _read(kind, path, on_error):
    problems = Problems(on_error)
    options = SourceOptions(coco_images=str(path.parent / "images")) if kind == "coco" else SourceOptions()
    return verify_images(load_dataset(kind, path, options, problems), problems), problems


@pytest.mark.parametrize("kind, corrupt, case, message", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_bad_item_fails_naming_it_or_is_skipped(tmp_path, kind, corrupt, case, message):
    path = corrupt(tmp_path / "src", case)
    with pytest.raises(ClipmemError, match=message) as info:
        _read(kind, path, "fail")
    assert str(path).split("{")[0].rstrip("/") in str(info.value) or "pair" in str(info.value)
    dataset, problems = _read(kind, path, "skip")
    assert len(problems.skipped) >= 1
    assert any(message.split("'")[0].split(" of pair")[0] in item["reason"] for item in problems.skipped)
    assert len(dataset) + 1 >= len(PAIRS) - (case == "missing_image")


def test_csv_without_named_column(tmp_path):
    path = _corrupt_csv(tmp_path / "src", "wrong_column")
    for on_error in ("fail", "skip"):
        with pytest.raises(ClipmemError, match="has no column 'filepath' \\(--csv-img-key\\); its columns are: path"):
            load_dataset("csv", path, SourceOptions(), Problems(on_error))


def test_csv_label_key_names_a_column_for_the_linear_probe(tmp_path):
    path = make_csv(tmp_path / "src")
    lines = path.read_text().splitlines()
    labelled = [lines[0] + "\tshape"] + [line + "\t" + line.split("\t")[1].split()[-1] for line in lines[1:]]
    path.write_text("\n".join(labelled) + "\n")
    dataset = load_dataset("csv", path, SourceOptions(label_key="shape"))
    assert [a["shape"] for a in dataset.attributes] == [caps[0].split()[-1] for _, caps in PAIRS]
    with pytest.raises(ClipmemError, match="has no column 'kind' \\(--label-key\\)"):
        load_dataset("csv", path, SourceOptions(label_key="kind"))

"""The built-in synthetic image-caption set.

Small RGB images of one or two objects (shape, colour, size, position, background)
with about five paraphrased captions each, drawn from long-tailed attribute
distributions, plus injected faults whose ground truth is recorded per pair.
Everything is a pure function of the config (seed included), so the same config
always writes the same files.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from clipmem.scoring.config import SynthConfig
from clipmem.scoring.data.folder import MANIFEST_NAME, RENDERINGS_KEY

RENDERINGS_DIR = "renderings"
from clipmem.scoring.errors import ClipmemError

SHAPES = ["circle", "square", "triangle", "diamond", "cross"]
COLOURS = {
    "red": (0.86, 0.12, 0.12),
    "green": (0.15, 0.70, 0.20),
    "blue": (0.15, 0.30, 0.90),
    "yellow": (0.95, 0.85, 0.10),
    "purple": (0.58, 0.20, 0.75),
    "orange": (0.98, 0.55, 0.10),
    "white": (0.95, 0.95, 0.95),
    "pink": (0.98, 0.55, 0.75),
}
SIZES = {"small": 4.5, "large": 8.0}
POSITIONS = {"left": (16, 8.5), "right": (16, 23.5), "top": (8.5, 16), "bottom": (23.5, 16), "middle": (16, 16)}
BACKGROUNDS = {"dark": (0.08, 0.08, 0.10), "gray": (0.45, 0.45, 0.45), "light": (0.85, 0.82, 0.75)}
# Zipf-like weights give the long tail of attribute combinations.
ZIPF_EXPONENT = 1.1

TRUTH_TAGS = ("clean", "swapped", "wrong_attribute", "vague", "atypical", "duplicate")
FAULT_TAGS = TRUTH_TAGS[1:]

VAGUE_CAPTIONS = [
    "a picture of something",
    "an image",
    "a photo of a thing",
    "something on a background",
    "an object in a picture",
    "a picture",
]

SINGLE_TEMPLATES = [
    "a {size} {colour} {shape} on the {position}",
    "a {colour} {shape} on a {background} background",
    "{size} {colour} {shape} at the {position} of the image",
    "a picture of a {colour} {shape}",
    "there is a {size} {shape} in {colour} on the {position}",
    "the {position} of a {background} image shows a {colour} {shape}",
    "one {colour} {shape} , {size} , {background} background",
]
PAIR_TEMPLATES = [
    "a {colour} {shape} and a {colour2} {shape2}",
    "a {colour} {shape} on the {position} and a {colour2} {shape2} on the {position2}",
    "two shapes : a {colour} {shape} and a {colour2} {shape2}",
    "{colour} {shape} {position} , {colour2} {shape2} {position2} , {background} background",
    "a {background} image with a {colour} {shape} and a {colour2} {shape2}",
    "a {size} {colour} {shape} next to a {size2} {colour2} {shape2}",
]


def check_config(cfg: SynthConfig) -> None:
    if cfg.n_pairs < 1:
        raise ClipmemError(f"synthetic dataset needs at least one pair, got n_pairs={cfg.n_pairs}")
    unknown = set(cfg.faults) - set(FAULT_TAGS)
    if unknown:
        raise ClipmemError(f"unknown fault tag(s) {sorted(unknown)}; known: {', '.join(FAULT_TAGS)}")
    if any(r < 0 for r in cfg.faults.values()) or sum(cfg.faults.values()) > 0.5:
        raise ClipmemError(f"fault rates must be >= 0 and sum to at most 0.5, got {cfg.faults}")
    if cfg.image_size < 16:
        raise ClipmemError(f"image_size must be at least 16 pixels, got {cfg.image_size}")
    if cfg.renderings < 1:
        raise ClipmemError(f"renderings must be at least 1 (the image itself), got {cfg.renderings}")


def parse_rates(text: str) -> dict[str, float]:
    """Parse 'swapped=0.02,vague=0.01' into a dict, naming the bad item on error."""
    rates: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            rates[name.strip()] = float(value)
        except ValueError:
            raise ClipmemError(f"bad rate '{item}': expected NAME=FRACTION, e.g. swapped=0.02") from None
    return rates


def _zipf(n: int) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** ZIPF_EXPONENT
    return w / w.sum()


def _describe(objects: list[dict], background: str, rng: np.random.Generator, k: int) -> list[str]:
    """k distinct paraphrases of the scene."""
    first = objects[0]
    values = {**first, "background": background}
    if len(objects) == 1:
        templates = SINGLE_TEMPLATES
    else:
        second = objects[1]
        values.update(colour2=second["colour"], shape2=second["shape"], size2=second["size"], position2=second["position"])
        templates = PAIR_TEMPLATES
    chosen = rng.choice(len(templates), size=min(k, len(templates)), replace=False)
    return [templates[i].format(**values) for i in chosen]


def _shape_mask(shape: str, cy: float, cx: float, r: float, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dy, dx = yy - cy, xx - cx
    if shape == "circle":
        return dy**2 + dx**2 <= r**2
    if shape == "square":
        return (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    if shape == "diamond":
        return np.abs(dy) + np.abs(dx) <= r * 1.15
    if shape == "cross":
        arm = r * 0.35
        return ((np.abs(dy) <= arm) & (np.abs(dx) <= r)) | ((np.abs(dx) <= arm) & (np.abs(dy) <= r))
    if shape == "triangle":
        # apex up: inside when below the two slanted edges and above the base
        return (dy <= r * 0.8) & (np.abs(dx) <= (dy + r) * 0.6)
    raise ValueError(shape)


def _render(objects: list[dict], background: str, size: int, rng: np.random.Generator, unusual: str | None) -> np.ndarray:
    scale = size / 32.0
    canvas = np.empty((size, size, 3), np.float32)
    canvas[:] = np.asarray(BACKGROUNDS[background], np.float32) + rng.normal(0, 0.02, 3)
    canvas += rng.normal(0, 0.03, canvas.shape).astype(np.float32)
    for obj in objects:
        cy, cx = POSITIONS[obj["position"]]
        cy, cx = (cy + rng.uniform(-1.5, 1.5)) * scale, (cx + rng.uniform(-1.5, 1.5)) * scale
        r = SIZES[obj["size"]] * scale * (0.5 if len(objects) > 1 and obj["size"] == "large" else 1.0)
        r *= rng.uniform(0.9, 1.1)
        mask = _shape_mask(obj["shape"], cy, cx, r, size)
        if unusual == "outline":
            inner = _shape_mask(obj["shape"], cy, cx, r * 0.6, size)
            mask = mask & ~inner
        colour = np.clip(np.asarray(COLOURS[obj["colour"]], np.float32) + rng.normal(0, 0.04, 3), 0, 1)
        if unusual == "speckled":
            speckle = rng.random((size, size)) < 0.4
            canvas[mask & ~speckle] = colour
        else:
            canvas[mask] = colour
    return (np.clip(canvas, 0, 1) * 255).round().astype(np.uint8)


def _noisy_copy(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A near-copy of an image: per-pixel Gaussian noise of 4 grey levels."""
    noise = rng.normal(0, 4, pixels.shape)
    return np.clip(pixels.astype(np.float32) + noise, 0, 255).round().astype(np.uint8)


def _background_for(objects: list[dict], rng: np.random.Generator, weights: np.ndarray) -> str:
    names = list(BACKGROUNDS)
    while True:
        bg = names[rng.choice(len(names), p=weights)]
        # keep objects visible: no white object on the light background
        if not (bg == "light" and any(o["colour"] in ("white", "yellow") for o in objects)):
            return bg


def _sample_scene(rng: np.random.Generator, cfg: SynthConfig, colour_names: list[str]) -> tuple[list[dict], str]:
    shape_w, colour_w = _zipf(len(SHAPES)), _zipf(len(colour_names))
    size_w, bg_w = np.array([0.5, 0.5]), _zipf(len(BACKGROUNDS))
    n_obj = 2 if rng.random() < cfg.two_object_rate else 1
    if n_obj == 1:
        positions = [list(POSITIONS)[rng.choice(5, p=_zipf(5))]]
    else:
        positions = ["left", "right"] if rng.random() < 0.6 else ["top", "bottom"]
    objects = []
    for pos in positions:
        objects.append(
            {
                "shape": SHAPES[rng.choice(len(SHAPES), p=shape_w)],
                "colour": colour_names[rng.choice(len(colour_names), p=colour_w)],
                "size": list(SIZES)[rng.choice(2, p=size_w)],
                "position": pos,
            }
        )
    return objects, _background_for(objects, rng, bg_w)


def generate(cfg: SynthConfig) -> list[dict]:
    """Return one record per pair: id, captions, truth, attributes, pixels (HxWx3 uint8), and renderings (the
    cfg.renderings - 1 further renderings of its scene, HxWx3 uint8 each; none by default)."""
    check_config(cfg)
    rng = np.random.default_rng(cfg.seed)
    # 'pink' only ever appears in atypical pairs: the rarest colour of the set
    common_colours = [c for c in COLOURS if c != "pink"]
    records = []
    for i in range(cfg.n_pairs):
        objects, background = _sample_scene(rng, cfg, common_colours)
        records.append(
            {
                "id": f"syn-{i:06d}",
                "objects": objects,
                "background": background,
                "rendering": "plain",
                "truth": "clean",
                "captions": _describe(objects, background, rng, cfg.captions_per_image),
                "source_id": None,
            }
        )

    # fault placement: disjoint random subsets, counts rounded from the rates
    order = rng.permutation(cfg.n_pairs)
    cursor = 0
    assignments: dict[str, np.ndarray] = {}
    for tag in FAULT_TAGS:
        count = int(round(cfg.faults.get(tag, 0.0) * cfg.n_pairs))
        assignments[tag] = order[cursor : cursor + count]
        cursor += count
    clean_pool = order[cursor:]

    for idx in assignments["atypical"]:
        rec = records[idx]
        # a rare combination (the held-back colour) or an unusual rendering, caption stays true
        if rng.random() < 0.5:
            rec["objects"][0]["colour"] = "pink"
            if rec["background"] == "light":
                rec["background"] = "dark"
        else:
            rec["rendering"] = str(rng.choice(["outline", "speckled"]))
        rec["captions"] = _describe(rec["objects"], rec["background"], rng, cfg.captions_per_image)
        rec["truth"] = "atypical"

    for idx in assignments["wrong_attribute"]:
        rec = records[idx]
        wrong = [dict(o) for o in rec["objects"]]
        attr = str(rng.choice(["colour", "shape"]))
        options = [v for v in (common_colours if attr == "colour" else SHAPES) if v != wrong[0][attr]]
        wrong[0][attr] = str(rng.choice(options))
        rec["captions"] = _describe(wrong, rec["background"], rng, cfg.captions_per_image)
        rec["truth"] = "wrong_attribute"
        rec["wrong_attribute"] = attr

    for idx in assignments["vague"]:
        rec = records[idx]
        picks = rng.choice(len(VAGUE_CAPTIONS), size=min(cfg.captions_per_image, len(VAGUE_CAPTIONS)), replace=False)
        rec["captions"] = [VAGUE_CAPTIONS[j] for j in picks]
        rec["truth"] = "vague"

    for idx in assignments["swapped"]:
        rec = records[idx]
        # the captions of another clean pair whose first object differs in shape or colour
        for _ in range(100):
            donor = records[int(rng.choice(clean_pool))]
            a, b = donor["objects"][0], rec["objects"][0]
            if (a["shape"], a["colour"]) != (b["shape"], b["colour"]):
                break
        rec["captions"] = list(donor["captions"])
        rec["truth"] = "swapped"
        rec["source_id"] = donor["id"]

    for idx in assignments["duplicate"]:
        rec = records[idx]
        donor = records[int(rng.choice(clean_pool))]
        rec.update(
            objects=[dict(o) for o in donor["objects"]],
            background=donor["background"],
            captions=list(donor["captions"]),
            truth="duplicate",
            source_id=donor["id"],
            duplicate_seed=int(rng.integers(2**31)),
        )

    for i, rec in enumerate(records):
        unusual = rec["rendering"] if rec["rendering"] != "plain" else None
        if rec["truth"] == "duplicate":
            donor_index = int(rec["source_id"].split("-")[1])
            pixels = records[donor_index]["pixels"] if "pixels" in records[donor_index] else None
            if pixels is None:
                donor = records[donor_index]
                pixels = _render(donor["objects"], donor["background"], cfg.image_size,
                                 np.random.default_rng([cfg.seed, donor_index]), None)
            duplicate_seed = rec.pop("duplicate_seed")
            rec["pixels"] = _noisy_copy(pixels, np.random.default_rng(duplicate_seed))
            # rendering j of a duplicate: its donor's rendering j, with noise of its own
            rec["renderings"] = [
                _noisy_copy(_render(rec["objects"], rec["background"], cfg.image_size,
                                    np.random.default_rng([cfg.seed, donor_index, j]), None),
                            np.random.default_rng([duplicate_seed, j]))
                for j in range(1, cfg.renderings)]
        else:
            # per-pair stream so a pair's pixels do not depend on the fault draw
            rec["pixels"] = _render(rec["objects"], rec["background"], cfg.image_size,
                                    np.random.default_rng([cfg.seed, i]), unusual)
            # rendering j >= 1: the same scene from a stream of its own (new noise, position and size jitter
            # within the ranges every image has, so the captions stay true); rendering 0 is unchanged by it
            rec["renderings"] = [_render(rec["objects"], rec["background"], cfg.image_size,
                                         np.random.default_rng([cfg.seed, i, j]), unusual)
                                 for j in range(1, cfg.renderings)]
    return records


def write(cfg: SynthConfig, out: Path) -> Path:
    """Write the set as PNG files plus a metadata.jsonl manifest (imagefolder layout).

    Files are written into a temporary folder that is renamed at the end, so an
    interrupted write never leaves a folder that looks complete.
    """
    out = Path(out)
    if (out / MANIFEST_NAME).exists():
        raise ClipmemError(f"{out} already holds a dataset ({MANIFEST_NAME} exists); choose another --out")
    if out.exists() and any(out.iterdir()):
        raise ClipmemError(f"{out} exists and is not empty; choose another --out")
    records = generate(cfg)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    (tmp / "images").mkdir(parents=True)
    if cfg.renderings > 1:
        (tmp / RENDERINGS_DIR).mkdir()
    with open(tmp / MANIFEST_NAME, "w", encoding="utf-8") as fh:
        for rec in records:
            file_name = f"images/{rec['id']}.png"
            Image.fromarray(rec["pixels"]).save(tmp / file_name, optimize=False, compress_level=1)
            extra = [f"{RENDERINGS_DIR}/{rec['id']}-{j}.png" for j in range(1, len(rec["renderings"]) + 1)]
            for name, pixels in zip(extra, rec["renderings"]):
                Image.fromarray(pixels).save(tmp / name, optimize=False, compress_level=1)
            row = {
                "file_name": file_name,
                "id": rec["id"],
                "text": rec["captions"],
                "truth": rec["truth"],
                "attributes": {
                    "objects": rec["objects"],
                    "background": rec["background"],
                    "rendering": rec["rendering"],
                },
                "source_id": rec["source_id"],
            }
            if "wrong_attribute" in rec:
                row["wrong_attribute"] = rec["wrong_attribute"]
            if extra:  # absent without renderings: the manifest is the one clipmem always wrote
                row[RENDERINGS_KEY] = extra
            fh.write(json.dumps(row) + "\n")
    (tmp / "synth_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out

"""Write a run directory that follows scoring's output contract, with made-up scores and no training.

Tests use small ones (fast, every file under their control); bench/backend_bench.py
writes one with a million scored pairs. Faulty pairs (swapped, vague, atypical) get
higher CLIPMem on average, so per-tag summaries and detection quality have something
to find; swapped and vague pairs get higher `miscaption` and neighbours whose captions
disagree with theirs, atypical ones a distant nearest image (the evidence of issue 18).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from clipmem.scoring.columns import (DYNAMICS_NAMES, MEMORIZED, NEIGHBOUR_COLUMNS, NULL_COLUMNS, REASON, SCORE_COLUMNS,
                                     SCORED_SPLITS, SEEN_BY, TRAJECTORY_COLUMNS, join_image_ref)
from clipmem.scoring.dynamics import pair_dynamics
from clipmem.scoring.rundir import RunDir
from clipmem.scoring.significance import TAIL_METHOD, add_significance, flagged_by_truth, null_summary

TRUTH_RATES = {"swapped": 0.05, "vague": 0.02, "atypical": 0.02}
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("square", "circle", "triangle", "star")
SHARED_IMAGES = 16  # images="shared": this many files, reused by every pair
EVIDENCE_K = 3      # neighbours per scored pair and kind in neighbours.parquet


def write_synthetic_run(out: Path, n_candidate: int, n_independent: int, n_shared: int, n_extra: int, *,
                        dim: int = 16, views: int = 4, seed: int = 0, images: str = "files",
                        optional_scores: bool = False, image_px: int = 24, id_format: str = "pair-{:07d}",
                        utility: dict[str, float] | None = None, experiment: dict | None = None,
                        significance: bool = False, fdr: float = 0.05, train: dict | None = None,
                        evidence: bool = True, tracked: list[int] | None = None) -> Path:
    """Write a finished run into `out` (created) with its images under out/data.

    significance: also a null.parquet (the S_E pairs' made-up raw scores, drawn like the clean scored pairs') and
    the significance columns scoring adds (scoring.significance.add_significance at `fdr`, a replica spread),
    with score.fdr in config.json and the "significance" section of metrics.json; needs n_extra >= 1.

    utility: model f's metrics on S_E in metrics.json (g gets each minus 0.01); default retrieval and
    zero-shot figures. experiment: written as experiment.json, as `clipmem experiment` does for its runs.
    train: config.json's train settings over the made-up ones (e.g. a fine-tuned run's pretrained and lock_*).
    evidence: the columns of issue 18 (miscaption, the neighbour signals, reason) and neighbours.parquet; False
    writes a run as scored before them.
    tracked: the epochs of a run trained with --track-epochs (issue 19), ascending; the run trains to the last. Writes
    trajectory.parquet (each scored pair's A_g as at the end, its raw scores a random fraction of the final ones that
    reaches them at the last epoch; the S_E null rows per null key likewise, ending at null.parquet's when
    `significance`) and the dynamics columns scoring derives from it; needs n_extra >= 1.

    images: "files" (one PNG per pair), "tar" (one PNG per pair inside data/shards/000.tar,
    referenced as shards/000.tar#member) or "shared" (a few PNGs reused, for big runs).
    Sample ids are id_format.format(i); they may contain '/'.
    """
    rng = np.random.default_rng(seed)
    out = Path(out)
    data_root = out / "data"
    data_root.mkdir(parents=True, exist_ok=False)
    sizes = {"shared": n_shared, "candidate": n_candidate, "independent": n_independent, "extra": n_extra}
    split = np.repeat(np.array(list(sizes)), list(sizes.values()))
    n = len(split)
    ids = np.array([id_format.format(i) for i in range(n)])
    truth = np.full(n, "clean", dtype=object)
    draw = rng.random(n)
    edge = 0.0
    for tag, rate in TRUTH_RATES.items():
        truth[(draw >= edge) & (draw < edge + rate)] = tag
        edge += rate
    colour = rng.integers(len(COLOURS), size=n)
    shape = rng.integers(len(SHAPES), size=n)
    n_caps = rng.integers(1, 3, size=n)
    captions = [[f"a {COLOURS[c]} {SHAPES[s]}"] + (["the " + SHAPES[s] + " is " + COLOURS[c]] if k > 1 else [])
                for c, s, k in zip(colour.tolist(), shape.tolist(), n_caps.tolist())]
    image_refs = _write_images(data_root, ids, colour, shape, images, image_px)
    pd.DataFrame({
        "sample_id": ids, "split": split, "truth": truth.astype(str), "captions": captions,
        "image_ref": image_refs,
        "attributes": [json.dumps({"colour": COLOURS[c], "shape": SHAPES[s]}) for c, s in zip(colour, shape)],
    }).to_parquet(out / "samples.parquet", index=False)

    scored = np.flatnonzero(np.isin(split, SCORED_SPLITS))
    scores = _scores_frame(rng, ids[scored], split[scored], truth[scored].astype(str), n_caps[scored],
                           [captions[i][0] for i in scored.tolist()], views, optional_scores)
    significance_metrics = {}
    if significance:
        if n_extra < 1:
            raise ValueError("significance needs S_E pairs (n_extra >= 1): they are the null")
        extra = np.flatnonzero(split == "extra")
        # a generator of its own, so the other files stay as they are without significance
        scores, null, significance_metrics = _significance(np.random.default_rng([seed, 15]), scores, ids[extra],
                                                           truth[extra].astype(str), views, fdr)
        null.to_parquet(RunDir(out).null, index=False)
    embedded = np.concatenate([scored, np.flatnonzero(split == "extra")])
    cluster = (colour * len(SHAPES) + shape)[embedded]
    if evidence:
        # a generator of its own, so the other files stay as they are without the evidence
        scores, neighbours = _evidence(np.random.default_rng([seed, 18]), scores, ids[embedded], cluster)
        neighbours.to_parquet(RunDir(out).neighbours, index=False)
    if tracked:
        if n_extra < 1:
            raise ValueError("tracked needs S_E pairs (n_extra >= 1): they are the null of mem_epoch")
        extra = np.flatnonzero(split == "extra")
        scores = _trajectory(np.random.default_rng([seed, 19]), out, scores, ids[extra], tracked,
                             null if significance else None)
    scores.to_parquet(out / "scores.parquet", index=False)

    centres = _unit(rng.standard_normal((len(COLOURS) * len(SHAPES), dim)))
    arrays = {"sample_id": ids[embedded], "split": split[embedded]}
    for model in ("f", "g"):
        for modality in ("image", "text"):
            noise = 0.35 * rng.standard_normal((len(embedded), dim))
            arrays[f"{model}_{modality}"] = _unit(centres[cluster] + noise).astype(np.float32)
    np.savez(out / "embeddings.npz", **arrays)

    config = {
        "data": {"kind": "folder", "path": str(data_root.resolve()), "synth": {}},
        "split": {"sizes": sizes, "seed": seed},
        "train": {"model": "clipmem-tiny", "epochs": tracked[-1] if tracked else 1, "batch_size": 64, "lr": 0.002,
                  "captions_per_image": 0, **({"track_epochs": list(tracked)} if tracked else {}), **(train or {})},
        "score": {"views": views, "seed": 1234, **({"fdr": fdr} if significance else {})},
        "versions": {"clipmem": "0.1.0"},
    }
    _json(out / "config.json", config)
    _json(out / "data_root.json", {"data_root": str(data_root.resolve()), "kind": "folder"})
    _json(out / "split.json", {"seed": seed, "sizes": sizes,
                               "ids": {name: ids[split == name].tolist() for name in sizes}})
    utility = utility or {"i2t_r1": 0.5, "i2t_r5": 0.8, "t2i_r1": 0.45, "t2i_r5": 0.75, "zeroshot_shape": 0.9,
                          "zeroshot_colour": 0.8}
    _json(out / "metrics.json", {"f": utility, "g": {k: v - 0.01 for k, v in utility.items()},
                                 "scoring": {"pairs": int(len(scored)), "views": views}, "peak_rss_mb": 100.0,
                                 "timings": {"score_seconds": 1.0}, **significance_metrics})
    if experiment is not None:
        _json(out / "experiment.json", experiment)
    RunDir(out).mark_finished()  # with each file's checksum, as scoring finishes a run
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1))


def _png(colour: int, shape: int, px: int) -> bytes:
    rgb = [(220, 40, 40), (40, 180, 60), (40, 60, 220), (230, 210, 40), (150, 50, 170), (240, 140, 30)][colour]
    img = Image.new("RGB", (px, px), (250, 250, 250))
    inset = 3 + shape
    img.paste(rgb, (inset, inset, px - inset, px - inset))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _write_images(root: Path, ids: np.ndarray, colour: np.ndarray, shape: np.ndarray, mode: str,
                  px: int) -> list[str]:
    if mode == "shared":
        (root / "images").mkdir()
        for k in range(SHARED_IMAGES):
            (root / "images" / f"shared-{k:02d}.png").write_bytes(_png(k % len(COLOURS), k % len(SHAPES), px))
        return [f"images/shared-{k:02d}.png" for k in (np.arange(len(ids)) % SHARED_IMAGES).tolist()]
    if mode == "files":
        (root / "images").mkdir()
        refs = []
        for k, (c, s) in enumerate(zip(colour.tolist(), shape.tolist())):
            (root / "images" / f"{k:07d}.png").write_bytes(_png(c, s, px))
            refs.append(f"images/{k:07d}.png")
        return refs
    if mode == "tar":
        (root / "shards").mkdir()
        with tarfile.open(root / "shards" / "000.tar", "w") as tar:
            for k, (c, s) in enumerate(zip(colour.tolist(), shape.tolist())):
                data = _png(c, s, px)
                info = tarfile.TarInfo(f"{k:07d}.png")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return [join_image_ref("shards/000.tar", f"{k:07d}.png") for k in range(len(ids))]
    raise ValueError(f"images must be files, tar or shared, not {mode!r}")


def _scores_frame(rng, ids, split, truth, n_caps, first_captions, views: int, optional_scores: bool) -> pd.DataFrame:
    n = len(ids)
    faulty = truth != "clean"
    align_g = rng.uniform(0.2, 0.8, n)
    raw = rng.normal(0.01, 0.02, n) + np.where(truth == "swapped", 0.08, np.where(faulty, 0.03, 0.0))
    align_f = align_g + raw
    con_g = rng.normal(-2.0, 0.3, n)
    raw_con = raw * 5 + rng.normal(0, 0.05, n)
    frame = pd.DataFrame({
        "sample_id": ids, "split": split, "truth": truth, "caption": first_captions, "n_captions": n_caps,
        "seen_by": [SEEN_BY[s] for s in split],
        "clipmem": _minmax(raw), "clipmem_raw": raw,
        "clipmem_contrastive": _minmax(raw_con), "clipmem_contrastive_raw": raw_con,
        "align_f": align_f, "align_g": align_g, "contrastive_f": con_g + raw_con, "contrastive_g": con_g,
        "clipscore_f": 1 - align_f, "clipscore_g": 1 - align_g + np.where(faulty, 0.05, 0.0),
    })
    if optional_scores:
        for column in SCORE_COLUMNS:
            if column.name.startswith("mem_"):  # the tower and swap scores (significance has its own option)
                frame[column.name] = _minmax(raw + rng.normal(0, 0.02, n))
    spread = rng.normal(0, 0.01, (n, views)).astype(np.float32)
    frame["views_f"] = list((align_f[:, None] + spread).astype(np.float32))
    frame["views_g"] = list((align_g[:, None] + spread).astype(np.float32))
    return frame


def _significance(rng, scores: pd.DataFrame, null_ids, null_truth, views: int,
                  fdr: float) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(scores with the significance columns, null.parquet's frame, metrics.json's "significance" section)."""
    n_null = len(null_ids)
    # views of their own for each model, so a pair's per-view differences spread and its interval has a width
    spread = rng.normal(0, 0.01, (len(scores), views)).astype(np.float32)
    scores["views_g"] = list((scores["align_g"].to_numpy()[:, None] + spread).astype(np.float32))
    rows = []
    for key in SCORED_SPLITS:  # the published scheme's null keys (scoring.columns.null_key)
        align_g = rng.uniform(0.2, 0.8, n_null)
        raw = rng.normal(0.01, 0.02, n_null)  # as the clean scored pairs' raw scores are drawn
        raw_con = raw * 5 + rng.normal(0, 0.05, n_null)
        con_g = rng.normal(-2.0, 0.3, n_null)
        spread_f, spread_g = (rng.normal(0, 0.01, (n_null, views)).astype(np.float32) for _ in range(2))
        rows.append(pd.DataFrame({
            "sample_id": null_ids, "split": "extra", "truth": null_truth, "null_for": key, "clipmem_raw": raw,
            "clipmem_contrastive_raw": raw_con, "align_f": align_g + raw, "align_g": align_g,
            "contrastive_f": con_g + raw_con, "contrastive_g": con_g,
            "views_f": list(((align_g + raw)[:, None] + spread_f).astype(np.float32)),
            "views_g": list((align_g[:, None] + spread_g).astype(np.float32))}))
    null = pd.concat(rows, ignore_index=True)[list(NULL_COLUMNS)]
    scores = add_significance(scores, null, fdr)
    scores["clipmem_raw_sd"] = np.abs(rng.normal(0, 0.005, len(scores)))
    metrics = {"significance": {"fdr": fdr, "null_pairs": n_null, "flagged": int(scores[MEMORIZED].sum()),
                                "flagged_by_truth": flagged_by_truth(scores), "tail": TAIL_METHOD,
                                "null": null_summary(null)}}
    return scores, null, metrics


def _evidence(rng, scores: pd.DataFrame, embedded_ids: np.ndarray,
              cluster: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(scores with miscaption, the neighbour signals and reason; neighbours.parquet's frame). Each scored pair's
    neighbours (the first scored pairs in embedded_ids) are the next EVIDENCE_K embedded pairs in an order grouped
    by colour and shape, so mostly pairs that look alike; the signal columns agree with the neighbour rows
    (image_neighbour_sim and caption_neighbour_sim are the rank-1 similarities, neighbour_agreement the
    similarity-weighted mean agreement of the image neighbours). The reason is a made-up rule over the signals."""
    n, n_embedded = len(scores), len(embedded_ids)
    k = min(EVIDENCE_K, n_embedded - 1)
    truth = scores["truth"].to_numpy()
    wrong = np.isin(truth, ("swapped", "vague"))
    miscaption = np.where(truth == "swapped", rng.uniform(0.55, 1.0, n),
                          np.where(wrong, rng.uniform(0.3, 0.9, n), rng.uniform(0.0, 0.6, n)))
    nearest_image = np.where(truth == "atypical", rng.uniform(0.1, 0.4, n), rng.uniform(0.5, 0.99, n))
    nearest_caption = rng.uniform(0.4, 0.99, n)
    # rank r's similarity: the nearest one's minus growing steps, so ranks are in descending order
    image_sim, caption_sim = (nearest[:, None] - np.cumsum(np.c_[np.zeros(n), rng.uniform(0.0, 0.05, (n, k - 1))],
                                                           axis=1) for nearest in (nearest_image, nearest_caption))
    image_agreement = np.where(wrong[:, None], rng.uniform(-0.2, 0.4, (n, k)), rng.uniform(0.5, 1.0, (n, k)))
    caption_agreement = rng.uniform(0.0, 0.9, (n, k))
    order = np.lexsort((rng.random(n_embedded), cluster))
    place = np.empty(n_embedded, dtype=np.int64)
    place[order] = np.arange(n_embedded)
    # the next k in that order for images, the previous k for captions: never the pair itself, as k < n_embedded
    image_neighbour = order[(place[:n, None] + np.arange(1, k + 1)) % n_embedded]
    caption_neighbour = order[(place[:n, None] - np.arange(1, k + 1)) % n_embedded]
    scores = scores.copy()
    scores["miscaption"] = miscaption
    scores["image_neighbour_sim"] = nearest_image
    scores["caption_neighbour_sim"] = nearest_caption
    scores["neighbour_agreement"] = (image_sim * image_agreement).sum(axis=1) / image_sim.sum(axis=1)
    scores["neighbour_caption_margin"] = np.where(wrong, rng.uniform(0.0, 0.3, n), rng.uniform(-0.3, 0.05, n))
    scores[REASON] = np.select([miscaption >= 0.7, nearest_image < 0.45, nearest_caption < 0.5,
                                nearest_image >= 0.97], ["miscaptioned", "atypical_image", "atypical_caption",
                                                         "duplicate"], "typical")
    ids = scores["sample_id"].to_numpy()
    rows = []
    for kind, neighbour, sims, agreements in (("image", image_neighbour, image_sim, image_agreement),
                                              ("caption", caption_neighbour, caption_sim, caption_agreement)):
        rows.append(pd.DataFrame({"sample_id": np.repeat(ids, k), "kind": kind,
                                  "rank": np.tile(np.arange(1, k + 1), n), "neighbour_id": embedded_ids[neighbour].ravel(),
                                  "similarity": sims.ravel(), "agreement": agreements.ravel()}))
    return scores, pd.concat(rows, ignore_index=True)[list(NEIGHBOUR_COLUMNS)]


def _trajectory(rng, out: Path, scores: pd.DataFrame, null_ids: np.ndarray, tracked: list[int],
                null: pd.DataFrame | None) -> pd.DataFrame:
    """Write trajectory.parquet; return scores with the dynamics columns (scoring.dynamics.pair_dynamics, the
    function scoring derives them with)."""
    if null is None:
        null = pd.concat([pd.DataFrame({"sample_id": null_ids, "null_for": key,
                                        "align_g": rng.uniform(0.2, 0.8, len(null_ids)),
                                        "clipmem_raw": rng.normal(0.01, 0.02, len(null_ids))})
                          for key in SCORED_SPLITS], ignore_index=True)
        null["align_f"] = null["align_g"] + null["clipmem_raw"]
        null["clipmem_contrastive_raw"] = null["clipmem_raw"] * 5
    finals = [scores.assign(null_for=None), null]
    rows = []
    for final in finals:
        # a growing fraction of the final raw score per pair, 1 at the last epoch: A_f stays between A_g and its end
        fraction = np.sort(rng.uniform(0, 1, (len(final), len(tracked))), axis=1)
        fraction[:, -1] = 1.0
        for j, epoch in enumerate(tracked):
            raw = final["clipmem_raw"].to_numpy() * fraction[:, j]
            rows.append(pd.DataFrame({
                "sample_id": final["sample_id"].to_numpy(), "epoch": epoch, "null_for": final["null_for"].to_numpy(),
                "align_f": final["align_g"].to_numpy() + raw, "align_g": final["align_g"].to_numpy(),
                "clipmem_raw": raw,
                "clipmem_contrastive_raw": final["clipmem_contrastive_raw"].to_numpy() * fraction[:, j]}))
    trajectory = pd.concat(rows, ignore_index=True)[list(TRAJECTORY_COLUMNS)]
    trajectory.to_parquet(RunDir(out).trajectory, index=False)
    scores = scores.copy()
    scores[list(DYNAMICS_NAMES)] = pair_dynamics(scores, trajectory, tracked[-1])
    return scores


def _minmax(x: np.ndarray) -> np.ndarray:
    return (x - x.min()) / (x.max() - x.min())

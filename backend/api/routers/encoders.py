"""Which encoder memorizes: tower scores side by side, LayerMem curves, and per-pair layer curves."""

from __future__ import annotations

import numpy as np
import pandas as pd
from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from clipmem.backend.api.deps import RunDep, SampleIdPath, SessionDep, score_frame
from clipmem.backend.api.errors import NOT_FOUND
from clipmem.backend.api.frames import ScoreFrame
from clipmem.backend.api.schemas import Interval
from clipmem.backend.models import Run
from clipmem.scoring.significance import LARGE_N, TOWER_COMPARISONS, jsonable, tower_verdicts

router = APIRouter(prefix="/runs/{run}/encoders", tags=["encoders"])

TOWER_SCORES = ("mem_image_raw", "mem_text_raw", "mem_swap_image", "mem_swap_text")


class TowerMeans(BaseModel):
    truth: str = Field(description="Truth tag, or 'all'.")
    pairs: int = Field(description="Scored pairs with this truth tag (all of them for 'all').")
    means: dict[str, float] = Field(description="Mean of mem_image_raw, mem_text_raw, mem_swap_image and "
                                                "mem_swap_text over these pairs.")
    intervals: dict[str, Interval] = Field(description="Each mean with its 95% interval over these pairs "
                                                       "(scoring.significance.bootstrap_mean, seed 0): the percentile "
                                                       f"bootstrap, or above {LARGE_N:,} pairs the normal interval "
                                                       "mean +- 1.96 sd / sqrt(n).")
    text_minus_image: Interval | None = Field(description="mean(mem_text_raw - mem_image_raw) over these pairs with "
                                                          "its paired interval (significance.bootstrap_difference).")
    verdict: str | None = Field(description="scoring.significance.verdict of text side against image side: which "
                                            "is larger when the interval of the difference excludes 0, else 'not "
                                            "distinguishable at this run's size', with the numbers.")
    text_exceeds_image: bool = Field(description="Whether text-side memorization exceeds image-side beyond doubt: "
                                                 "the interval of text_minus_image lies above 0.")
    image_exceeds_text: bool = Field(description="Whether image-side exceeds text-side: the interval lies below 0.")
    swap_text_minus_image: Interval | None = Field(description="mean(mem_swap_text - mem_swap_image) with its "
                                                               "paired bootstrap interval; null when the run has no "
                                                               "swap scores.")
    swap_verdict: str | None = Field(description="The verdict of the text-swap drop against the image-swap drop; "
                                                 "null when the run has no swap scores.")


class LayerPoint(BaseModel):
    tower: str = Field(description="image or text.")
    layer: int = Field(description="Block number, from 1 at the input.")
    truth: str = Field(description="Truth tag the mean is over, or 'all'.")
    pairs: int = Field(description="Pairs the mean is over.")
    layer_mem: float = Field(description="Mean memorization on this block's mean-pooled output (raw).")
    delta_layer_mem: float = Field(description="Increase over the previous block (ΔLayerMem).")
    layer_mem_lo: float | None = Field(None, description="Lower end of layer_mem's 95% bootstrap interval over the "
                                                         "pairs; null for runs whose layers.parquet has no intervals.")
    layer_mem_hi: float | None = Field(None, description="Upper end of layer_mem's 95% bootstrap interval.")
    delta_layer_mem_lo: float | None = Field(None, description="Lower end of delta_layer_mem's 95% bootstrap "
                                                               "interval.")
    delta_layer_mem_hi: float | None = Field(None, description="Upper end of delta_layer_mem's 95% bootstrap "
                                                               "interval.")
    unit_mem: float | None = Field(None, description="UnitMem of this block (clipmem's extension, docs/layers.md): "
                                                     "per unit (MLP hidden unit or ResNet channel) its selectivity to "
                                                     "one training pair, (mu_max - mu_-max) / (mu_max + mu_-max), "
                                                     "averaged over the block's units; the mean of unit_mem_f and "
                                                     "unit_mem_g. Null on truth-tag rows, in k-fold and replica runs "
                                                     "and runs scored before UnitMem.")
    unit_mem_f: float | None = Field(None, description="UnitMem of model f over the S_C pairs it trained on.")
    unit_mem_g: float | None = Field(None, description="UnitMem of model g over the S_I pairs it trained on.")


class EncoderSummary(BaseModel):
    run: str = Field(description="The run's name.")
    has_tower_scores: bool = Field(description="False when the run was scored without tower scores; the other "
                                               "fields are then empty.")
    pearson: float | None = Field(description="Correlation of mem_image_raw and mem_text_raw over the run's pairs.")
    spearman: float | None = Field(description="Rank correlation of mem_image_raw and mem_text_raw.")
    by_truth: list[TowerMeans] = Field(description="Tower means per truth tag, 'all' first.")
    layers: list[LayerPoint] = Field(description="LayerMem per tower, block and truth tag; empty when the run "
                                                 "has no layer curves.")
    curve_sample_ids: list[str] = Field(description="Pairs (the most memorized) whose own layer curve is stored.")


class PairCurve(BaseModel):
    run: str = Field(description="The run's name.")
    sample_id: str = Field(description="The pair.")
    curves: dict[str, list[float]] = Field(description="Per tower, the pair's memorization on each block, "
                                                       "input side first.")


def _rank(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    return ranks


def _corr(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def _tower_verdicts(run: Run, frame: ScoreFrame) -> dict[str, dict]:
    """significance.tower_verdicts by truth tag: stored at ingest; computed here for runs ingested before, or
    ingested while runs above 20,000 pairs were stored without them (towers null)."""
    rows = run.summary.get("towers")
    if rows is None:
        columns = {c: frame.scores[c] for c in TOWER_SCORES if c in frame.scores}
        truth = np.asarray(frame.truth_values, dtype=object)[frame.truth_code]
        rows = jsonable(tower_verdicts(pd.DataFrame({"truth": truth, **columns})))
    return {row["truth"]: row for row in rows}


@router.get("", response_model=EncoderSummary, responses=NOT_FOUND)
def encoder_summary(run: RunDep, session: SessionDep, request: Request) -> EncoderSummary:
    """Image-side against text-side memorization: their correlation, means per truth tag with bootstrap
    intervals (and the encoder-swap drops), the verdict of text side against image side, and the per-layer curves
    of both towers per truth tag (with intervals when the run has them)."""
    names = set(run.score_names)
    has = {"mem_image_raw", "mem_text_raw"} <= names
    by_truth, pearson, spearman = [], None, None
    if has:
        frame = score_frame(request, session, run)
        present = [c for c in TOWER_SCORES if c in names]
        image, text = frame.scores["mem_image_raw"], frame.scores["mem_text_raw"]
        pearson = _corr(image, text)
        spearman = _corr(_rank(image), _rank(text))
        verdicts = _tower_verdicts(run, frame)
        groups = [("all", np.ones(frame.size, bool))]
        groups += [(tag, frame.truth_code == i) for i, tag in enumerate(frame.truth_values)]
        for tag, mask in groups:
            if not mask.any():
                continue
            means = {c: float(frame.scores[c][mask].mean()) for c in present}
            row = verdicts[tag]
            compared = {key: (a_col, b_col) for a_col, b_col, _, _, key in TOWER_COMPARISONS if key in row}
            intervals = {col: row[key][side] for key, cols in compared.items() for col, side in zip(cols, "ab")}
            sides, swaps = row.get("sides"), row.get("swaps")
            by_truth.append(TowerMeans(
                truth=tag, pairs=int(mask.sum()), means=means, intervals=intervals,
                text_minus_image=sides["difference"], verdict=sides["verdict"],
                text_exceeds_image=sides["a_exceeds_b"], image_exceeds_text=sides["b_exceeds_a"],
                swap_text_minus_image=swaps["difference"] if swaps else None,
                swap_verdict=swaps["verdict"] if swaps else None))
    return EncoderSummary(run=run.name, has_tower_scores=has, pearson=pearson, spearman=spearman, by_truth=by_truth,
                          layers=[LayerPoint(**row) for row in run.layers or []],
                          curve_sample_ids=sorted(run.layer_curves or {}))


@router.get("/curves/{sample_id:path}", response_model=PairCurve, responses=NOT_FOUND)
def pair_curve(run: RunDep, sample_id: SampleIdPath) -> PairCurve:
    """One pair's layer curve of both towers; stored for the run's most memorized pairs only."""
    curves = (run.layer_curves or {}).get(sample_id)
    if curves is None:
        raise HTTPException(404, f"run '{run.name}' stores no layer curve for sample '{sample_id}' (curves are kept "
                                 "for the most memorized pairs only)")
    return PairCurve(run=run.name, sample_id=sample_id, curves=curves)

"""CLIPMem over training time (issue 19, docs/trajectory.md): a pair's scores after each tracked epoch, a run's mean
raw score per truth tag and epoch against its null, and the training-dynamics map (one point per pair)."""

from __future__ import annotations

from typing import Annotated

import numpy as np
import pandas as pd
from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from clipmem.backend.api.deps import RunDep, SampleIdPath, SessionDep, load_sample
from clipmem.backend.api.errors import NOT_FOUND
from clipmem.backend.api.schemas import Interval
from clipmem.backend.models import Run, Sample, Score, TrajectoryPoint
from clipmem.scoring.columns import null_key
from clipmem.scoring.dynamics import NULL_QUANTILE, THRESHOLD, thresholds
from clipmem.scoring.significance import LARGE_N, bootstrap_mean

router = APIRouter(prefix="/runs/{run}", tags=["trajectory"])

UNTRACKED = "the run was trained without --track-epochs: it has no trajectory"
MAX_MAP_POINTS = 100_000
MAP_SEED = 0


class TrajectoryEpoch(BaseModel):
    epoch: int = Field(description="Tracked epoch: the pair was scored right after this epoch of training.")
    align_f: float = Field(description="A_f at this epoch: alignment under the model trained with the pair.")
    align_g: float = Field(description="A_g at this epoch: alignment under the model trained without it.")
    clipmem_raw: float = Field(description="A_f - A_g at this epoch.")
    clipmem_contrastive_raw: float = Field(description="The contrastive variant's raw score at this epoch.")
    null_p95: float | None = Field(description=f"The threshold of mem_epoch at this epoch: {THRESHOLD}; null when "
                                               "the run has no null pairs.")


class PairTrajectory(BaseModel):
    run: str = Field(description="The run's name.")
    sample_id: str = Field(description="The pair's sample id.")
    split: str = Field(description="candidate or independent.")
    truth: str = Field(description="The pair's truth tag.")
    available: bool = Field(description="Whether the run was trained with --track-epochs; false: no points.")
    null_for: str = Field(description="The null key of the pair's direction (its split), whose rows set null_p95.")
    points: list[TrajectoryEpoch] = Field(description="One per tracked epoch, epochs ascending; the last equals the "
                                                      "pair's final scores.")
    mem_epoch: float | None = Field(description="The first tracked epoch at which clipmem_raw exceeds null_p95; "
                                                "null when it never does, or without tracking.")
    mem_auc: float | None = Field(description="Area under the pair's clipmem_raw curve over the fraction of "
                                              "training done (docs/trajectory.md); null without tracking.")
    mem_variability: float | None = Field(description="Standard deviation of clipmem_raw over the tracked epochs; "
                                                      "null without tracking.")


class TagEpoch(BaseModel):
    truth: str = Field(description="Truth tag, or 'all' (every scored pair).")
    epoch: int = Field(description="Tracked epoch.")
    pairs: int = Field(description="Scored pairs with this truth tag.")
    clipmem_raw: Interval = Field(description="Mean clipmem_raw over these pairs at this epoch with its 95% interval "
                                              "(scoring.significance.bootstrap_mean, seed 0): the percentile "
                                              f"bootstrap over pairs, or above {LARGE_N:,} pairs the normal interval.")
    align_f: float = Field(description="Mean A_f over these pairs at this epoch.")
    align_g: float = Field(description="Mean A_g over these pairs at this epoch.")


class NullEpoch(BaseModel):
    epoch: int = Field(description="Tracked epoch.")
    null_for: str = Field(description="The null key (a split): the direction its S_E rows were scored in.")
    pairs: int = Field(description="Null (S_E) pairs at this epoch and key.")
    p95: float = Field(description=f"{NULL_QUANTILE:.0%} quantile of their clipmem_raw (numpy's linear "
                                   "interpolation): the threshold of mem_epoch.")


class RunTrajectory(BaseModel):
    run: str = Field(description="The run's name.")
    available: bool = Field(description="Whether the run was trained with --track-epochs; false: empty lists.")
    message: str | None = Field(description="Why there is nothing to show, when available is false.")
    epochs: list[int] = Field(description="The tracked epochs, ascending.")
    threshold: str = Field(description="What null_p95 and mem_epoch's threshold are.")
    curves: list[TagEpoch] = Field(description="Per truth tag (sorted, 'all' first) and epoch (ascending).")
    null: list[NullEpoch] = Field(description="Per epoch and null key; empty when the run has no S_E pairs.")


class DynamicsMap(BaseModel):
    """Columns of equal length, one entry per pair shown."""

    run: str = Field(description="The run's name.")
    available: bool = Field(description="Whether the run was trained with --track-epochs; false: empty columns.")
    message: str | None = Field(description="Why there is nothing to show, when available is false.")
    epochs: list[int] = Field(description="The tracked epochs, ascending.")
    total: int = Field(description="Scored pairs of the run with a trajectory.")
    sample_id: list[str] = Field(description="The pairs shown: all of them, or a seeded uniform sample of "
                                             "max_points, in the run's pair order.")
    truth: list[str] = Field(description="Each pair's truth tag.")
    mean_raw: list[float] = Field(description="Each pair's mean clipmem_raw over the tracked epochs (Data Maps' "
                                              "confidence).")
    variability: list[float] = Field(description="Each pair's mem_variability: the standard deviation of clipmem_raw "
                                                 "over the tracked epochs (Data Maps' variability).")
    mem_epoch: list[float | None] = Field(description="Each pair's memorization epoch; null when it never exceeds "
                                                      "the null's threshold.")


def _scored_rows(session: Session, run: Run) -> pd.DataFrame:
    """The run's scored pairs' trajectory rows with their truth tags: pair_index, epoch, truth and the scores."""
    rows = session.execute(
        select(TrajectoryPoint.pair_index, TrajectoryPoint.epoch, Score.truth, TrajectoryPoint.align_f,
               TrajectoryPoint.align_g, TrajectoryPoint.clipmem_raw)
        .join(Score, (Score.run_id == TrajectoryPoint.run_id) & (Score.pair_index == TrajectoryPoint.pair_index))
        .where(TrajectoryPoint.run_id == run.id, TrajectoryPoint.null_for.is_(None))).all()
    return pd.DataFrame(rows, columns=["pair_index", "epoch", "truth", "align_f", "align_g", "clipmem_raw"])


def _null_rows(session: Session, run: Run) -> pd.DataFrame:
    """The null's rows: epoch, null_for, clipmem_raw."""
    statement = (select(TrajectoryPoint.epoch, TrajectoryPoint.null_for, TrajectoryPoint.clipmem_raw)
                 .where(TrajectoryPoint.run_id == run.id, TrajectoryPoint.null_for.is_not(None)))
    rows = session.execute(statement).all()
    return pd.DataFrame(rows, columns=["epoch", "null_for", "clipmem_raw"])


# declared before GET /runs/{run}/samples/{sample_id}, whose path parameter would take ".../trajectory" as an id
@router.get("/samples/{sample_id:path}/trajectory", response_model=PairTrajectory, responses=NOT_FOUND)
def sample_trajectory(run: RunDep, sample_id: SampleIdPath, session: SessionDep) -> PairTrajectory:
    """A scored pair's A_f, A_g and raw scores after each tracked epoch, with the null's threshold at each, and its
    dynamics summaries. Runs trained without --track-epochs answer with `available` false and no points. 404 for
    pairs that are not scored."""
    sample = load_sample(session, run, sample_id)
    score = session.get(Score, (run.id, sample.pair_index))
    if score is None:
        raise HTTPException(404, f"sample '{sample_id}' of run '{run.name}' is not scored (split {sample.split}): "
                                 "only candidate and independent pairs have a trajectory")
    key = null_key(sample.split)
    points = []
    if run.tracked_epochs is not None:
        limits = thresholds(_null_rows(session, run))
        rows = session.execute(
            select(TrajectoryPoint.epoch, TrajectoryPoint.align_f, TrajectoryPoint.align_g,
                   TrajectoryPoint.clipmem_raw, TrajectoryPoint.clipmem_contrastive_raw)
            .where(TrajectoryPoint.run_id == run.id, TrajectoryPoint.pair_index == sample.pair_index,
                   TrajectoryPoint.null_for.is_(None))
            .order_by(TrajectoryPoint.epoch)).all()
        points = [TrajectoryEpoch(epoch=r.epoch, align_f=r.align_f, align_g=r.align_g, clipmem_raw=r.clipmem_raw,
                                  clipmem_contrastive_raw=r.clipmem_contrastive_raw,
                                  null_p95=limits.get(r.epoch, {}).get(key)) for r in rows]
    return PairTrajectory(run=run.name, sample_id=sample.sample_id, split=sample.split, truth=sample.truth,
                          available=run.tracked_epochs is not None, null_for=key, points=points,
                          mem_epoch=score.mem_epoch, mem_auc=score.mem_auc, mem_variability=score.mem_variability)


@router.get("/trajectory", response_model=RunTrajectory, responses=NOT_FOUND)
def run_trajectory(run: RunDep, session: SessionDep) -> RunTrajectory:
    """Mean clipmem_raw (with its 95% bootstrap interval over pairs), A_f and A_g per truth tag and tracked epoch,
    and the null's 95th percentile per epoch and direction. Runs trained without --track-epochs answer with
    `available` false and empty lists."""
    if run.tracked_epochs is None:
        return RunTrajectory(run=run.name, available=False, message=UNTRACKED, epochs=[], threshold=THRESHOLD,
                             curves=[], null=[])
    rows = _scored_rows(session, run)
    curves = []
    groups = [("all", rows), *sorted(rows.groupby("truth"), key=lambda item: item[0])]
    for truth, part in groups:
        for epoch, at in part.groupby("epoch", sort=True):
            curves.append(TagEpoch(truth=str(truth), epoch=int(epoch), pairs=len(at),
                                   clipmem_raw=Interval(**bootstrap_mean(at["clipmem_raw"].to_numpy()).to_json()),
                                   align_f=float(at["align_f"].mean()), align_g=float(at["align_g"].mean())))
    null = _null_rows(session, run)
    counts = null.groupby(["epoch", "null_for"]).size()
    null_epochs = [NullEpoch(epoch=epoch, null_for=key, pairs=int(counts[(epoch, key)]), p95=value)
                   for epoch, by_key in sorted(thresholds(null).items()) for key, value in sorted(by_key.items())]
    return RunTrajectory(run=run.name, available=True, message=None, epochs=list(run.tracked_epochs),
                         threshold=THRESHOLD, curves=curves, null=null_epochs)


@router.get("/dynamics", response_model=DynamicsMap, responses=NOT_FOUND)
def dynamics(run: RunDep, session: SessionDep,
             max_points: Annotated[int, Query(ge=1, le=MAX_MAP_POINTS,
                                              description="At most this many pairs: above it a seeded uniform "
                                                          "sample (seed 0) of the run's pairs.")] = 20_000
             ) -> DynamicsMap:
    """The training-dynamics map (Data Maps, Swayamdipta et al. 2020, with CLIPMem for confidence): per scored pair
    its mean clipmem_raw over the tracked epochs, its variability and memorization epoch, and its truth tag. Runs
    trained without --track-epochs answer with `available` false and empty columns."""
    if run.tracked_epochs is None:
        return DynamicsMap(run=run.name, available=False, message=UNTRACKED, epochs=[], total=0, sample_id=[],
                           truth=[], mean_raw=[], variability=[], mem_epoch=[])
    rows = _scored_rows(session, run)
    mean_raw = rows.groupby("pair_index")["clipmem_raw"].mean()
    pairs = pd.DataFrame(session.execute(
        select(Score.pair_index, Sample.sample_id, Score.truth, Score.mem_variability, Score.mem_epoch)
        .join(Sample, (Sample.run_id == Score.run_id) & (Sample.pair_index == Score.pair_index))
        .where(Score.run_id == run.id).order_by(Score.pair_index)).all(),
        columns=["pair_index", "sample_id", "truth", "mem_variability", "mem_epoch"])
    pairs = pairs[pairs["pair_index"].isin(mean_raw.index)].reset_index(drop=True)
    total = len(pairs)
    if total > max_points:
        keep = np.sort(np.random.default_rng(MAP_SEED).choice(total, max_points, replace=False))
        pairs = pairs.iloc[keep]
    epochs = pairs["mem_epoch"].astype(object).where(pairs["mem_epoch"].notna(), None)
    return DynamicsMap(run=run.name, available=True, message=None, epochs=list(run.tracked_epochs), total=total,
                       sample_id=pairs["sample_id"].tolist(), truth=pairs["truth"].tolist(),
                       mean_raw=mean_raw.loc[pairs["pair_index"]].astype(float).tolist(),
                       variability=pairs["mem_variability"].astype(float).tolist(), mem_epoch=epochs.tolist())

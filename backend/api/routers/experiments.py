"""Experiments (`clipmem experiment`): their runs' parameters, mean CLIPMem and utility, aggregated over seeds.

The rows and the summary come from scoring.experiment_report (torch-free), the same functions that write the
experiment's report.md, so the API, the dashboard and the report show the same numbers. A run's mean CLIPMem
(raw and scaled) is the one stored on the run at ingest (runs.summary). The removal grid's mean over the pairs every
run of a seed scores (common_pair_means) depends on which runs the experiment holds, so the detail reads it from the
scores table, for the removal grid's runs alone, in one query.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Annotated

import pandas as pd
from fastapi import APIRouter, HTTPException, Path
from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from clipmem.backend.api.deps import SessionDep
from clipmem.backend.api.errors import NOT_FOUND
from clipmem.backend.api.schemas import ExperimentDetail, ExperimentRunRow, ExperimentSummary, ExperimentSummaryRow
from clipmem.backend.models import Run, Sample, Score
from clipmem.backend.rundir import EXPERIMENT_NAME
from clipmem.scoring.experiment_report import (GRIDS, common_pair_means, grid_points, quality_metrics, run_row,
                                               summarize)

router = APIRouter(prefix="/experiments", tags=["experiments"])

ExperimentName = Annotated[str, Path(description="The experiment's name, as listed by GET /experiments.",
                                     pattern=EXPERIMENT_NAME.pattern)]


def _numbers(section) -> dict[str, float]:
    """The finite numbers of one model's utility (other values are not metrics)."""
    if not isinstance(section, dict):
        return {}
    return {k: float(v) for k, v in section.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _row(run: Run) -> dict:
    # the name in force is the run's (ingest --experiment may have renamed it); params are experiment.json's
    experiment = {**run.experiment_params, "experiment": run.experiment}
    summary = run.summary
    means = summary["means"]
    # per truth tag and swapped-pair detection as the report computes them from scores.parquet, read from the
    # summary ingest computed with the same functions
    quality = quality_metrics({row["truth"]: row["means"]["clipmem_raw"] for row in summary["by_truth"]},
                              (summary.get("detection") or {}).get("swapped") or [])
    row = run_row(experiment, means["clipmem_raw"], means["clipmem"],
                  {model: _numbers(run.utility.get(model)) for model in ("f", "g")}, quality)
    return {"run": run.name, "run_id": run.id, **row}


def _sort_key(row: dict):
    return (row["removal_method"] or "", row["removal_count"], row["captions_per_image"], row["renderings"],
            row["text_noise"], row["lock"], row["from_scratch"], row["seed"], row["run"])


def experiment_rows(session: Session, name: str | None = None) -> dict[str, list[dict]]:
    """Run rows per experiment name (only `name`'s when given)."""
    statement = select(Run).where(Run.experiment.is_not(None), Run.experiment_params.is_not(None))
    if name is not None:
        statement = statement.where(Run.experiment == name)
    out: dict[str, list[dict]] = {}
    for run in session.scalars(statement.order_by(Run.experiment, Run.id)):
        out.setdefault(run.experiment, []).append(_row(run))
    return {key: sorted(rows, key=_sort_key) for key, rows in out.items()}


def add_common_pair_means(session: Session, rows: list[dict]) -> None:
    """Set mean_clipmem_raw_common and common_pairs on the removal grid's rows as the report does, from the scores
    of those runs (sample id and raw CLIPMem; pair_index is a position in each run's own samples.parquet, so pairs
    are matched across runs by sample id). Rows outside the removal grid, or of a seed whose removal grid is the
    baseline alone, get neither."""
    removal = [row for row in rows if any(grid == "removal" for grid, _, _ in grid_points(row))]
    per_seed = Counter(row["seed"] for row in removal)
    members = {row["run_id"]: row["run"] for row in removal if per_seed[row["seed"]] > 1}
    if not members:
        return
    statement = (select(Score.run_id, Sample.sample_id, Score.clipmem_raw)
                 .join(Sample, and_(Sample.run_id == Score.run_id, Sample.pair_index == Score.pair_index))
                 .where(Score.run_id.in_(list(members)))
                 .order_by(Score.run_id, Score.pair_index))
    frame = pd.DataFrame(session.execute(statement).all(), columns=["run_id", "sample_id", "clipmem_raw"])
    parts = dict(list(frame.groupby("run_id", sort=False)))
    scores = {name: parts.get(run_id, frame.iloc[:0]) for run_id, name in members.items()}
    common_pair_means(rows, scores)
    for row in rows:  # no common pair: null in JSON rather than NaN
        if "mean_clipmem_raw_common" in row and math.isnan(row["mean_clipmem_raw_common"]):
            row["mean_clipmem_raw_common"] = None


def _grids(summary) -> list[str]:
    present = set(summary["grid"]) if len(summary) else set()
    return [g for g in GRIDS if g in present]


@router.get("", response_model=list[ExperimentSummary])
def list_experiments(session: SessionDep) -> list[ExperimentSummary]:
    """Every experiment with runs in the database, by name: its number of runs, seeds and grids."""
    return [ExperimentSummary(name=name, runs=len(rows), seeds=sorted({r["seed"] for r in rows}),
                              grids=_grids(summarize(rows)))
            for name, rows in experiment_rows(session).items()]


@router.get("/{name}", response_model=ExperimentDetail, responses=NOT_FOUND)
def experiment_detail(name: ExperimentName, session: SessionDep) -> ExperimentDetail:
    """An experiment's runs (parameters, mean CLIPMem, utility averaged over f and g; in the removal grid also the
    mean raw CLIPMem over the pairs every run of the seed scores) and their summary: mean, standard deviation and
    count over seeds of every metric per grid, method and knob value."""
    rows = experiment_rows(session, name).get(name)
    if not rows:
        raise HTTPException(404, f"no experiment named '{name}'")
    add_common_pair_means(session, rows)
    summary = summarize(rows)
    return ExperimentDetail(name=name, seeds=sorted({r["seed"] for r in rows}), grids=_grids(summary),
                            runs=[ExperimentRunRow(**row) for row in rows],
                            summary=[ExperimentSummaryRow(**record) for record in summary.to_dict("records")])

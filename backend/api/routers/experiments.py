"""Experiments (`clipmem experiment`): their runs' parameters, mean CLIPMem and utility, aggregated over seeds.

The rows and the summary come from scoring.experiment_report (torch-free), the same functions that write the
experiment's report.md, so the API, the dashboard and the report show the same numbers. A run's mean CLIPMem
(raw and scaled) is the one stored on the run at ingest (runs.summary), so no request reads the scores table.
"""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path
from sqlalchemy import select
from sqlalchemy.orm import Session

from clipmem.backend.api.deps import SessionDep
from clipmem.backend.api.errors import NOT_FOUND
from clipmem.backend.api.schemas import ExperimentDetail, ExperimentRunRow, ExperimentSummary, ExperimentSummaryRow
from clipmem.backend.models import Run
from clipmem.backend.rundir import EXPERIMENT_NAME
from clipmem.scoring.experiment_report import GRIDS, run_row, summarize

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
    means = run.summary["means"]
    row = run_row(experiment, means["clipmem_raw"], means["clipmem"],
                  {model: _numbers(run.utility.get(model)) for model in ("f", "g")})
    return {"run": run.name, "run_id": run.id, **row}


def _sort_key(row: dict):
    return (row["removal_method"] or "", row["removal_count"], row["captions_per_image"], row["text_noise"],
            row["seed"], row["run"])


def experiment_rows(session: Session, name: str | None = None) -> dict[str, list[dict]]:
    """Run rows per experiment name (only `name`'s when given)."""
    statement = select(Run).where(Run.experiment.is_not(None), Run.experiment_params.is_not(None))
    if name is not None:
        statement = statement.where(Run.experiment == name)
    out: dict[str, list[dict]] = {}
    for run in session.scalars(statement.order_by(Run.experiment, Run.id)):
        out.setdefault(run.experiment, []).append(_row(run))
    return {key: sorted(rows, key=_sort_key) for key, rows in out.items()}


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
    """An experiment's runs (parameters, mean CLIPMem, utility averaged over f and g) and their summary: mean,
    standard deviation and count over seeds of every metric per grid, removal method and knob value."""
    rows = experiment_rows(session, name).get(name)
    if not rows:
        raise HTTPException(404, f"no experiment named '{name}'")
    summary = summarize(rows)
    return ExperimentDetail(name=name, seeds=sorted({r["seed"] for r in rows}), grids=_grids(summary),
                            runs=[ExperimentRunRow(**row) for row in rows],
                            summary=[ExperimentSummaryRow(**record) for record in summary.to_dict("records")])

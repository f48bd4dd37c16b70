"""Runs: list, detail, delete."""

from __future__ import annotations

from datetime import timezone
from pathlib import PurePath
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import select

from clipmem.backend.api.deps import RunDep, SessionDep, WriteRunDep, WriteSessionDep
from clipmem.backend.api.errors import NOT_FOUND, READ_ONLY_TOKEN
from clipmem.backend.api.query import has_reasons, run_flags
from clipmem.backend.api.schemas import RunDetail, RunSummary, ScoreSummary, TrainingBase
from clipmem.backend.models import Run
from clipmem.backend.rundir import EXPERIMENT_NAME
from clipmem.backend.store import delete_run

router = APIRouter(prefix="/runs", tags=["runs"])

# TrainConfig's lock options; a config saved before fine-tuning existed lacks them, which means no lock
LOCKS = {"lock_image": False, "lock_image_unlocked_groups": 0, "lock_image_freeze_bn_stats": False,
         "lock_text": False, "lock_text_unlocked_layers": 0, "lock_text_freeze_layer_norm": False}


def training_base(settings: dict) -> TrainingBase:
    """The base and locks of a run, from its config.json as stored at ingest (runs.settings)."""
    train = settings.get("train") or {}
    pretrained = train.get("pretrained")
    return TrainingBase(pretrained=pretrained, file_name=PurePath(pretrained).name if pretrained else None,
                        sha256=train.get("pretrained_sha256") if pretrained else None,
                        **{key: type(default)(train.get(key, default)) for key, default in LOCKS.items()})


def _summary(run: Run) -> dict:
    created = run.created_at if run.created_at.tzinfo else run.created_at.replace(tzinfo=timezone.utc)  # SQLite
    significance = run.summary.get("significance") or {}
    return dict(name=run.name, dataset_kind=run.dataset_kind, model=run.model, created_at=created,
                split_sizes=run.split_sizes, n_samples=run.n_samples, n_scored=run.n_scored,
                mean_clipmem=run.summary["means"]["clipmem"], experiment=run.experiment,
                experiment_params=run.experiment_params, fdr=significance.get("fdr"),
                flagged=significance.get("flagged"), flagged_by_truth=significance.get("by_truth", []),
                base=training_base(run.settings))


ExperimentFilter = Annotated[str | None, Query(description="Only the runs of this experiment (its name, as in "
                                                           "GET /experiments).", pattern=EXPERIMENT_NAME.pattern)]


@router.get("", response_model=list[RunSummary])
def list_runs(session: SessionDep, experiment: ExperimentFilter = None) -> list[RunSummary]:
    """Every ingested run (or every run of one experiment), newest first."""
    statement = select(Run).order_by(Run.id.desc())
    if experiment is not None:
        statement = statement.where(Run.experiment == experiment)
    runs = session.scalars(statement).all()
    return [RunSummary(**_summary(run)) for run in runs]


@router.get("/{run}", response_model=RunDetail, responses=NOT_FOUND)
def run_detail(run: RunDep) -> RunDetail:
    """A run's settings, split sizes, utility of f and g, score summary per truth tag (means with bootstrap
    intervals), and its flagged pairs per truth tag."""
    summary = run.summary
    return RunDetail(**_summary(run), source_dir=run.source_dir, data_root=run.data_root, settings=run.settings,
                     utility=run.utility, run_metrics=run.run_metrics, score_names=run.score_names,
                     flag_names=run_flags(run), has_null=run.null_scores is not None,
                     has_reasons=has_reasons(run), has_evidence=run.n_neighbours > 0,
                     score_summary=ScoreSummary(pairs=summary["pairs"], means=summary["means"],
                                                intervals=summary.get("intervals"), by_truth=summary["by_truth"]),
                     n_embedded=run.n_embedded, embedding_dim=run.embedding_dim, map_method=run.map_method)


@router.delete("/{run}", status_code=204, response_class=Response, responses={**NOT_FOUND, **READ_ONLY_TOKEN})
def remove_run(run: WriteRunDep, session: WriteSessionDep, request: Request) -> Response:
    """Delete a run with its samples, scores, embeddings, maps and tags (its files are left alone). Needs the
    write token when the server has tokens."""
    delete_run(session.connection(), run.id)
    session.commit()
    request.app.state.score_frames.discard(run.id)
    request.app.state.embedding_sets.discard(run.id)
    return Response(status_code=204)

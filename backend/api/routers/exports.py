"""Exports of the current filter: the selected pairs as CSV, and the run's training data minus the
selection as an open_clip training CSV (the remove-and-retrain loop)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import Field
from sqlalchemy import and_, exists, select

from clipmem.backend.api.deps import RunDep, SessionDep
from clipmem.backend.api.errors import NOT_FOUND, ErrorMessage
from clipmem.backend.api.query import (SampleFilter, SortFields, has_reasons, require_scores, run_flags,
                                       sql_conditions)
from clipmem.backend.models import Run, Sample, Score
from clipmem.scoring.columns import SCORE_BY_NAME, TRAINING_SPLITS

router = APIRouter(prefix="/runs/{run}/exports", tags=["exports"])

FETCH_ROWS = 10_000
CSV_CONTENT = {200: {"content": {"text/csv": {}}, "description": "The CSV file."}}


class ExportQuery(SampleFilter, SortFields):
    limit: int | None = Field(None, ge=1, le=100_000_000,
                              description="Keep only the first `limit` matching pairs in the sort order (e.g. the "
                                          "100 most memorized); default: every matching pair.")


class OpenClipQuery(ExportQuery):
    model: Literal["f", "g"] = Field("f", description="Whose training data: f trains on shared + candidate "
                                                      "pairs, g on shared + independent pairs.")


def sort_conditions(sort: str) -> list:
    """`sort IS NOT NULL` when sorting by an optional score: its index is partial (nulls left out) and serves
    the ORDER BY only when the WHERE implies that. It drops no pair: a run is sorted only by scores it has
    (require_scores), and a run that has one has it for every scored pair (ingest refuses NaN)."""
    return [] if SCORE_BY_NAME[sort].required else [getattr(Score, sort).is_not(None)]


def page_order(sort: str, order: str):
    column = getattr(Score, sort)
    if order == "desc":
        return column.desc(), Score.pair_index.desc()
    return column.asc(), Score.pair_index.asc()


def _limited(statement, query: ExportQuery):
    return statement.limit(query.limit) if query.limit is not None else statement


def _selection(run: Run, query: ExportQuery):
    """pair_index of the selected pairs: those matching the filter, the first `limit` of them in sort order."""
    require_scores(run, query.scores_used() | {query.sort})
    return _limited(select(Score.pair_index).where(*sql_conditions(run, query), *sort_conditions(query.sort))
                    .order_by(*page_order(query.sort, query.order)), query)


def _csv_response(filename: str, lines: Iterator[str]) -> StreamingResponse:
    return StreamingResponse(lines, media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def _write_all(request: Request, statement, header: list[str] | None, row_of, delimiter: str) -> Iterator[str]:
    with request.app.state.sessions() as session:
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
        if header:
            writer.writerow(header)
        for chunk in session.execute(statement.execution_options(yield_per=FETCH_ROWS)).partitions():
            for row in chunk:
                for line in row_of(row):
                    writer.writerow(line)
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
        tail = buffer.getvalue()  # the header alone, when nothing matched
        if tail:
            yield tail


@router.get("/selection.csv", response_class=StreamingResponse, responses={**CSV_CONTENT, **NOT_FOUND})
def export_selection(run: RunDep, query: Annotated[ExportQuery, Query()], request: Request) -> StreamingResponse:
    """The pairs matching the filter, in sort order, with their split, truth tag, first caption, every score,
    (runs scored with significance) the `memorized` flag and (runs with reasons) the `reason`."""
    require_scores(run, query.scores_used() | {query.sort})
    names = [*run.score_names, *run_flags(run), *(["reason"] if has_reasons(run) else [])]
    statement = _limited(
        select(Sample.sample_id, Score.split, Score.truth, Score.seen_by, Score.n_captions, Sample.captions,
               Sample.image_ref, *(getattr(Score, n) for n in names))
        .join(Sample, and_(Sample.run_id == Score.run_id, Sample.pair_index == Score.pair_index))
        .where(*sql_conditions(run, query), *sort_conditions(query.sort))
        .order_by(*page_order(query.sort, query.order)), query)
    header = ["sample_id", "split", "truth", "seen_by", "n_captions", "caption", "image_ref", *names]

    def row_of(row):
        yield [row.sample_id, row.split, row.truth, row.seen_by, row.n_captions, row.captions[0], row.image_ref,
               *(getattr(row, n) for n in names)]

    return _csv_response(f"{run.name}-selection.csv", _write_all(request, statement, header, row_of, ","))


@router.get("/open_clip.csv", response_class=StreamingResponse,
            responses={**CSV_CONTENT, **NOT_FOUND,
                       409: {"model": ErrorMessage, "description": "The run's images are not plain files."}})
def export_open_clip(run: RunDep, query: Annotated[OpenClipQuery, Query()], session: SessionDep,
                     request: Request) -> StreamingResponse:
    """The training data of model f (or g) minus the pairs matching the filter, as open_clip's training CSV:
    tab-separated `filepath` (absolute image path) and `title` (one line per caption the pair trains with)."""
    if session.scalar(select(exists().where(Sample.run_id == run.id, Sample.image_stored))):
        raise HTTPException(409, f"run '{run.name}' keeps its images inside WebDataset shards; open_clip's CSV "
                                 "loader needs plain image files")
    selected = _selection(run, query).subquery()
    statement = (select(Sample.image_ref, Sample.captions)
                 .where(Sample.run_id == run.id, Sample.split.in_(TRAINING_SPLITS[query.model]),
                        Sample.pair_index.not_in(select(selected.c.pair_index)))
                 .order_by(Sample.pair_index))
    per_pair = int(run.settings.get("train", {}).get("captions_per_image", 0) or 0)
    root = Path(run.data_root)

    def row_of(row):
        captions = row.captions if per_pair <= 0 else row.captions[:per_pair]
        path = str(root / row.image_ref)
        for caption in captions:
            yield [path, caption]

    return _csv_response(f"{run.name}-{query.model}-train.csv",
                         _write_all(request, statement, ["filepath", "title"], row_of, "\t"))

"""Samples of a run: filtered, sorted pages with keyset pagination, one sample in full, and the evidence of why it
is memorized."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from clipmem.backend.api.deps import RunDep, SampleIdPath, SessionDep, load_sample, score_frame
from clipmem.backend.api.errors import NOT_FOUND
from clipmem.backend.api.limits import DEFAULT_PAGE_SIZE, MAX_CURSOR_LENGTH, MAX_PAGE_SIZE
from clipmem.backend.api.query import (SampleFilter, SortFields, decode_cursor, encode_cursor, frame_mask, frame_page,
                                       require_scores)
from clipmem.backend.api.schemas import (Evidence, EvidenceNeighbour, Interval, SampleDetail, SamplePage,
                                         SampleSummary)
from clipmem.backend.models import EmbeddingPoint, PairNeighbour, Run, Sample, Score, Tag
from clipmem.scoring.columns import NEIGHBOUR_KINDS

router = APIRouter(prefix="/runs/{run}/samples", tags=["samples"])


class SamplePageQuery(SampleFilter, SortFields):
    cursor: str | None = Field(None, max_length=MAX_CURSOR_LENGTH,
                               description="next_cursor of the previous page; omit for the first page.")
    limit: int = Field(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE, description="Pairs per page.")


def tagged_pairs(session: Session, run: Run, tags: list[str]) -> np.ndarray:
    """pair_index of every pair of the run carrying one of `tags`."""
    rows = session.scalars(select(Tag.pair_index).where(Tag.run_id == run.id, Tag.tag.in_(tags)).distinct())
    return np.fromiter(rows, dtype=np.int64)


def tags_of(session: Session, run: Run, pair_indexes: list[int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    if pair_indexes:
        rows = session.execute(select(Tag.pair_index, Tag.tag)
                               .where(Tag.run_id == run.id, Tag.pair_index.in_(pair_indexes)).order_by(Tag.tag))
        for pair_index, tag in rows:
            out.setdefault(pair_index, []).append(tag)
    return out


def raw_interval(run: Run, row) -> Interval | None:
    """clipmem_raw with its interval over the scoring views, when the run has one."""
    if not {"clipmem_raw_lo", "clipmem_raw_hi"} <= set(run.score_names):
        return None
    return Interval(estimate=row.clipmem_raw, lo=row.clipmem_raw_lo, hi=row.clipmem_raw_hi)


@router.get("", response_model=SamplePage, responses=NOT_FOUND)
def list_samples(run: RunDep, query: Annotated[SamplePageQuery, Query()], session: SessionDep,
                 request: Request) -> SamplePage:
    """Scored pairs of the run matching the filter, sorted by a score, one page at a time; each with its
    `memorized` flag and the interval of its clipmem_raw when the run was scored with significance, and its
    `miscaption` and `reason` when the run has them (sort by miscaption, filter by reason).

    Pages are keyset-paginated (by sort value, then the pair's position in the run): pass each response's
    `next_cursor` to get the next page. `total` counts every matching pair.
    """
    require_scores(run, query.scores_used() | {query.sort})
    after = decode_cursor(query.cursor, query.sort, query.order) if query.cursor is not None else None
    frame = score_frame(request, session, run)
    mask = frame_mask(frame, query, tagged_pairs(session, run, query.tag) if query.tag else None)
    total = int(mask.sum())
    names = run.score_names
    statement = (select(Score.pair_index, Score.split, Score.truth, Score.n_captions, Score.seen_by, Score.memorized,
                        Score.miscaption, Score.reason, *(getattr(Score, n) for n in names), Sample.sample_id,
                        Sample.captions)
                 .join(Sample, (Sample.run_id == Score.run_id) & (Sample.pair_index == Score.pair_index)))
    # the page is chosen from the cached columns; its rows are then fetched by primary key
    wanted = frame_page(frame, mask, query.sort, query.order, after, query.limit + 1).tolist() if total else []
    by_index = {row.pair_index: row for row in session.execute(
        statement.where(Score.run_id == run.id, Score.pair_index.in_(wanted))).all()} if wanted else {}
    rows = [by_index[p] for p in wanted]
    has_more = len(rows) > query.limit
    rows = rows[: query.limit]
    tags = tags_of(session, run, [row.pair_index for row in rows])
    items = [SampleSummary(sample_id=row.sample_id, split=row.split, truth=row.truth, caption=row.captions[0],
                           n_captions=row.n_captions, seen_by=row.seen_by,
                           scores={n: getattr(row, n) for n in run.score_names}, memorized=row.memorized,
                           interval=raw_interval(run, row), miscaption=row.miscaption, reason=row.reason,
                           tags=tags.get(row.pair_index, []))
             for row in rows]
    next_cursor = None
    if has_more:
        last = rows[-1]
        next_cursor = encode_cursor(query.sort, query.order, getattr(last, query.sort), last.pair_index)
    return SamplePage(run=run.name, total=total, sort=query.sort, order=query.order, items=items,
                      next_cursor=next_cursor)


def image_path(run: Run, sample_id: str) -> str:
    """The path of a sample's thumbnail (GET /runs/{run}/images/{sample_id}), relative to the API root."""
    return f"/runs/{quote(run.name, safe='')}/images/{quote(sample_id, safe='/')}"


# declared before the sample route, whose path parameter would otherwise take ".../evidence" as a sample id
@router.get("/{sample_id:path}/evidence", response_model=Evidence, responses=NOT_FOUND)
def sample_evidence(run: RunDep, sample_id: SampleIdPath, session: SessionDep) -> Evidence:
    """Why a scored pair is memorized: its reason and miscaption, the neighbour signals, the with-vs-without
    (align_f, align_g, clipmem_raw) and encoder-swap drops, and its nearest other images and captions under the
    model that did not train on it, each with its captions, thumbnail path and truth tag. Runs scored before the
    evidence answer with `available` false, empty lists and null signals. 404 for pairs that are not scored.

    A sample whose own id ends in "/evidence" is reached here, not by GET /runs/{run}/samples/{sample_id}."""
    sample = load_sample(session, run, sample_id)
    score = session.get(Score, (run.id, sample.pair_index))
    if score is None:
        raise HTTPException(404, f"sample '{sample_id}' of run '{run.name}' is not scored (split {sample.split}): "
                                 "only candidate and independent pairs have evidence")
    rows = session.execute(
        select(PairNeighbour.kind, PairNeighbour.rank, PairNeighbour.similarity, PairNeighbour.agreement,
               Sample.sample_id, Sample.captions, Sample.truth)
        .join(Sample, (Sample.run_id == PairNeighbour.run_id) & (Sample.pair_index == PairNeighbour.neighbour_index))
        .where(PairNeighbour.run_id == run.id, PairNeighbour.pair_index == sample.pair_index)
        .order_by(PairNeighbour.kind, PairNeighbour.rank)).all() if run.n_neighbours else []
    lists: dict[str, list[EvidenceNeighbour]] = {kind: [] for kind in NEIGHBOUR_KINDS}
    for row in rows:
        lists[row.kind].append(EvidenceNeighbour(rank=row.rank, sample_id=row.sample_id, similarity=row.similarity,
                                                 agreement=row.agreement, captions=row.captions,
                                                 image_url=image_path(run, row.sample_id), truth=row.truth))
    return Evidence(run=run.name, sample_id=sample.sample_id, truth=sample.truth, seen_by=score.seen_by,
                    available=run.n_neighbours > 0, reason=score.reason, miscaption=score.miscaption,
                    image_neighbour_sim=score.image_neighbour_sim, caption_neighbour_sim=score.caption_neighbour_sim,
                    neighbour_agreement=score.neighbour_agreement,
                    neighbour_caption_margin=score.neighbour_caption_margin, align_f=score.align_f,
                    align_g=score.align_g, clipmem_raw=score.clipmem_raw, mem_swap_image=score.mem_swap_image,
                    mem_swap_text=score.mem_swap_text, image_neighbours=lists["image"],
                    caption_neighbours=lists["caption"])


@router.get("/{sample_id:path}", response_model=SampleDetail, responses=NOT_FOUND)
def sample_detail(run: RunDep, sample_id: SampleIdPath, session: SessionDep) -> SampleDetail:
    """One pair: captions, split and truth tag, every score, A_f and A_g, the per-view alignments, and (runs scored
    with significance) its `memorized` flag, the interval of its clipmem_raw and the null it is tested against."""
    sample = load_sample(session, run, sample_id)
    score = session.get(Score, (run.id, sample.pair_index))
    has_embedding = session.get(EmbeddingPoint, (run.id, sample.pair_index)) is not None
    tags = tags_of(session, run, [sample.pair_index]).get(sample.pair_index, [])
    views = (lambda blob: np.frombuffer(blob, dtype="<f4").astype(float).tolist())
    return SampleDetail(
        run=run.name, sample_id=sample.sample_id, split=sample.split, truth=sample.truth, captions=sample.captions,
        attributes=sample.attributes, image_ref=sample.image_ref,
        seen_by=score.seen_by if score else None,
        scores={n: getattr(score, n) for n in run.score_names} if score else None,
        memorized=score.memorized if score else None, interval=raw_interval(run, score) if score else None,
        miscaption=score.miscaption if score else None, reason=score.reason if score else None,
        null_for=score.null_for if score else None,
        align_f=score.align_f if score else None, align_g=score.align_g if score else None,
        views_f=views(score.views_f) if score else None, views_g=views(score.views_g) if score else None,
        tags=tags, has_embedding=has_embedding)


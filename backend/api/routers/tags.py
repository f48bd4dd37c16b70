"""User tags on a run's pairs: list, add, remove."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query
from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from clipmem.backend.api.deps import RunDep, SessionDep, WriteRunDep, WriteSessionDep
from clipmem.backend.api.errors import NOT_FOUND, READ_ONLY_TOKEN, ErrorMessage
from clipmem.backend.api.limits import MAX_TAG_BATCH
from clipmem.backend.api.query import TAG_PATTERN, TAG_RULE, SampleIdText
from clipmem.backend.api.schemas import TagChange, TagCount, TagResult
from clipmem.backend.models import Run, Sample, Tag

router = APIRouter(prefix="/runs/{run}/tags", tags=["tags"])

TagName = Annotated[str, Path(pattern=TAG_PATTERN, description=f"The user tag: {TAG_RULE}.")]


def _pair_indexes(session: Session, run: Run, sample_ids: list[str]) -> list[int]:
    wanted = sorted(set(sample_ids))
    found = dict(session.execute(select(Sample.sample_id, Sample.pair_index)
                                 .where(Sample.run_id == run.id, Sample.sample_id.in_(wanted))).all())
    missing = [sid for sid in wanted if sid not in found]
    if missing:
        shown = ", ".join(f"'{sid}'" for sid in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise HTTPException(404, f"run '{run.name}' has no sample(s) {shown}")
    return sorted(found.values())


def _count(session: Session, run: Run, tag: str) -> int:
    return session.scalar(select(func.count()).select_from(Tag).where(Tag.run_id == run.id, Tag.tag == tag))


@router.get("", response_model=list[TagCount], responses=NOT_FOUND)
def list_tags(run: RunDep, session: SessionDep) -> list[TagCount]:
    """Every user tag of the run with the number of pairs carrying it."""
    rows = session.execute(select(Tag.tag, func.count()).where(Tag.run_id == run.id)
                           .group_by(Tag.tag).order_by(Tag.tag)).all()
    return [TagCount(tag=tag, pairs=pairs) for tag, pairs in rows]


@router.post("/{tag}", response_model=TagResult,
             responses={**NOT_FOUND, **READ_ONLY_TOKEN,
                        400: {"model": ErrorMessage, "description": "The body cannot be decoded."}})
def add_tag(run: WriteRunDep, tag: TagName, change: TagChange, session: WriteSessionDep) -> TagResult:
    """Put the tag on the given pairs (pairs that already carry it are left as they are)."""
    pair_indexes = _pair_indexes(session, run, change.sample_ids)
    dialect = postgresql if session.bind.dialect.name == "postgresql" else sqlite
    now = datetime.now(timezone.utc)
    # `changed` is the rows this statement inserted: counting the tag before and after would also count
    # what concurrent requests committed in between (PostgreSQL reads each statement's own snapshot)
    inserted = session.execute(dialect.insert(Tag).on_conflict_do_nothing().returning(Tag.pair_index),
                               [{"run_id": run.id, "pair_index": p, "tag": tag, "created_at": now}
                                for p in pair_indexes]).all()
    pairs = _count(session, run, tag)
    session.commit()
    return TagResult(tag=tag, changed=len(inserted), pairs=pairs)


@router.delete("/{tag}", response_model=TagResult, responses={**NOT_FOUND, **READ_ONLY_TOKEN})
def remove_tag(run: WriteRunDep, tag: TagName, session: WriteSessionDep,
               sample_id: Annotated[list[SampleIdText],
                                    Query(max_length=MAX_TAG_BATCH,
                                          description="Remove the tag from these pairs (repeat the parameter); "
                                                      "without any, remove it from every pair of the run.")] = []
               ) -> TagResult:
    """Take the tag off the given pairs, or off every pair of the run."""
    statement = delete(Tag).where(Tag.run_id == run.id, Tag.tag == tag)
    if sample_id:
        statement = statement.where(Tag.pair_index.in_(_pair_indexes(session, run, sample_id)))
    removed = session.execute(statement.returning(Tag.pair_index)).all()  # as for add_tag: this request's rows
    pairs = _count(session, run, tag)
    session.commit()
    return TagResult(tag=tag, changed=len(removed), pairs=pairs)

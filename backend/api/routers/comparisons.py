"""Comparison of two runs on the scored pairs they share (same sample id)."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import and_, select
from sqlalchemy.orm import aliased

from clipmem.backend.api.deps import SessionDep, load_run
from clipmem.backend.api.errors import NOT_FOUND
from clipmem.backend.api.limits import MAX_COMPARE_K
from clipmem.backend.api.query import ScoreName, require_scores
from clipmem.backend.api.schemas import ComparedTag, Comparison
from clipmem.backend.ingest import RUN_NAME
from clipmem.backend.models import Sample, Score

router = APIRouter(prefix="/comparisons", tags=["comparisons"])

FETCH_ROWS = 65_536


class ComparisonQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_a: str = Field(pattern=RUN_NAME.pattern, description="First run's name.")
    run_b: str = Field(pattern=RUN_NAME.pattern, description="Second run's name.")
    score: ScoreName = Field("clipmem", description="Score to compare.")
    k: int = Field(100, ge=1, le=MAX_COMPARE_K, description="Size of the top-k lists whose overlap is reported.")


def top(values: np.ndarray, k: int) -> set[int]:
    order = np.lexsort((np.arange(len(values)), -values))
    return set(order[:k].tolist())


@router.get("", response_model=Comparison, responses=NOT_FOUND)
def compare(query: Annotated[ComparisonQuery, Query()], session: SessionDep) -> Comparison:
    """Per-tag means, rank correlation and top-k overlap of a score between two runs, over the pairs scored in
    both; plus each run's utility."""
    run_a, run_b = load_run(session, query.run_a), load_run(session, query.run_b)
    for run in (run_a, run_b):
        require_scores(run, {query.score})
    score_a, score_b = aliased(Score), aliased(Score)
    sample_a, sample_b = aliased(Sample), aliased(Sample)
    statement = (
        select(getattr(score_a, query.score), getattr(score_b, query.score), score_a.truth)
        .select_from(score_a)
        .join(sample_a, and_(sample_a.run_id == score_a.run_id, sample_a.pair_index == score_a.pair_index))
        .join(sample_b, and_(sample_b.run_id == run_b.id, sample_b.sample_id == sample_a.sample_id))
        .join(score_b, and_(score_b.run_id == sample_b.run_id, score_b.pair_index == sample_b.pair_index))
        .where(score_a.run_id == run_a.id)
        .execution_options(yield_per=FETCH_ROWS))
    a_parts, b_parts, truth_parts = [], [], []
    for chunk in session.execute(statement).partitions():
        a, b, truth = zip(*chunk)
        a_parts.append(np.array(a, dtype=np.float64))
        b_parts.append(np.array(b, dtype=np.float64))
        truth_parts.append(np.array(truth, dtype=object))
    a = np.concatenate(a_parts) if a_parts else np.empty(0)
    b = np.concatenate(b_parts) if b_parts else np.empty(0)
    truth = np.concatenate(truth_parts) if truth_parts else np.empty(0, dtype=object)
    n = len(a)
    k = min(query.k, n)
    spearman = None
    if n >= 2 and np.ptp(a) > 0 and np.ptp(b) > 0:
        from scipy.stats import spearmanr

        spearman = float(spearmanr(a, b).statistic)
    overlap = len(top(a, k) & top(b, k)) if k else 0
    by_truth = [ComparedTag(truth=str(tag), pairs=int((truth == tag).sum()), mean_a=float(a[truth == tag].mean()),
                            mean_b=float(b[truth == tag].mean()))
                for tag in sorted(set(truth.tolist()))]
    return Comparison(run_a=run_a.name, run_b=run_b.name, score=query.score, shared_pairs=n,
                      mean_a=float(a.mean()) if n else None, mean_b=float(b.mean()) if n else None,
                      spearman=spearman, k=k, top_k_overlap=overlap, top_k_fraction=overlap / k if k else None,
                      by_truth=by_truth, utility={run_a.name: run_a.utility, run_b.name: run_b.utility})

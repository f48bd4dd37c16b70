"""Why a run's pairs are memorized, against what they truly are: counts of `reason` by truth tag."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query, Request

from clipmem.backend.api.deps import RunDep, SessionDep, score_frame
from clipmem.backend.api.errors import NOT_FOUND
from clipmem.backend.api.query import has_reasons, require_scores
from clipmem.backend.api.schemas import ReasonCount, ReasonTable
from clipmem.scoring.columns import MEMORIZED, REASON_LABELS, REASONS

router = APIRouter(prefix="/runs/{run}/reasons", tags=["reasons"])


@router.get("", response_model=ReasonTable, responses=NOT_FOUND)
def reasons(run: RunDep, session: SessionDep, request: Request,
            memorized_only: Annotated[bool, Query(description="Count only the pairs flagged memorized (clipmem_q <= "
                                                              "the run's FDR); runs scored without significance "
                                                              "have no flags (422).")] = False) -> ReasonTable:
    """The confusion table of the run's scored pairs: how many have each reason (docs/why.md) and each truth tag,
    every combination listed (zeros included). A run whose data has no faulty pairs has one truth tag, clean.
    Runs scored before reasons answer with `available` false and no counts."""
    if memorized_only:
        require_scores(run, {MEMORIZED})
    frame = score_frame(request, session, run)
    truths = sorted(frame.truth_values)
    available = has_reasons(run) and frame.reason_code is not None
    if not available:
        return ReasonTable(run=run.name, available=False, memorized_only=memorized_only, pairs=0,
                           reasons=list(REASONS), labels=REASON_LABELS, truths=truths, counts=[])
    mask = frame.flags[MEMORIZED] if memorized_only else np.ones(frame.size, dtype=bool)
    # codes in the snapshot's dictionaries, mapped to positions in REASONS and in the sorted truth tags
    reason_at = np.array([REASONS.index(v) for v in frame.reason_values], dtype=np.int64)[frame.reason_code[mask]]
    truth_at = np.array([truths.index(v) for v in frame.truth_values], dtype=np.int64)[frame.truth_code[mask]]
    table = np.bincount(reason_at * len(truths) + truth_at,
                        minlength=len(REASONS) * len(truths)).reshape(len(REASONS), len(truths))
    return ReasonTable(run=run.name, available=True, memorized_only=memorized_only, pairs=int(mask.sum()),
                       reasons=list(REASONS), labels=REASON_LABELS, truths=truths,
                       counts=[ReasonCount(reason=reason, truth=truth, pairs=int(table[i, j]))
                               for i, reason in enumerate(REASONS) for j, truth in enumerate(truths)])

"""Histogram of any score over the pairs matching a filter, binned on the server."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query, Request
from pydantic import Field

from clipmem.backend.api.deps import RunDep, SessionDep, score_frame
from clipmem.backend.api.errors import NOT_FOUND, bad_parameter
from clipmem.backend.api.limits import MAX_BINS
from clipmem.backend.api.query import SampleFilter, ScoreName, frame_mask, require_scores
from clipmem.backend.api.routers.samples import tagged_pairs
from clipmem.backend.api.schemas import Histogram

router = APIRouter(prefix="/runs/{run}/histogram", tags=["histograms"])


class HistogramQuery(SampleFilter):
    score: ScoreName = Field("clipmem", description="Score to bin.")
    bins: int = Field(40, ge=1, le=MAX_BINS, description="Number of equal-width bins.")
    by_truth: bool = Field(False, description="Also count each truth tag separately.")
    lo: float | None = Field(None, allow_inf_nan=False, description="Left edge of the first bin (default: the "
                                                                    "score's minimum over the whole run).")
    hi: float | None = Field(None, allow_inf_nan=False, description="Right edge of the last bin (default: the "
                                                                    "score's maximum over the whole run).")


@router.get("", response_model=Histogram, responses=NOT_FOUND)
def histogram(run: RunDep, query: Annotated[HistogramQuery, Query()], session: SessionDep,
              request: Request) -> Histogram:
    """Counts of matching pairs in equal-width bins of a score; bin i holds lo + i*w <= value < lo + (i+1)*w,
    and the last bin also holds hi. Without lo and hi the bins span the whole run, so they stay put as the
    filter changes."""
    require_scores(run, query.scores_used() | {query.score})
    frame = score_frame(request, session, run)
    everything = frame.scores[query.score]
    lo = float(everything.min()) if query.lo is None else query.lo
    hi = float(everything.max()) if query.hi is None else query.hi
    if hi <= lo:
        if query.lo is not None or query.hi is not None:
            raise bad_parameter(("query", "hi"), f"hi ({hi}) must be greater than lo ({lo})")
        hi = lo + 1.0  # every pair has the same value: one unit-wide range around it
    width = (hi - lo) / query.bins
    if not np.isfinite(width) or width <= 0:
        raise bad_parameter(("query", "hi"), f"lo ({lo}) and hi ({hi}) do not give finite bins")
    tagged = tagged_pairs(session, run, query.tag) if query.tag else None
    mask = frame_mask(frame, query, tagged)
    values = everything[mask]
    inside = (values >= lo) & (values <= hi)
    bin_of = np.minimum(((values[inside] - lo) / width).astype(np.int64), query.bins - 1)
    counts = np.bincount(bin_of, minlength=query.bins)
    by_truth = None
    if query.by_truth:
        codes = frame.truth_code[mask][inside].astype(np.int64)
        n_tags = len(frame.truth_values)
        per_tag = np.bincount(codes * query.bins + bin_of, minlength=n_tags * query.bins).reshape(n_tags, query.bins)
        by_truth = {tag: per_tag[i].tolist() for i, tag in enumerate(frame.truth_values)}
    edges = (lo + width * np.arange(query.bins + 1)).tolist()
    edges[-1] = hi
    return Histogram(run=run.name, score=query.score, lo=lo, hi=hi, edges=edges, counts=counts.tolist(),
                     by_truth=by_truth, matched=int(mask.sum()), outside=int((~inside).sum()))

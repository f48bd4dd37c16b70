"""A run's measured null: the raw CLIPMem of S_E pairs, which neither model trained on, per direction."""

from __future__ import annotations

import pandas as pd
from fastapi import APIRouter, HTTPException

from clipmem.backend.api.deps import RunDep
from clipmem.backend.api.errors import NOT_FOUND
from clipmem.backend.api.schemas import NullDistribution, NullKey
from clipmem.scoring.significance import null_summary

router = APIRouter(prefix="/runs/{run}/null", tags=["null"])


@router.get("", response_model=NullDistribution, responses=NOT_FOUND)
def null_distribution(run: RunDep) -> NullDistribution:
    """The null every scored pair's p-value is taken against (null.parquet): per key, the clipmem_raw of the S_E
    pairs in that direction with its mean and standard deviation. 404 when the run was scored without one."""
    if run.null_scores is None:
        raise HTTPException(404, f"run '{run.name}' has no null: it was scored without significance (an older "
                                 "clipmem, or a run without S_E pairs), so its directory has no null.parquet")
    frame = pd.DataFrame({"null_for": [key for key, values in run.null_scores.items() for _ in values],
                          "clipmem_raw": [v for values in run.null_scores.values() for v in values]})
    stats = null_summary(frame)
    significance = run.run_metrics.get("significance")
    tail = significance.get("tail") if isinstance(significance, dict) else None
    return NullDistribution(
        run=run.name, fdr=(run.summary.get("significance") or {}).get("fdr"),
        null_pairs=max(len(values) for values in run.null_scores.values()),
        tail_method=tail if isinstance(tail, str) else None,
        by_key={key: NullKey(pairs=stats[key]["pairs"], mean=stats[key]["mean"], sd=stats[key]["sd"], values=values)
                for key, values in run.null_scores.items()})

"""How well each score finds faulty and swapped pairs, against the run's truth tags."""

from __future__ import annotations

from fastapi import APIRouter

from clipmem.backend.api.deps import RunDep
from clipmem.backend.api.errors import NOT_FOUND
from clipmem.backend.api.schemas import Detection

router = APIRouter(prefix="/runs/{run}/detection", tags=["detection"])


@router.get("", response_model=Detection, responses=NOT_FOUND)
def detection(run: RunDep) -> Detection:
    """AUROC, average precision and precision@k (k = number of positives) of every score where higher means
    more suspicious, for faulty-vs-clean and swapped-vs-rest. Computed at ingest."""
    found = run.summary["detection"]
    return Detection(run=run.name, faulty=found["faulty"], swapped=found["swapped"])

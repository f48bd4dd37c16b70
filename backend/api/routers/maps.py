"""The 2-D maps of f's and g's embeddings made at ingest, with each point's score and truth tag."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import and_, select

from clipmem.backend.api.deps import RunDep, SessionDep
from clipmem.backend.api.errors import NOT_FOUND
from clipmem.backend.api.limits import DEFAULT_MAP_POINTS, MAX_MAP_POINTS
from clipmem.backend.api.query import ScoreName, require_scores
from clipmem.backend.api.schemas import MapPoints
from clipmem.backend.models import EmbeddingPoint, Sample, Score

router = APIRouter(prefix="/runs/{run}/maps", tags=["maps"])


class MapQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    modality: Literal["image", "text"] = Field("image", description="Map of the image or of the caption "
                                                                    "embeddings (both share one plane per model).")
    score: ScoreName = Field("clipmem", description="Score reported for each point.")
    max_points: int = Field(DEFAULT_MAP_POINTS, ge=1, le=MAX_MAP_POINTS,
                            description="At most this many points: a fixed uniform random sample of the run's "
                                        "pairs, the same for every request.")


@router.get("", response_model=MapPoints, responses=NOT_FOUND)
def embedding_map(run: RunDep, query: Annotated[MapQuery, Query()], session: SessionDep) -> MapPoints:
    """Positions of the run's embedded pairs on f's and on g's map, downsampled to max_points."""
    require_scores(run, {query.score})
    p = EmbeddingPoint
    axes = {"image": (p.f_image_x, p.f_image_y, p.g_image_x, p.g_image_y),
            "text": (p.f_text_x, p.f_text_y, p.g_text_x, p.g_text_y)}[query.modality]
    rows = session.execute(
        select(Sample.sample_id, Sample.split, Sample.truth, getattr(Score, query.score), *axes)
        .select_from(p)
        .join(Sample, and_(Sample.run_id == p.run_id, Sample.pair_index == p.pair_index))
        .outerjoin(Score, and_(Score.run_id == p.run_id, Score.pair_index == p.pair_index))
        .where(p.run_id == run.id, p.map_rank < query.max_points)
        .order_by(p.map_rank)).all()
    columns = list(zip(*rows)) if rows else [[]] * 8
    return MapPoints(run=run.name, method=run.map_method, modality=query.modality, score=query.score,
                     total_points=run.n_embedded, sample_id=columns[0], split=columns[1], truth=columns[2],
                     score_value=columns[3], f_x=columns[4], f_y=columns[5], g_x=columns[6], g_y=columns[7])

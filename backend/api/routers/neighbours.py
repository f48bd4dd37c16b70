"""Nearest neighbours of a sample under f and under g: captions near its image, images near its caption."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request
from sqlalchemy import select

from clipmem.backend.api.deps import RunDep, SampleIdPath, SessionDep, embedding_set, load_sample
from clipmem.backend.api.errors import NOT_FOUND
from clipmem.backend.api.limits import MAX_NEIGHBOURS
from clipmem.backend.api.schemas import Neighbour, NeighbourLists, Neighbours
from clipmem.backend.models import EmbeddingPoint, Sample, Score

router = APIRouter(prefix="/runs/{run}/neighbours", tags=["neighbours"])


def top_k(similarity: np.ndarray, k: int) -> np.ndarray:
    """Rows of the k largest similarities, largest first (ties by row)."""
    k = min(k, len(similarity))
    # a value partition and a comparison are several times faster than argpartition on a million rows
    threshold = np.partition(similarity, len(similarity) - k)[len(similarity) - k]
    rows = np.flatnonzero(similarity >= threshold)
    return rows[np.lexsort((rows, -similarity[rows]))][:k]


@router.get("/{sample_id:path}", response_model=Neighbours, responses=NOT_FOUND)
def neighbours(run: RunDep, sample_id: SampleIdPath, session: SessionDep, request: Request,
               k: Annotated[int, Query(ge=1, le=MAX_NEIGHBOURS, description="Neighbours per list.")] = 10
               ) -> Neighbours:
    """The k captions nearest the pair's image and the k images nearest its first caption, under each model.

    Searched among the run's embedded pairs (scored and S_E), in each literal model's own space.
    """
    sample = load_sample(session, run, sample_id)
    point = session.get(EmbeddingPoint, (run.id, sample.pair_index))
    if point is None:
        raise HTTPException(404, f"sample '{sample_id}' has no embeddings (only scored and S_E pairs have them)")
    embeddings = embedding_set(request, session, run)
    row = point.embedding_row
    found: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
    for model in ("f", "g"):
        image, text = embeddings.matrices[(model, "image")], embeddings.matrices[(model, "text")]
        caption_sims = text @ image[row]
        image_sims = image @ text[row]
        near_caption, near_image = top_k(caption_sims, k), top_k(image_sims, k)
        found[model] = (near_caption, caption_sims[near_caption], near_image, image_sims[near_image])
    wanted = {int(embeddings.pair_index[r]) for lists in found.values() for r in (*lists[0], *lists[2])}
    info = {p: (sid, split, truth, captions[0]) for p, sid, split, truth, captions in session.execute(
        select(Sample.pair_index, Sample.sample_id, Sample.split, Sample.truth, Sample.captions)
        .where(Sample.run_id == run.id, Sample.pair_index.in_(sorted(wanted))))}

    def listing(rows: np.ndarray, sims: np.ndarray) -> list[Neighbour]:
        out = []
        for r, sim in zip(rows.tolist(), sims.tolist()):
            sid, split, truth, caption = info[int(embeddings.pair_index[r])]
            out.append(Neighbour(sample_id=sid, caption=caption, split=split, truth=truth, similarity=sim,
                                 same_pair=r == row))
        return out

    lists = {model: NeighbourLists(captions_near_image=listing(v[0], v[1]), images_near_caption=listing(v[2], v[3]))
             for model, v in found.items()}
    seen_by = session.scalar(select(Score.seen_by).where(Score.run_id == run.id,
                                                         Score.pair_index == sample.pair_index))
    return Neighbours(run=run.name, sample_id=sample.sample_id, k=k, seen_by=seen_by, f=lists["f"], g=lists["g"])

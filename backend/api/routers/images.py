"""The image of a sample as a thumbnail, with caching headers.

Only the location recorded for that sample at ingest is read, resolved inside the run's
data root; nothing from the request becomes part of a path.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response

from clipmem.backend.api.deps import RunDep, SampleIdPath, SessionDep, load_sample
from clipmem.backend.api.errors import NOT_FOUND, ErrorMessage
from clipmem.backend.api.limits import DEFAULT_THUMBNAIL_PX, MAX_THUMBNAIL_PX, MIN_THUMBNAIL_PX
from clipmem.backend.images import DecodeBusy, ImageOutsideRoot, resolve_inside, thumbnail
from clipmem.backend.models import Thumbnail
from clipmem.scoring.images import ImageError

router = APIRouter(prefix="/runs/{run}/images", tags=["images"])

# revalidate every time: a replaced run serves new images under the same URL, and the ETag check is cheap
CACHE_CONTROL = "private, no-cache"


@router.get("/{sample_id:path}", response_class=Response,
            responses={200: {"content": {"image/png": {}, "image/jpeg": {}},
                             "description": "The thumbnail (PNG, or JPEG for JPEG sources)."},
                       304: {"description": "Not modified (If-None-Match matched the ETag)."},
                       403: {"model": ErrorMessage, "description": "The recorded image location leaves the data "
                                                                   "root."},
                       404: {"model": ErrorMessage, "description": "The run, the sample or its image does not "
                                                                   "exist, or the image cannot be decoded or is "
                                                                   "over CLIPMEM_MAX_IMAGE_PIXELS."},
                       503: {"model": ErrorMessage, "description": "Other large images are being decoded (their "
                                                                   "pixels in flight are bounded); retry after "
                                                                   "Retry-After seconds."}})
def sample_image(run: RunDep, sample_id: SampleIdPath, session: SessionDep, request: Request,
                 size: Annotated[int, Query(ge=MIN_THUMBNAIL_PX, le=MAX_THUMBNAIL_PX,
                                            description="Longest side of the thumbnail, in pixels.")]
                 = DEFAULT_THUMBNAIL_PX,
                 if_none_match: Annotated[str | None, Header(description="An ETag from an earlier response.")]
                 = None) -> Response:
    """The sample's image scaled to `size` pixels on its longest side."""
    sample = load_sample(session, run, sample_id)
    if sample.image_stored:
        stored = session.get(Thumbnail, (run.id, sample.pair_index))
        if stored is None:
            raise HTTPException(404, f"the stored image of sample '{sample_id}' is missing")
        source: bytes | Path = stored.data
        version = hashlib.sha1(stored.data).hexdigest()[:16]
    else:
        try:
            source = resolve_inside(Path(run.data_root), sample.image_ref)
        except ImageOutsideRoot:
            raise HTTPException(403, f"the recorded image location of sample '{sample_id}' leaves the run's data "
                                     "root; it is not served") from None
        if not source.is_file():
            raise HTTPException(404, f"the image file of sample '{sample_id}' ({sample.image_ref}) is missing")
        stat = source.stat()
        version = f"{stat.st_mtime_ns}-{stat.st_size}"
    etag = '"' + hashlib.sha1(f"{run.id}:{sample.pair_index}:{version}:{size}".encode()).hexdigest()[:24] + '"'
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    if if_none_match is not None and etag in [tag.strip() for tag in if_none_match.split(",")]:
        return Response(status_code=304, headers=headers)
    # decoding may wait for the pixel budget and take seconds: the database connection goes back first
    session.close()
    settings = request.app.state.settings
    try:
        data, media_type = thumbnail(source, size, max_pixels=settings.max_image_pixels,
                                     budget=request.app.state.pixel_budget)
    except DecodeBusy:
        raise HTTPException(503, "the server is decoding other large images; try again",
                            headers={"Retry-After": "5"}) from None
    except (ImageError, OSError) as exc:
        # ImageError says what is wrong without a path; an OSError here (the file vanished or became
        # unreadable since the check above) names the server's path, so only its kind is shown
        reason = exc if isinstance(exc, ImageError) else (exc.strerror or type(exc).__name__)
        raise HTTPException(404, f"the image of sample '{sample_id}' cannot be served: {reason}") from None
    return Response(content=data, media_type=media_type, headers=headers)

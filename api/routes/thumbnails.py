"""``GET /v1/jobs/{id}/thumbnail``: a job's output, source, mask or the source's edges, small,
for grids and the job page's comparisons."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, Response

from api.batches import owned_job
from api.deps import SessionDep, StorageDep, TeamDep
from api.errors import KEYED_ERRORS, errors_for
from api.thumbnails import THUMBNAIL_TYPE, cached_thumbnail, thumbnail_key
from shared.errors import InvalidRequest, NotFound
from shared.models import Job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=KEYED_ERRORS)

Of = Literal["output", "source", "mask", "edges"]
# Two sizes, not any: each size asked for is an object kept in storage.
SIZES = (256, 1024)
# Private: the answer needs a team's key, so no shared cache may keep it. The console asks
# with the attempt in the URL (?v=finished_at), so a cached thumbnail is never one stale
# attempt behind; an hour bounds what a revoked key's browser keeps.
CACHE_CONTROL = "private, max-age=3600"


@router.get(
    "/{job_id}/thumbnail",
    response_class=Response,
    responses={200: {"content": {THUMBNAIL_TYPE: {}}}, **errors_for(404, 422)},
)
def get_thumbnail(
    job_id: Annotated[uuid.UUID, Path(description="A job id from POST /v1/jobs or a listing.")],
    request: Request,
    team: TeamDep,
    session: SessionDep,
    storage: StorageDep,
    of: Annotated[
        Of,
        Query(
            description="output (once it succeeded), source, mask (inpaint), or edges: the "
            "source's canny edges (OpenCV's, as a ControlNet is given them)."
        ),
    ] = "output",
    size: Annotated[
        int, Query(description="Longest side in pixels: 256 for grids, 1024 to compare.")
    ] = 256,
    v: Annotated[
        str | None,
        Query(max_length=64, description="Any value (the job's finished_at): a cache key only."),
    ] = None,
) -> Response:
    """A webp at most ``size`` px on its long side, made once and kept in storage; answers 304
    to a matching If-None-Match."""
    if size not in SIZES:
        raise InvalidRequest("size", f"must be one of {', '.join(map(str, SIZES))}")
    job = owned_job(session, job_id, team)
    key, version = _object_of(job, of)
    thumb_key = thumbnail_key(team.id, key, version, size)
    etag = '"' + thumb_key.rsplit("/", 1)[-1].removesuffix(".webp") + '"'
    headers = {"Cache-Control": CACHE_CONTROL, "ETag": etag}
    session.close()  # the rest waits on storage (and Pillow), not on the database
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    data = cached_thumbnail(storage, thumb_key, key, size, edges=of == "edges")
    return Response(data, media_type=THUMBNAIL_TYPE, headers=headers)


def _object_of(job: Job, of: Of) -> tuple[str, str]:
    """The key of the image asked for and the version that wrote it."""
    if of in ("source", "edges"):
        return job.source_key, of  # content-addressed: the key is the version
    if of == "mask":
        if job.mask_key is None:
            raise NotFound(f"job {job.id} has no mask")
        return job.mask_key, "mask"
    if not job.outputs or job.finished_at is None:
        raise NotFound(f"job {job.id} has no output yet (status {job.status})")
    # The output key is reused by a rerender of the same job: the attempt's end tells
    # the two apart.
    return job.outputs[0]["key"], job.finished_at.isoformat()

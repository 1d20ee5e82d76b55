"""``/v1/files``: serve local-storage objects by signed URL, as S3 serves presigned ones.

The signature (HMAC with the farm's secret, with an expiry) is the authorization: like a
presigned S3 URL it can be handed to a browser or a download tool without the API key.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response

from api.deps import StorageDep
from api.errors import errors_for
from shared.errors import NotFound, StorageError
from shared.storage import LocalStorage

router = APIRouter(prefix="/v1/files", tags=["files"])


@router.get(
    "/{key:path}",
    response_class=Response,
    responses={200: {"content": {"image/*": {}}}, **errors_for(404, 422)},
)
def get_file(
    key: Annotated[str, Path(description="The object's key, as in the signed URL.")],
    expires: Annotated[int, Query(description="Unix time after which the link is refused.")],
    sig: Annotated[str, Query(description="HMAC of key and expires with the farm's secret.")],
    storage: StorageDep,
) -> Response:
    """An output (or source) by the signed URL a job answer gave (local storage only): no
    API key, the signature is the authorization; an expired or altered link is a 404."""
    if not isinstance(storage, LocalStorage) or not storage.verify(key, expires, sig):
        raise NotFound("no such file, or the link expired")
    try:
        data = storage.get(key)
    except StorageError as e:
        raise NotFound("no such file") from e
    content_type = str(storage.head(key).get("content_type", "application/octet-stream"))
    return Response(data, media_type=content_type)

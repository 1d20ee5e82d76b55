"""``/v1/files``: serve local-storage objects by signed URL, as S3 serves presigned ones.

The signature (HMAC with the farm's secret, with an expiry) is the authorization: like a
presigned S3 URL it can be handed to a browser or a download tool without the API key.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from api.deps import StorageDep
from shared.errors import NotFound, StorageError
from shared.storage import LocalStorage

router = APIRouter(prefix="/v1/files", tags=["files"])


@router.get("/{key:path}")
def get_file(key: str, expires: int, sig: str, storage: StorageDep) -> Response:
    if not isinstance(storage, LocalStorage) or not storage.verify(key, expires, sig):
        raise NotFound("no such file, or the link expired")
    try:
        data = storage.get(key)
    except StorageError as e:
        raise NotFound("no such file") from e
    content_type = str(storage.head(key).get("content_type", "application/octet-stream"))
    return Response(data, media_type=content_type)

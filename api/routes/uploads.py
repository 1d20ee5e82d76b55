"""``/v1/uploads``: send source images once, reference them by id from many jobs.

Two ways in: multipart ``POST /v1/uploads`` through the api (any storage), or, for big sets
on S3, ``POST /v1/uploads/presign`` → PUT straight to the bucket → ``POST
/v1/uploads/{id}/complete``, which checks the image before anything can use it.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, File, Path, UploadFile, status
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from api.deps import SessionDep, SettingsDep, StorageDep, TeamDep, release_connection
from api.errors import KEYED_ERRORS, errors_for
from api.sources import check_source, store_source
from shared.errors import InvalidRequest, NotFound
from shared.models import Upload, utcnow
from shared.schemas import UploadPresignCreate, UploadPresigned, UploadPublic, UploadsPublic
from shared.staging import discard_staged, find_staged, presign_staged_put
from shared.storage import LocalStorage, S3Storage

router = APIRouter(prefix="/v1/uploads", tags=["uploads"], responses=KEYED_ERRORS)
MULTIPART_PATH = "/v1/uploads"  # its bodies get the larger multipart limit (api/body_limit.py)
MAX_FILES = 100


MAX_FILENAME_CHARS = 255  # the uploads.filename column


def check_filename(name: str | None, field: str) -> str | None:
    """Refuse a filename the uploads table cannot hold, before any object is written."""
    if name is None:
        return None
    if len(name) > MAX_FILENAME_CHARS:
        raise InvalidRequest(field, f"is {len(name)} characters; at most {MAX_FILENAME_CHARS}")
    if "\x00" in name:  # PostgreSQL text cannot hold it
        raise InvalidRequest(field, "must not contain NUL (\\x00) characters")
    return name


# Sync, not async: the checks decode images and the writes wait on storage and the
# database; in the event loop they would stall every other request.
@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=UploadsPublic,
    responses=errors_for(400, 413, 422),
)
def create_uploads(
    files: Annotated[
        list[UploadFile],
        File(description=f"Source images (at most {MAX_FILES}), each a form part named files."),
    ],
    team: TeamDep,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
) -> UploadsPublic:
    """Store source images once (multipart, any storage); jobs and batches then name them
    by id. All are checked (size, format, pixel limit) before any is stored."""
    if len(files) > MAX_FILES:
        raise InvalidRequest("files", f"at most {MAX_FILES} files per request")
    uploads: list[Upload] = []
    # Check every file before storing any: one bad file refuses the whole request.
    checked = []
    for i, file in enumerate(files):
        field = f"files[{i}]"
        filename = check_filename(file.filename, f"{field}.filename")
        data = file.file.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise InvalidRequest(
                field, f"is larger than {settings.max_upload_bytes} bytes", status_code=413
            )
        checked.append((filename, check_source(data, field, settings)))
    release_connection(session)  # the writes below wait on storage, not on the database
    for filename, image in checked:
        upload = Upload(
            team_id=team.id,
            object_key=store_source(storage, team, image),
            filename=filename,
            content_type=image.content_type,
            width=image.width,
            height=image.height,
            size_bytes=len(image.data),
        )
        session.add(upload)
        uploads.append(upload)
    session.commit()
    return UploadsPublic(uploads=[upload_public(u) for u in uploads])


def upload_public(upload: Upload) -> UploadPublic:
    return UploadPublic(
        id=upload.id,
        filename=upload.filename,
        content_type=upload.content_type,
        width=upload.width,
        height=upload.height,
        size_bytes=upload.size_bytes,
    )


# --- presigned PUT ---------------------------------------------------------------------------


def _s3_only(storage: LocalStorage | S3Storage) -> S3Storage:
    if not isinstance(storage, S3Storage):
        raise InvalidRequest(
            "presign",
            "presigned uploads go straight to S3, and this farm stores objects in a local "
            "folder: send the files to POST /v1/uploads (multipart) instead",
            status_code=400,
        )
    return storage


@router.post(
    "/presign",
    status_code=status.HTTP_201_CREATED,
    response_model=UploadPresigned,
    responses=errors_for(400, 413, 422),
)
def presign_upload(
    body: UploadPresignCreate, team: TeamDep, settings: SettingsDep, storage: StorageDep
) -> UploadPresigned:
    """A URL to PUT one image straight to the bucket; then call ``/complete`` with the id."""
    s3 = _s3_only(storage)
    upload_id = uuid.uuid4()
    expires_in = settings.presign_expiry_seconds
    url = presign_staged_put(s3, team.id, upload_id, body.filename, expires_in)
    expires_at = utcnow() + timedelta(seconds=expires_in)
    return UploadPresigned(id=upload_id, url=url, expires_at=expires_at)


@router.post(
    "/{upload_id}/complete",
    status_code=status.HTTP_201_CREATED,
    response_model=UploadPublic,
    responses=errors_for(400, 404, 413, 422),
)
def complete_upload(
    upload_id: Annotated[uuid.UUID, Path(description="The id from POST /v1/uploads/presign.")],
    team: TeamDep,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
) -> UploadPublic:
    """Check the PUT image (size, format, pixel limit) and make it usable; idempotent."""
    existing = session.scalar(
        select(Upload).where(Upload.id == upload_id, Upload.team_id == team.id)
    )
    if existing is not None:
        # The URL stays valid after /complete: whatever it PUT since goes too.
        discard_staged(_s3_only(storage), team.id, upload_id)
        return upload_public(existing)
    s3 = _s3_only(storage)
    # 1. what was PUT (listing gives key and size without reading the object)
    staged = find_staged(s3, team.id, upload_id)
    if staged is None:
        raise NotFound(f"nothing was uploaded for {upload_id}: PUT the file to its URL first")
    try:
        # 2. size before reading, then the image checks, as for a multipart upload
        if staged.size > settings.max_upload_bytes:
            raise InvalidRequest(
                "file", f"is larger than {settings.max_upload_bytes} bytes", status_code=413
            )
        image = check_source(s3.get(staged.key), "file", settings)
    except InvalidRequest:
        # A refused object is removed: it must not linger where a job could point.
        s3.delete(staged.key)
        raise
    # 3. keep it content-addressed (a key the client cannot write), like multipart uploads
    upload = Upload(
        id=upload_id,
        team_id=team.id,
        object_key=store_source(s3, team, image),
        filename=staged.filename,
        content_type=image.content_type,
        width=image.width,
        height=image.height,
        size_bytes=len(image.data),
    )
    session.add(upload)
    try:
        session.commit()
    except IntegrityError:
        # A concurrent /complete for the same id won: answer with its row.
        session.rollback()
        existing = session.get(Upload, upload_id)
        if existing is None or existing.team_id != team.id:
            raise
        return upload_public(existing)
    s3.delete(staged.key)
    return upload_public(upload)

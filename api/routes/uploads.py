"""``/v1/uploads``: send source images once, reference them by id from many jobs."""

from __future__ import annotations

from fastapi import APIRouter, UploadFile, status

from api.deps import SessionDep, SettingsDep, StorageDep, TeamDep
from api.sources import store_source
from shared.errors import InvalidRequest
from shared.images import check_image
from shared.models import Upload
from shared.schemas import UploadPublic, UploadsPublic

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])
MAX_FILES = 100


@router.post("", status_code=status.HTTP_201_CREATED, response_model=UploadsPublic)
async def create_uploads(
    files: list[UploadFile],
    team: TeamDep,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
) -> UploadsPublic:
    if len(files) > MAX_FILES:
        raise InvalidRequest("files", f"at most {MAX_FILES} files per request")
    uploads: list[Upload] = []
    # Check every file before storing any: one bad file refuses the whole request.
    checked = []
    for i, file in enumerate(files):
        data = await file.read(settings.max_upload_bytes + 1)
        field = f"files[{i}]"
        if len(data) > settings.max_upload_bytes:
            raise InvalidRequest(
                field, f"is larger than {settings.max_upload_bytes} bytes", status_code=413
            )
        checked.append((file.filename, check_image(data, field, settings.max_image_pixels)))
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
    return UploadsPublic(
        uploads=[
            UploadPublic(
                id=u.id,
                filename=u.filename,
                content_type=u.content_type,
                width=u.width,
                height=u.height,
                size_bytes=u.size_bytes,
            )
            for u in uploads
        ]
    )

"""``/v1/adapters``: a team's brand style adapters (LoRA), registered by an admin key and
named by jobs and batches (``adapters: [{"name": "acme-summer", "scale": 0.8}]``).

Registering reads a safetensors file sent as multipart (``file``) or fetched from a public
URL (``url``: private addresses refused, as for sources), checks it (api/adapters.py) and
stores it content-addressed; listing needs any key of the team, deleting an admin key.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Path, Response, UploadFile, status
from sqlalchemy.exc import IntegrityError

from api import adapters as service
from api.deps import AdminTeamDep, SessionDep, SettingsDep, StorageDep, TeamDep, release_connection
from api.errors import KEYED_ERRORS, errors_for
from api.sources import fetch_url
from shared.errors import InvalidRequest
from shared.schemas import (
    ADAPTER_NAME_DESCRIPTION,
    ADAPTER_NAME_PATTERN,
    AdapterPublic,
    AdaptersPublic,
)

router = APIRouter(prefix="/v1/adapters", tags=["adapters"], responses=KEYED_ERRORS)
MULTIPART_PATH = "/v1/adapters"  # its bodies get the multipart limit (api/body_limit.py)
AdapterName = Annotated[
    str, Path(pattern=ADAPTER_NAME_PATTERN, description="The adapter's name (GET /v1/adapters).")
]


# Sync: the checks parse the file and the writes wait on storage and the database.
@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=AdapterPublic,
    responses=errors_for(400, 403, 413, 422),
)
def create_adapter(
    name: Annotated[str, Form(pattern=ADAPTER_NAME_PATTERN, description=ADAPTER_NAME_DESCRIPTION)],
    team: AdminTeamDep,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    file: Annotated[
        UploadFile | None, File(description="The LoRA weights: one .safetensors file.")
    ] = None,
    url: Annotated[
        str | None,
        Form(max_length=2048, description="Or: a public http(s) URL of the .safetensors file."),
    ] = None,
) -> AdapterPublic:
    """Register (or replace) the team's adapter ``name``: a LoRA safetensors file of at most
    ``max_adapter_bytes`` (default 200 MiB), sent as ``file`` or fetched from ``url``. Jobs
    accepted earlier keep rendering with the file they were accepted with."""
    limit = settings.max_adapter_bytes
    if (file is None) == (url is None):
        raise InvalidRequest("file", "send the safetensors file as file, or its url, not both")
    if file is not None:
        field, data = "file", file.file.read(limit + 1)
    else:
        assert url is not None
        release_connection(session)  # the fetch waits on the network, not the database
        field, data = "url", fetch_url(url, "url", settings, limit_bytes=limit)
    checked = service.check_adapter_file(data, field, limit)
    try:
        adapter = service.register_adapter(session, storage, team, name, checked)
        session.commit()
    except IntegrityError:  # registered at the same moment by another request: update it
        session.rollback()
        adapter = service.register_adapter(session, storage, team, name, checked)
        session.commit()
    return service.adapter_public(adapter)


@router.get("", response_model=AdaptersPublic)
def list_adapters(team: TeamDep, session: SessionDep) -> AdaptersPublic:
    """The team's adapters by name, each with the digest a job naming it now would pin."""
    return AdaptersPublic(
        adapters=[service.adapter_public(a) for a in service.list_adapters(session, team)]
    )


@router.delete(
    "/{adapter_name}", status_code=status.HTTP_204_NO_CONTENT, responses=errors_for(403, 404, 422)
)
def delete_adapter(adapter_name: AdapterName, team: AdminTeamDep, session: SessionDep) -> Response:
    """Remove the name: new jobs can no longer name it; queued jobs that did still render
    with the file they pinned."""
    service.delete_adapter(session, team, adapter_name)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)

"""``/v1/keys``: a team's admin creates, lists and revokes the team's API keys."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from api.deps import AdminTeamDep, SessionDep
from api.errors import KEYED_ERRORS, errors_for
from shared.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyPublic, ApiKeysPublic
from shared.teams import ApiKeyInfo, KeyScope, issue_api_key, list_api_keys, revoke_team_key

# Every route here needs an admin key of the team (a member key: 403 naming the scope).
router = APIRouter(prefix="/v1/keys", tags=["keys"], responses={**KEYED_ERRORS, **errors_for(403)})
KeyId = Annotated[uuid.UUID, Path(description="A key id from GET /v1/keys.")]


def key_public(key: ApiKeyInfo) -> ApiKeyPublic:
    return ApiKeyPublic(
        id=key.id,
        prefix=key.prefix,
        scope=key.scope.value,
        created_at=key.created_at,
        last_used_at=key.last_used_at,
        revoked_at=key.revoked_at,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ApiKeyCreated,
    responses=errors_for(413, 422),
)
def create_key(body: ApiKeyCreate, team: AdminTeamDep, session: SessionDep) -> ApiKeyCreated:
    """A new key for the team (scope ``member`` unless asked); the key is in this answer
    and never again."""
    key, info = issue_api_key(session, team, KeyScope(body.scope))
    session.commit()
    return ApiKeyCreated(**key_public(info).model_dump(), key=key)


@router.get("", response_model=ApiKeysPublic)
def list_keys(team: AdminTeamDep, session: SessionDep) -> ApiKeysPublic:
    """The team's keys, revoked ones included: prefix, scope, created, last used (to the
    minute), revoked; never the key."""
    return ApiKeysPublic(keys=[key_public(k) for k in list_api_keys(session, team.name)])


@router.delete("/{key_id}", status_code=status.HTTP_204_NO_CONTENT, responses=errors_for(404, 422))
def revoke_key(key_id: KeyId, team: AdminTeamDep, session: SessionDep) -> Response:
    """Revoke the key: it answers 401 from its next request on (this one's included, if it
    revokes itself). Revoking a revoked key changes nothing."""
    revoke_team_key(session, team, key_id)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)

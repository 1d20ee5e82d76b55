"""Dependencies as named aliases, so routes read as what they need."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.errors import Forbidden, Unauthorized
from api.fetch_slots import FetchSlots
from shared.logs import bind_log_context
from shared.models import Team
from shared.registry import ModelSpec
from shared.settings import Settings
from shared.storage import LocalStorage, S3Storage
from shared.teams import Caller, KeyScope, caller_for_key


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


# HTTP's safe methods: they read (a key's use, written by caller_for_key, commits itself).
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def get_session(request: Request) -> Iterator[Session]:
    session: Session = request.app.state.session_factory()
    try:
        yield session
        if request.method in READ_METHODS:
            # A read ends with COMMIT, not the close's ROLLBACK, which would cost the pooled
            # connection its prepared statements (shared/db.py session_scope). Other methods
            # commit what they mean to; an error (raised into here) still rolls back.
            session.commit()
    finally:
        session.close()


def get_storage(request: Request) -> LocalStorage | S3Storage:
    return request.app.state.storage  # type: ignore[no-any-return]


def get_fetch_slots(request: Request) -> FetchSlots:
    return request.app.state.fetch_slots  # type: ignore[no-any-return]


def release_connection(session: Session) -> None:
    """End the session's transaction, so its pooled connection goes back before the request
    waits on the network. A commit, not a rollback: it expires nothing (the session's
    ``expire_on_commit=False``), so the team stays loaded; the next query takes a
    connection again."""
    session.commit()


def get_registry(request: Request) -> dict[str, ModelSpec]:
    return request.app.state.registry  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
StorageDep = Annotated[LocalStorage | S3Storage, Depends(get_storage)]
RegistryDep = Annotated[dict[str, ModelSpec], Depends(get_registry)]
FetchSlotsDep = Annotated[FetchSlots, Depends(get_fetch_slots)]

_bearer = HTTPBearer(auto_error=False, description="A team API key from `imgfarm keys create`.")


def get_caller(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    # Looked up on every request, never cached: a revoked key is refused from the next one.
    caller = caller_for_key(session, credentials.credentials)
    if caller is None:
        raise Unauthorized("invalid or revoked API key")
    # Every later log line of this request names the team (see shared/logs.py).
    bind_log_context(team=caller.team.name)
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]


def get_team(caller: CallerDep) -> Team:
    """The team of any valid key (member or admin)."""
    return caller.team


def get_admin_team(caller: CallerDep) -> Team:
    """The team of an admin key; a member key is refused (403 naming the scope needed)."""
    if caller.scope != KeyScope.ADMIN:
        raise Forbidden(
            f"this needs an API key with scope '{KeyScope.ADMIN}'; this key's scope is "
            f"'{caller.scope}' (an admin of the team can create one: POST /v1/keys)"
        )
    return caller.team


TeamDep = Annotated[Team, Depends(get_team)]
# Managing the team's keys, webhooks and settings (a member key submits, reads and reviews).
AdminTeamDep = Annotated[Team, Depends(get_admin_team)]

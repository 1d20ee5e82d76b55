"""Teams and their API keys: issue, list, revoke, authenticate."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.errors import ImgfarmError, NotFound
from shared.keys import KEY_PREFIX, display_prefix, hash_api_key, new_api_key
from shared.models import ApiKey, Team, utcnow

# Shortest id or key prefix `revoke_api_key` accepts (after "imf_" for a key): "imf_" alone,
# or "a", would pick whichever key happens to be the only one, which is never what was meant.
MIN_SELECTOR_CHARS = 4
# How precisely ``last_used_at`` follows a key's use (see team_for_key).
USE_RESOLUTION = timedelta(minutes=1)
# The operator-set columns of ``teams`` (issue 17); None clears a limit (unlimited).
TEAM_LIMITS = (
    "weight",
    "max_queued",
    "max_batch",
    "rate_per_second",
    "monthly_images",
    "retention_days",
)
# Limits every team has (NOT NULL): a share of the queue, and how long results are kept.
REQUIRED_LIMITS = ("weight", "retention_days")


class KeyScope(StrEnum):
    """What a key may do: ``member`` submits, reads and reviews; ``admin`` also manages the
    team's keys, webhooks and settings."""

    ADMIN = "admin"
    MEMBER = "member"


class UnknownTeam(NotFound):
    """No team has that name."""


class ApiKeyNotFound(NotFound):
    """No API key matches the id or prefix given."""


class InvalidKeySelector(ImgfarmError):
    """The id or prefix given is too short to pick a key safely."""


class AmbiguousApiKey(ImgfarmError):
    """Several API keys match the prefix given; ``matches`` lists them."""

    def __init__(self, selector: str, matches: list[ApiKeyInfo]) -> None:
        super().__init__(
            f"{selector!r} matches {len(matches)} keys; give more characters, or the full id"
        )
        self.matches = matches


@dataclass(frozen=True)
class ApiKeyInfo:
    """What may be shown about a key: never the key or its hash."""

    id: uuid.UUID
    team: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None = None
    scope: KeyScope = KeyScope.ADMIN

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class Caller:
    """Who a request's key says it is: the team, and what that key may do."""

    team: Team
    key_id: uuid.UUID
    scope: KeyScope


@dataclass(frozen=True)
class Revocation:
    """The revoked key, and whether this call revoked it or it already was."""

    key: ApiKeyInfo
    already_revoked: bool


def ensure_team(session: Session, name: str) -> Team:
    """The team called ``name``, created if it does not exist yet."""
    team = session.scalar(select(Team).where(Team.name == name))
    if team is None:
        team = Team(name=name)
        session.add(team)
        session.flush()
    return team


def set_team_limits(session: Session, team_id: uuid.UUID, **fields: Any) -> Team:
    """Set some of a team's ``TEAM_LIMITS`` (None: unlimited); raises ``UnknownTeam``.

    Validation of the values belongs to the caller's interface (CLI options); this only
    refuses names that are not limits. Takes effect when the session commits.
    """
    unknown = sorted(set(fields) - set(TEAM_LIMITS))
    if unknown:
        raise TypeError(f"not team limits: {', '.join(unknown)}")
    required = sorted(name for name in REQUIRED_LIMITS if name in fields and fields[name] is None)
    if required:
        raise ValueError(f"{', '.join(required)} cannot be cleared, only changed")
    team = session.get(Team, team_id)
    if team is None:
        raise UnknownTeam(f"no team with id {team_id}")
    for name, value in fields.items():
        setattr(team, name, value)
    if "rate_per_second" in fields:
        # A new rate starts with a full bucket, not with tokens counted at the old rate.
        team.rate_tokens = None
        team.rate_checked_at = None
    session.flush()
    return team


def create_api_key(session: Session, team: Team, scope: KeyScope = KeyScope.ADMIN) -> str:
    """A new key for ``team``; the caller must show it now, it is never stored in clear."""
    return issue_api_key(session, team, scope)[0]


def issue_api_key(
    session: Session, team: Team, scope: KeyScope = KeyScope.MEMBER
) -> tuple[str, ApiKeyInfo]:
    """A new key for ``team`` and what may be shown about it; the key is shown once."""
    key = new_api_key()
    row = ApiKey(
        team_id=team.id,
        key_hash=hash_api_key(key),
        prefix=display_prefix(key),
        scope=KeyScope(scope).value,
    )
    session.add(row)
    session.flush()
    return key, _info(row, team.name)


def team_for_key(session: Session, key: str) -> Team | None:
    """The team owning an unrevoked ``key``, or None (see ``caller_for_key``)."""
    caller = caller_for_key(session, key)
    return None if caller is None else caller.team


def caller_for_key(session: Session, key: str) -> Caller | None:
    """The team and scope of an unrevoked ``key``, or None; records the key's use (committed).

    Read on every request, uncached: a revoked key is refused from the next request on.
    ``last_used_at`` is written at most once per ``USE_RESOLUTION`` per key, so a busy key
    costs one small UPDATE a minute, not one per request. Call it first in a request: it
    commits the session.
    """
    row = session.execute(
        select(Team, ApiKey.id, ApiKey.last_used_at, ApiKey.scope)
        .join(ApiKey, ApiKey.team_id == Team.id)
        .where(ApiKey.key_hash == hash_api_key(key), ApiKey.revoked_at.is_(None))
    ).first()
    if row is None:
        return None
    team, key_id, last_used, scope = row
    now = utcnow()
    if last_used is None or now - last_used >= USE_RESOLUTION:
        session.execute(
            update(ApiKey)
            .where(ApiKey.id == key_id)
            .values(last_used_at=now)
            .execution_options(synchronize_session=False)
        )
        session.commit()
    return Caller(team, key_id, KeyScope(scope))


def list_api_keys(session: Session, team: str | None = None) -> list[ApiKeyInfo]:
    """Every key (of ``team`` only, if given), by team then age; raises ``UnknownTeam``."""
    query = select(ApiKey, Team.name).join(Team, ApiKey.team_id == Team.id)
    if team is not None:
        if session.scalar(select(Team.id).where(Team.name == team)) is None:
            # A typo must not read as "this team has no keys".
            raise UnknownTeam(f"no team named {team!r}")
        query = query.where(Team.name == team)
    rows = session.execute(query.order_by(Team.name, ApiKey.created_at, ApiKey.id))
    return [_info(key, name) for key, name in rows]


def find_api_keys(session: Session, selector: str) -> list[ApiKeyInfo]:
    """Keys matching ``selector``: a full id, the start of an id, the start of a display
    prefix (``imf_…``), or a whole key (matched by its hash, never stored in clear)."""
    selector = selector.strip()
    if _is_uuid(selector):
        return [k for k in list_api_keys(session) if k.id == uuid.UUID(selector)]
    if selector.startswith(KEY_PREFIX) and len(selector) > len(display_prefix(selector)):
        # Longer than any display prefix: a whole key someone pasted (a leaked one, say).
        row = session.execute(
            select(ApiKey, Team.name)
            .join(Team, ApiKey.team_id == Team.id)
            .where(ApiKey.key_hash == hash_api_key(selector))
        ).first()
        return [] if row is None else [_info(*row)]
    significant = selector.removeprefix(KEY_PREFIX)
    if len(significant) < MIN_SELECTOR_CHARS:
        raise InvalidKeySelector(
            f"{selector!r} is too short: give the key id, or at least {MIN_SELECTOR_CHARS} "
            f"characters of it or of the key after {KEY_PREFIX!r}"
        )
    # Keys are few (a handful per team): matching in Python keeps one behaviour on
    # SQLite and PostgreSQL, which render a UUID as text differently.
    if selector.startswith(KEY_PREFIX):
        return [k for k in list_api_keys(session) if k.prefix.startswith(selector)]
    wanted = selector.lower()
    return [k for k in list_api_keys(session) if str(k.id).startswith(wanted)]


def revoke_team_key(session: Session, team: Team, key_id: uuid.UUID) -> Revocation:
    """Revoke ``team``'s key ``key_id`` (another team's reads as ``ApiKeyNotFound``);
    idempotent. Takes effect when the session commits."""
    owned = session.scalar(select(ApiKey.id).where(ApiKey.id == key_id, ApiKey.team_id == team.id))
    if owned is None:
        raise ApiKeyNotFound(f"no API key {key_id} in this team")
    return revoke_api_key(session, str(key_id))


def revoke_api_key(session: Session, selector: str) -> Revocation:
    """Revoke the one key ``selector`` names (see ``find_api_keys``); idempotent.

    Raises ``ApiKeyNotFound``, ``AmbiguousApiKey`` (listing the matches) or
    ``InvalidKeySelector``. Takes effect when the session commits.
    """
    matches = find_api_keys(session, selector)
    if not matches:
        raise ApiKeyNotFound(f"no API key matches {selector!r} (see `imgfarm keys list`)")
    if len(matches) > 1:
        raise AmbiguousApiKey(selector, matches)
    (key,) = matches
    now = utcnow()
    # Conditional: two operators revoking at once both succeed, and the first time stays.
    revoked = session.execute(
        update(ApiKey)
        .where(ApiKey.id == key.id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if revoked:
        return Revocation(replace(key, revoked_at=now), already_revoked=False)
    first = session.scalar(select(ApiKey.revoked_at).where(ApiKey.id == key.id))
    return Revocation(replace(key, revoked_at=first), already_revoked=True)


def _info(key: ApiKey, team: str) -> ApiKeyInfo:
    return ApiKeyInfo(
        key.id,
        team,
        key.prefix,
        key.created_at,
        key.revoked_at,
        key.last_used_at,
        KeyScope(key.scope),
    )


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True

"""``Idempotency-Key``: a POST retried with the same key answers as the first time and
creates nothing twice. Keys are per team.

How it stays race-safe: ``replay_of`` answers a key already used before any work (nothing
fetched twice); then, once the sources are fetched and checked (no transaction is open
while a request waits on a client's server), the key row is inserted *before* the rows it
promises, in one short transaction, under a unique constraint on (team_id, key). A
concurrent request with the same key blocks on that insert until the first commits (then
replays its answer) or rolls back (then does the work itself). The answer is written into
the row before the commit, so a committed key always carries its answer.

Keys expire ``ttl_seconds`` after they were first used (24 h by default, see
``shared/idempotency.py``); a request carrying an expired key is new. Its old row is
deleted and the new one inserted in the same savepoint, so the property above holds: a
concurrent request replacing the same row blocks on the DELETE until the first commits,
then deletes nothing and its INSERT meets the first's row, whose answer it replays.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.errors import InvalidRequest
from shared.idempotency import IDEMPOTENCY_TTL_SECONDS, expiry_cutoff
from shared.models import IdempotencyKey

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias=HEADER,
        min_length=1,
        max_length=255,
        description="Any unique string (a UUID is fine). Retrying with the same key and body "
        "returns the first answer and creates nothing; another body with it answers 409.",
    ),
]


@dataclass(frozen=True)
class Replay:
    """The stored first answer to a request carrying the same key and body."""

    status_code: int
    body: dict[str, Any]

    def response(self) -> JSONResponse:
        return JSONResponse(
            self.body, status_code=self.status_code, headers={REPLAYED_HEADER: "true"}
        )


def request_hash(scope: str, body: BaseModel) -> str:
    """SHA-256 of the route and the parsed body: key order and spacing do not matter."""
    canonical = json.dumps(
        {"scope": scope, "body": body.model_dump(mode="json")},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _find(session: Session, team_id: uuid.UUID, key: str) -> IdempotencyKey | None:
    return session.scalar(
        select(IdempotencyKey).where(IdempotencyKey.team_id == team_id, IdempotencyKey.key == key)
    )


def _replay(existing: IdempotencyKey, digest: str) -> Replay:
    if existing.request_hash != digest:
        raise InvalidRequest(
            HEADER,
            "this key was already used with a different request body; "
            "send a new key for a new request",
            status_code=409,
        )
    if existing.response is None or existing.status_code is None:
        # Only reachable if a transaction committed a key without its answer.
        raise InvalidRequest(
            HEADER, "a request with this key is still being processed; retry shortly", 409
        )
    return Replay(existing.status_code, existing.response)


def replay_of(
    session: Session,
    team_id: uuid.UUID,
    key: str | None,
    scope: str,
    body: BaseModel,
    ttl_seconds: float = IDEMPOTENCY_TTL_SECONDS,
) -> Replay | None:
    """The stored answer for ``key``, read before any work (a replay never fetches again),
    or None when the key is new or expired. 409 when it came with another body.

    Claims nothing: ``begin`` claims the key later, in the short transaction that also
    inserts the work, and replays then if a concurrent request claimed it meanwhile.
    """
    if key is None:
        return None
    if "\x00" in key:  # PostgreSQL text cannot hold it
        raise InvalidRequest(HEADER, "must not contain NUL (\\x00) characters")
    existing = _find(session, team_id, key)
    if existing is None or existing.created_at <= expiry_cutoff(ttl_seconds):
        return None
    return _replay(existing, request_hash(scope, body))


def begin(
    session: Session,
    team_id: uuid.UUID,
    key: str | None,
    scope: str,
    body: BaseModel,
    ttl_seconds: float = IDEMPOTENCY_TTL_SECONDS,
) -> IdempotencyKey | Replay | None:
    """Claim ``key`` for this request, or return the answer of the request that did.

    Returns None without a key, a ``Replay`` to send as is, or the claimed row: do the work,
    ``remember`` the answer, then commit (all in ``session``'s transaction). Raises a 409
    ``InvalidRequest`` when the key came with another body. A key first used
    ``ttl_seconds`` ago or more is claimed afresh, whatever body it came with then.
    """
    if key is None:
        return None
    if "\x00" in key:  # PostgreSQL text cannot hold it
        raise InvalidRequest(HEADER, "must not contain NUL (\\x00) characters")
    digest = request_hash(scope, body)
    existing = _find(session, team_id, key)
    expired: uuid.UUID | None = None
    if existing is not None and existing.created_at <= expiry_cutoff(ttl_seconds):
        expired, existing = existing.id, None
    if existing is None:
        row = IdempotencyKey(team_id=team_id, key=key, request_hash=digest)
        try:
            # A savepoint: on Postgres a failed INSERT would otherwise abort the transaction.
            with session.begin_nested():
                if expired is not None:
                    # By id: if a concurrent request replaced it first, this deletes nothing
                    # (after waiting for its commit) and the INSERT below conflicts: replay.
                    session.execute(delete(IdempotencyKey).where(IdempotencyKey.id == expired))
                session.add(row)
        except IntegrityError:
            # Another request claimed the key and has committed by now (the INSERT waited).
            existing = _find(session, team_id, key)
            if existing is None:
                raise InvalidRequest(
                    HEADER, "a request with this key is still being processed; retry shortly", 409
                ) from None
        else:
            return row
    return _replay(existing, digest)


def remember(claim: IdempotencyKey | Replay | None, status_code: int, body: BaseModel) -> None:
    """Store the answer with the claimed key (before the commit that makes both visible)."""
    if isinstance(claim, IdempotencyKey):
        claim.status_code = status_code
        claim.response = body.model_dump(mode="json")

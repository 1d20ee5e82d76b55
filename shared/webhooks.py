"""Webhook signing (Standard Webhooks v1), secrets and rotation, the retry policy, and the
durable delivery schedule in the ``webhook_deliveries`` table.

The life of a delivery row (see worker/webhooks.py for the process around it)::

    pending ──(scheduler: due, FOR UPDATE SKIP LOCKED)──▶ handed to the Celery queue (token)
       ▲                                                       │ task claims (new token, lease)
       │ retry at next_attempt_at                              ▼ one HTTP attempt
       └──── 429 / 5xx / timeout / connection error ◀──── record: delivered | failed | dead

Every step is a conditional UPDATE on (status, token), so a message delivered twice, or a
stale one re-sent after a lost Redis, never sends an attempt twice.
"""

from __future__ import annotations

import base64
import random
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Literal

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session
from standardwebhooks import Webhook

from shared.models import (
    TeamWebhookSecret,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    utcnow,
)

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
# Jitter on each retry delay (+/- this fraction), so receivers that came back are not hit by
# every delivery at the same second.
JITTER = 0.1
# Retry-After is honoured up to this long (a receiver cannot park a delivery forever).
MAX_RETRY_AFTER_SECONDS = 24 * 3600.0
# Lease of a running attempt beyond the request timeout, after which a crashed attempt's
# delivery is picked again.
LEASE_MARGIN_SECONDS = 60.0
USER_AGENT = "imgfarm-webhooks/1"

Outcome = Literal["delivered", "retry", "failed", "disable"]


# --- secrets and signing --------------------------------------------------------------------


def new_secret() -> str:
    """A ``whsec_`` secret: 32 random bytes, base64, as Standard Webhooks libraries read it."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def active_secrets(
    secret: str, previous: str | None, previous_expires_at: datetime | None, now: datetime
) -> list[str]:
    """The secrets that sign now: the current one, and the previous one during its overlap."""
    if previous and previous_expires_at is not None and previous_expires_at > now:
        return [secret, previous]
    return [secret]


def sign(event_id: str, body: str, secrets_: list[str], now: datetime) -> dict[str, str]:
    """Standard Webhooks v1 headers: one ``v1,<sig>`` per active secret, space-separated."""
    # The signed timestamp is whole seconds, as the header says.
    at = datetime.fromtimestamp(int(now.timestamp()), UTC)
    signatures = " ".join(Webhook(s).sign(event_id, at, body) for s in secrets_)
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signatures,
    }


def rotate_secret(row: WebhookEndpoint | TeamWebhookSecret, overlap_seconds: int) -> str:
    """Give ``row`` a new secret; the old one keeps signing for ``overlap_seconds``."""
    now = utcnow()
    row.previous_secret = row.secret if overlap_seconds > 0 else None
    row.previous_secret_expires_at = now + timedelta(seconds=overlap_seconds)
    row.secret = new_secret()
    return row.secret


def team_secret(session: Session, team_id: uuid.UUID) -> TeamWebhookSecret:
    """The team's secret for job and batch ``webhook_url``s, created on first use.

    ``INSERT … ON CONFLICT DO NOTHING`` then read: two first uses at once agree on one.
    """
    row = session.get(TeamWebhookSecret, team_id)
    if row is not None:
        return row
    dialect = session.get_bind().dialect.name
    stmt = (pg_insert if dialect == "postgresql" else sqlite_insert)(TeamWebhookSecret)
    session.execute(
        stmt.values(
            team_id=team_id, secret=new_secret(), created_at=utcnow()
        ).on_conflict_do_nothing(index_elements=["team_id"])
    )
    row = session.get(TeamWebhookSecret, team_id)
    assert row is not None
    return row


# --- the retry policy -----------------------------------------------------------------------


def classify(status_code: int | None, blocked: bool = False) -> Outcome:
    """What an attempt's answer means. ``None``: no answer (timeout, connection error).

    2xx delivered; 410 Gone disables the endpoint; 408, 429 and 5xx (and no answer) are
    retried; anything else (3xx: redirects are not followed; other 4xx) fails for good.
    A connection refused by the SSRF guard is not retried either.
    """
    if blocked:
        return "failed"
    if status_code is None:
        return "retry"
    if 200 <= status_code < 300:
        return "delivered"
    if status_code == 410:
        return "disable"
    if status_code in (408, 429) or status_code >= 500:
        return "retry"
    return "failed"


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def retry_delay(
    attempts: int,
    schedule: list[float],
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds until the next attempt after ``attempts`` failed ones; None: dead-letter.

    ``schedule[i]`` is the wait before attempt i+1 (the first attempt is sent at once, so
    ``schedule[0]`` only counts it). A ``Retry-After`` longer than the schedule's wait is
    honoured.
    """
    if attempts >= len(schedule):
        return None
    delay = schedule[attempts] * (1 + (rng or random).uniform(-JITTER, JITTER))
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER_SECONDS))
    return delay


# --- the durable schedule -------------------------------------------------------------------


def _not_in_flight(now: datetime, redispatch_seconds: float) -> Any:
    """Pending rows nobody is working on: never handed over, handed over so long ago that
    the message was lost (a Redis restart), or whose running attempt's lease ran out."""
    lost = now - timedelta(seconds=redispatch_seconds)
    return or_(
        WebhookDelivery.token.is_(None),
        and_(WebhookDelivery.locked_until.is_(None), WebhookDelivery.dispatched_at < lost),
        WebhookDelivery.locked_until < now,
    )


def count_in_flight(session: Session, redispatch_seconds: float) -> int:
    """Deliveries handed to the queue or being attempted now (the queue's depth)."""
    now = utcnow()
    return (
        session.scalar(
            select(func.count())
            .select_from(WebhookDelivery)
            .where(
                WebhookDelivery.status == "pending",
                WebhookDelivery.token.is_not(None),
                ~_not_in_flight(now, redispatch_seconds),
            )
        )
        or 0
    )


def pick_due(session: Session, limit: int, redispatch_seconds: float) -> list[tuple[str, str]]:
    """Lock up to ``limit`` due deliveries (``SKIP LOCKED``: several schedulers never pick one
    row twice) and give each a fresh token; returns (delivery id, token) to send as tasks."""
    if limit <= 0:
        return []
    now = utcnow()
    ids = list(
        session.scalars(
            select(WebhookDelivery.id)
            .where(
                WebhookDelivery.status == "pending",
                WebhookDelivery.next_attempt_at <= now,
                _not_in_flight(now, redispatch_seconds),
            )
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    picked = []
    for delivery_id in ids:
        token = uuid.uuid4().hex
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id)
            .values(token=token, dispatched_at=now, locked_until=None)
            .execution_options(synchronize_session=False)
        )
        picked.append((str(delivery_id), token))
    return picked


@dataclass(frozen=True)
class Claimed:
    """One attempt this process owns: what to send, where, signed with what."""

    id: uuid.UUID
    token: str
    attempt: int
    event_id: str
    url: str
    body: str
    endpoint_id: uuid.UUID | None
    team_id: uuid.UUID
    secrets: list[str]


def claim(
    session: Session, delivery_id: uuid.UUID, token: str, lease_seconds: float
) -> Claimed | str:
    """Take the attempt the scheduler handed over as ``token``; returns it, or why not.

    A duplicate or stale message no longer matches the token and is skipped; a delivery
    whose endpoint was disabled or deleted meanwhile fails here.
    """
    now = utcnow()
    running = uuid.uuid4().hex
    won = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.status == "pending",
            WebhookDelivery.token == token,
        )
        .values(
            token=running,
            attempts=WebhookDelivery.attempts + 1,
            locked_until=now + timedelta(seconds=lease_seconds),
        )
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if won != 1:
        return "not pending, or handed to another task"
    row = session.execute(
        select(
            WebhookDelivery.attempts,
            WebhookDelivery.event_id,
            WebhookDelivery.url,
            WebhookDelivery.body,
            WebhookDelivery.endpoint_id,
            WebhookDelivery.team_id,
        ).where(WebhookDelivery.id == delivery_id)
    ).one()
    if row.endpoint_id is not None:
        endpoint = session.get(WebhookEndpoint, row.endpoint_id)
        if endpoint is None or endpoint.disabled_at is not None:
            _finish(
                session,
                delivery_id,
                running,
                status="failed",
                error="endpoint disabled",
                next_attempt_at=None,
            )
            return "endpoint disabled"
        keys = active_secrets(
            endpoint.secret, endpoint.previous_secret, endpoint.previous_secret_expires_at, now
        )
    else:
        ts = team_secret(session, row.team_id)
        keys = active_secrets(ts.secret, ts.previous_secret, ts.previous_secret_expires_at, now)
    return Claimed(
        id=delivery_id,
        token=running,
        attempt=row.attempts,
        event_id=row.event_id,
        url=row.url,
        body=row.body,
        endpoint_id=row.endpoint_id,
        team_id=row.team_id,
        secrets=keys,
    )


def recheck(session: Session, claimed: Claimed) -> str | None:
    """Right before the request: why this claimed attempt must not be sent now, or None.

    Between ``claim`` and the request another thread may have disabled the endpoint (a 410
    answered to a sibling delivery fails every waiting one, in flight included) or an owner
    may have disabled or deleted it. Such an attempt is dropped, not sent; one whose
    endpoint went away is recorded as failed, as ``claim`` would have.
    """
    row = session.execute(
        select(WebhookDelivery.token, WebhookEndpoint.id, WebhookEndpoint.disabled_at)
        .outerjoin(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(WebhookDelivery.id == claimed.id)
    ).one_or_none()
    if row is None or row.token != claimed.token:
        return "failed or taken over while waiting to be sent"
    if claimed.endpoint_id is not None and (row.id is None or row.disabled_at is not None):
        _finish(
            session,
            claimed.id,
            claimed.token,
            status="failed",
            error="endpoint disabled",
            next_attempt_at=None,
        )
        return "endpoint disabled"
    return None


@dataclass(frozen=True)
class AttemptResult:
    """What one HTTP attempt gave: a status code, or an error without one."""

    started_at: datetime
    latency_ms: int
    status_code: int | None = None
    error: str | None = None
    retry_after: float | None = None
    blocked: bool = False


def record(session: Session, claimed: Claimed, result: AttemptResult, schedule: list[float]) -> str:
    """Log the attempt and move the delivery on; returns the outcome written."""
    outcome: str = classify(result.status_code, result.blocked)
    next_at: datetime | None = None
    status = {"delivered": "delivered", "failed": "failed", "disable": "failed"}.get(outcome)
    if outcome == "retry":
        delay = retry_delay(claimed.attempt, schedule, result.retry_after)
        if delay is None:
            outcome, status = "dead", "dead"
        else:
            status = "pending"
            next_at = utcnow() + timedelta(seconds=delay)
    assert status is not None
    error = result.error
    if outcome == "disable":
        error = f"410 Gone: {_disable(session, claimed, result.started_at)}"
    session.execute(
        insert(WebhookAttempt).values(
            id=uuid.uuid4(),
            delivery_id=claimed.id,
            attempt=claimed.attempt,
            started_at=result.started_at,
            status_code=result.status_code,
            latency_ms=result.latency_ms,
            error=error,
            outcome=outcome,
        )
    )
    _finish(
        session,
        claimed.id,
        claimed.token,
        status=status,
        error=error,
        next_attempt_at=next_at,
        status_code=result.status_code,
        latency_ms=result.latency_ms,
        attempted_at=result.started_at,
    )
    return outcome


def _finish(
    session: Session,
    delivery_id: uuid.UUID,
    token: str,
    *,
    status: str,
    error: str | None,
    next_attempt_at: datetime | None,
    status_code: int | None = None,
    latency_ms: int | None = None,
    attempted_at: datetime | None = None,
) -> None:
    values: dict[str, Any] = {
        "status": status,
        "next_attempt_at": next_attempt_at,
        "token": None,
        "dispatched_at": None,
        "locked_until": None,
        "last_error": error,
    }
    if attempted_at is not None:
        values.update(
            last_attempt_at=attempted_at, last_status_code=status_code, last_latency_ms=latency_ms
        )
    if status == "delivered":
        values["delivered_at"] = utcnow()
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.token == token)
        .values(**values)
        .execution_options(synchronize_session=False)
    )


def _disable(session: Session, claimed: Claimed, at: datetime) -> str:
    """410 Gone: the receiver asked us to stop. Disable the endpoint and fail what was
    still waiting for it; for a bare job/batch URL, fail what waits for that URL."""
    pending = (WebhookDelivery.status == "pending", WebhookDelivery.id != claimed.id)
    if claimed.endpoint_id is not None:
        session.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == claimed.endpoint_id, WebhookEndpoint.disabled_at.is_(None))
            .values(disabled_at=at, disabled_reason=f"answered 410 Gone at {at.isoformat()}")
            .execution_options(synchronize_session=False)
        )
        same = WebhookDelivery.endpoint_id == claimed.endpoint_id
        what = "endpoint disabled"
    else:
        same = and_(
            WebhookDelivery.team_id == claimed.team_id,
            WebhookDelivery.endpoint_id.is_(None),
            WebhookDelivery.url == claimed.url,
        )
        what = "URL answered 410 Gone"
    session.execute(
        update(WebhookDelivery)
        .where(same, *pending)
        .values(status="failed", last_error=what, next_attempt_at=None, token=None)
        .execution_options(synchronize_session=False)
    )
    return what


def redeliver(session: Session, delivery: WebhookDelivery) -> None:
    """Send a delivery again now, whatever became of it, with the same event id and body.

    A finished one (delivered, failed, dead) starts a fresh round of the retry schedule;
    a pending one waiting for its next attempt is simply made due now.
    """
    now = utcnow()
    if delivery.status == "pending":
        delivery.next_attempt_at = now
        return
    delivery.status = "pending"
    delivery.attempts = 0
    delivery.next_attempt_at = now
    delivery.token = None
    delivery.dispatched_at = None
    delivery.locked_until = None

"""Webhooks on the api side: checking receiver URLs, team endpoints and their secrets, the
delivery log and replays. Sending is the webhook worker's job (worker/webhooks.py)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.owned import owned_row
from api.pagination import newest_first_page
from api.sources import check_webhook_url
from shared.errors import InvalidRequest
from shared.models import (
    Team,
    TeamWebhookSecret,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    utcnow,
)
from shared.schemas import (
    WebhookAttemptPublic,
    WebhookDeliveryDetail,
    WebhookDeliveryPublic,
    WebhookEndpointCreate,
    WebhookEndpointPublic,
)
from shared.settings import Settings
from shared.webhooks import new_secret, redeliver, rotate_secret, team_secret

DELIVERY_STATUSES = ("pending", "delivered", "failed", "dead")


# --- endpoints ------------------------------------------------------------------------------


def create_endpoint(
    session: Session, team: Team, body: WebhookEndpointCreate, settings: Settings
) -> WebhookEndpoint:
    """Check the URL and add the endpoint with a fresh secret (the caller commits)."""
    endpoint = WebhookEndpoint(
        id=uuid.uuid4(),
        team_id=team.id,
        url=check_webhook_url(body.url, "url", settings),
        events=body.events,
        description=body.description,
        secret=new_secret(),
    )
    session.add(endpoint)
    session.flush()
    return endpoint


def list_endpoints(session: Session, team: Team) -> list[WebhookEndpoint]:
    return list(
        session.scalars(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.team_id == team.id)
            .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
        )
    )


def get_endpoint(session: Session, team: Team, endpoint_id: uuid.UUID) -> WebhookEndpoint:
    """The team's endpoint, or NotFound (another team's looks the same as none)."""
    return owned_row(session, WebhookEndpoint, endpoint_id, team, "webhook endpoint")


def endpoint_public(endpoint: WebhookEndpoint) -> WebhookEndpointPublic:
    return WebhookEndpointPublic(
        id=endpoint.id,
        url=endpoint.url,
        events=endpoint.events,
        description=endpoint.description,
        created_at=endpoint.created_at,
        disabled_at=endpoint.disabled_at,
        disabled_reason=endpoint.disabled_reason,
        previous_secret_expires_at=live_overlap(endpoint),
    )


def live_overlap(row: WebhookEndpoint | TeamWebhookSecret) -> datetime | None:
    """When the rotated-out secret stops signing, if it still does."""
    expires = row.previous_secret_expires_at
    return expires if row.previous_secret and expires and expires > utcnow() else None


def rotate(
    row: WebhookEndpoint | TeamWebhookSecret, overlap: int | None, settings: Settings
) -> str:
    """A new secret for ``row``; the old one signs too for the overlap (caller commits)."""
    return rotate_secret(
        row, settings.webhook_rotation_overlap_seconds if overlap is None else overlap
    )


def team_webhook_secret(session: Session, team: Team) -> TeamWebhookSecret:
    """The secret that signs job/batch ``webhook_url`` events, created on first ask."""
    return team_secret(session, team.id)


# --- deliveries -----------------------------------------------------------------------------


def list_deliveries(
    session: Session,
    team: Team,
    *,
    status: str | None,
    event_id: str | None,
    job_id: uuid.UUID | None,
    batch_id: uuid.UUID | None,
    endpoint_id: uuid.UUID | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[WebhookDelivery], str | None]:
    """The team's deliveries, newest first, filtered, one page after ``cursor``."""
    if status is not None and status not in DELIVERY_STATUSES:
        raise InvalidRequest("status", f"must be one of {', '.join(DELIVERY_STATUSES)}")
    if event_id is not None and "\x00" in event_id:  # PostgreSQL text cannot hold it
        raise InvalidRequest("event_id", "must not contain NUL (\\x00) characters")
    query = (
        select(WebhookDelivery)
        .where(WebhookDelivery.team_id == team.id)
        .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
        .limit(limit + 1)
    )
    filters: dict[str, Any] = {
        "status": status,
        "event_id": event_id,
        "job_id": job_id,
        "batch_id": batch_id,
        "endpoint_id": endpoint_id,
    }
    for name, value in filters.items():
        if value is not None:
            query = query.where(getattr(WebhookDelivery, name) == value)
    return newest_first_page(session, query, WebhookDelivery, cursor, limit)


def get_delivery(session: Session, team: Team, delivery_id: uuid.UUID) -> WebhookDelivery:
    return owned_row(session, WebhookDelivery, delivery_id, team, "webhook delivery")


def delivery_public(d: WebhookDelivery) -> WebhookDeliveryPublic:
    return WebhookDeliveryPublic(
        id=d.id,
        event_id=d.event_id,
        event_type=d.event_type,
        endpoint_id=d.endpoint_id,
        job_id=d.job_id,
        batch_id=d.batch_id,
        url=d.url,
        status=d.status,
        attempts=d.attempts,
        next_attempt_at=d.next_attempt_at if d.status == "pending" else None,
        last_attempt_at=d.last_attempt_at,
        last_status_code=d.last_status_code,
        last_latency_ms=d.last_latency_ms,
        last_error=d.last_error,
        created_at=d.created_at,
        delivered_at=d.delivered_at,
    )


def delivery_detail(session: Session, d: WebhookDelivery) -> WebhookDeliveryDetail:
    """A delivery with its payload and every attempt so far, oldest first."""
    attempts = session.scalars(
        select(WebhookAttempt)
        .where(WebhookAttempt.delivery_id == d.id)
        .order_by(WebhookAttempt.started_at, WebhookAttempt.attempt)
    )
    log = [
        WebhookAttemptPublic(
            attempt=a.attempt,
            started_at=a.started_at,
            status_code=a.status_code,
            latency_ms=a.latency_ms,
            error=a.error,
            outcome=a.outcome,
        )
        for a in attempts
    ]
    return WebhookDeliveryDetail(
        **delivery_public(d).model_dump(), payload=json.loads(d.body), attempt_log=log
    )


def redeliver_delivery(session: Session, team: Team, delivery_id: uuid.UUID) -> WebhookDelivery:
    """Queue the delivery again now, same event id and body (the caller commits)."""
    delivery = get_delivery(session, team, delivery_id)
    if delivery.endpoint_id is not None:
        endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
        if endpoint is not None and endpoint.disabled_at is not None:
            raise InvalidRequest(
                "endpoint_id",
                f"endpoint {endpoint.id} is disabled ({endpoint.disabled_reason}); "
                f"enable it with POST /v1/webhooks/{endpoint.id}/enable first",
                status_code=409,
            )
    redeliver(session, delivery)
    return delivery

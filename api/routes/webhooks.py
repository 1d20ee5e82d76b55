"""``/v1/webhooks``: team endpoints and secrets, the delivery log, replays.

See docs/webhooks.md for events, signatures (Standard Webhooks v1) and the retry schedule.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from api import webhooks as service
from api.deps import AdminTeamDep, SessionDep, SettingsDep, TeamDep
from api.errors import KEYED_ERRORS, errors_for
from shared.schemas import (
    WebhookDeliveriesPublic,
    WebhookDeliveryDetail,
    WebhookEndpointCreate,
    WebhookEndpointCreated,
    WebhookEndpointPublic,
    WebhookEndpointsPublic,
    WebhookRotate,
    WebhookSecretPublic,
)

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=KEYED_ERRORS)
EndpointId = Annotated[uuid.UUID, Path(description="An endpoint id from POST /v1/webhooks.")]
DeliveryId = Annotated[uuid.UUID, Path(description="A delivery id from the delivery log.")]
NOT_FOUND = errors_for(404, 422)
WITH_BODY = errors_for(413, 422)
# Endpoints and secrets are managed with an admin key; a member key reads the delivery log.
ADMIN = errors_for(403)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookEndpointCreated,
    responses={**WITH_BODY, **ADMIN},
)
def create_endpoint(
    body: WebhookEndpointCreate, team: AdminTeamDep, session: SessionDep, settings: SettingsDep
) -> WebhookEndpointCreated:
    """Register a receiver; its ``whsec_`` secret is in this answer and never again."""
    endpoint = service.create_endpoint(session, team, body, settings)
    session.commit()
    return WebhookEndpointCreated(
        **service.endpoint_public(endpoint).model_dump(), secret=endpoint.secret
    )


@router.get("", response_model=WebhookEndpointsPublic, responses=ADMIN)
def list_endpoints(team: AdminTeamDep, session: SessionDep) -> WebhookEndpointsPublic:
    """The team's endpoints (secrets are never shown again)."""
    return WebhookEndpointsPublic(
        endpoints=[service.endpoint_public(e) for e in service.list_endpoints(session, team)]
    )


# Declared before /{endpoint_id}: "secret" and "deliveries" are not endpoint ids.
@router.get("/secret", response_model=WebhookSecretPublic, responses=ADMIN)
def get_team_secret(team: AdminTeamDep, session: SessionDep) -> WebhookSecretPublic:
    """The secret signing events sent to jobs' and batches' own ``webhook_url``."""
    secret = service.team_webhook_secret(session, team)
    session.commit()
    return WebhookSecretPublic(
        secret=secret.secret, previous_secret_expires_at=service.live_overlap(secret)
    )


@router.post("/secret/rotate", response_model=WebhookSecretPublic, responses={**WITH_BODY, **ADMIN})
def rotate_team_secret(
    team: AdminTeamDep,
    session: SessionDep,
    settings: SettingsDep,
    body: WebhookRotate | None = None,
) -> WebhookSecretPublic:
    """A new team secret; the old one keeps signing (a second signature) for the overlap."""
    secret = service.team_webhook_secret(session, team)
    service.rotate(secret, body.overlap_seconds if body else None, settings)
    session.commit()
    return WebhookSecretPublic(
        secret=secret.secret, previous_secret_expires_at=service.live_overlap(secret)
    )


@router.get("/deliveries", response_model=WebhookDeliveriesPublic, responses=errors_for(422))
def list_deliveries(
    team: TeamDep,
    session: SessionDep,
    status: Annotated[str | None, Query(description="pending, delivered, failed or dead")] = None,
    event_id: Annotated[str | None, Query(description="Only this event (webhook-id).")] = None,
    job_id: Annotated[uuid.UUID | None, Query(description="Only this job's events.")] = None,
    batch_id: Annotated[uuid.UUID | None, Query(description="Only this batch's events.")] = None,
    endpoint_id: Annotated[uuid.UUID | None, Query(description="Only to this endpoint.")] = None,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Deliveries per page.")] = 100,
) -> WebhookDeliveriesPublic:
    """The team's deliveries, newest first: status code, latency, attempts, next attempt."""
    rows, next_cursor = service.list_deliveries(
        session,
        team,
        status=status,
        event_id=event_id,
        job_id=job_id,
        batch_id=batch_id,
        endpoint_id=endpoint_id,
        cursor=cursor,
        limit=limit,
    )
    return WebhookDeliveriesPublic(
        deliveries=[service.delivery_public(d) for d in rows], next_cursor=next_cursor
    )


@router.get("/deliveries/{delivery_id}", response_model=WebhookDeliveryDetail, responses=NOT_FOUND)
def get_delivery(
    delivery_id: DeliveryId, team: TeamDep, session: SessionDep
) -> WebhookDeliveryDetail:
    """One delivery with its payload and every attempt (status code, latency, error)."""
    return service.delivery_detail(session, service.get_delivery(session, team, delivery_id))


@router.post(
    "/deliveries/{delivery_id}/redeliver",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=WebhookDeliveryDetail,
    responses=errors_for(404, 409, 422),
)
def redeliver(delivery_id: DeliveryId, team: TeamDep, session: SessionDep) -> WebhookDeliveryDetail:
    """Send it again now with the same ``webhook-id`` (dead-lettered, failed or delivered)."""
    delivery = service.redeliver_delivery(session, team, delivery_id)
    session.commit()
    return service.delivery_detail(session, delivery)


@router.delete(
    "/{endpoint_id}", status_code=status.HTTP_204_NO_CONTENT, responses={**NOT_FOUND, **ADMIN}
)
def delete_endpoint(endpoint_id: EndpointId, team: AdminTeamDep, session: SessionDep) -> Response:
    """Remove the endpoint; its pending deliveries and delivery log go with it."""
    session.delete(service.get_endpoint(session, team, endpoint_id))
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{endpoint_id}/rotate",
    response_model=WebhookEndpointCreated,
    responses=errors_for(403, 404, 413, 422),
)
def rotate_endpoint_secret(
    endpoint_id: EndpointId,
    team: AdminTeamDep,
    session: SessionDep,
    settings: SettingsDep,
    body: WebhookRotate | None = None,
) -> WebhookEndpointCreated:
    """A new secret (shown once); the old one keeps signing for the overlap."""
    endpoint = service.get_endpoint(session, team, endpoint_id)
    service.rotate(endpoint, body.overlap_seconds if body else None, settings)
    session.commit()
    return WebhookEndpointCreated(
        **service.endpoint_public(endpoint).model_dump(), secret=endpoint.secret
    )


@router.post(
    "/{endpoint_id}/enable",
    response_model=WebhookEndpointPublic,
    responses={**NOT_FOUND, **ADMIN},
)
def enable_endpoint(
    endpoint_id: EndpointId, team: AdminTeamDep, session: SessionDep
) -> WebhookEndpointPublic:
    """Send to an endpoint disabled by a 410 Gone again (new events; replay old ones with
    redeliver)."""
    endpoint = service.get_endpoint(session, team, endpoint_id)
    endpoint.disabled_at = None
    endpoint.disabled_reason = None
    session.commit()
    return service.endpoint_public(endpoint)

"""Checking that a webhook request came from the farm (Standard Webhooks v1, as signed by
shared/webhooks.py; payloads in docs/webhooks.md)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ValidationError
from standardwebhooks import Webhook, WebhookVerificationError

__all__ = ["WebhookEvent", "WebhookVerificationError", "verify_webhook"]


class WebhookEvent(BaseModel):
    """One event: ``id`` is the same on every retry and replay of it (deduplicate on it)."""

    id: str
    type: str
    timestamp: datetime
    data: dict[str, Any]


def verify_webhook(secret: str, headers: Mapping[str, str], body: bytes | str) -> WebhookEvent:
    """The event of a webhook request, if it was signed with ``secret`` (the endpoint's,
    or the team's for a ``webhook_url``) less than 5 minutes ago.

    ``headers`` as any framework gives them (names in any case); ``body`` the raw bytes
    as received, not re-serialised JSON. Raises WebhookVerificationError for a missing,
    malformed, stale or forged signature, and for a body that is not an event.
    """
    webhook = Webhook(secret)
    try:
        payload = webhook.verify(body, dict(headers.items()))
    except WebhookVerificationError:
        raise
    except ValueError as e:
        # A malformed signature header (bad base64: binascii.Error) or body trips the
        # library before its own check.
        raise WebhookVerificationError(f"not a signed imgfarm webhook: {e}") from e
    try:
        return WebhookEvent.model_validate(payload)
    except ValidationError as e:
        raise WebhookVerificationError(f"signed, but not an imgfarm event: {e}") from e

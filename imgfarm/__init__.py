"""The ``imgfarm`` command (start services, manage keys, submit work and fetch results) and
a Python client for the api::

    from imgfarm import Client, verify_webhook

The client is imported on first use, so the command does not pay for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imgfarm.client import ApiError, Client, RetryPolicy
    from imgfarm.webhooks import WebhookEvent, WebhookVerificationError, verify_webhook

_EXPORTS = {
    "ApiError": "imgfarm.client",
    "Client": "imgfarm.client",
    "RetryPolicy": "imgfarm.client",
    "WebhookEvent": "imgfarm.webhooks",
    "WebhookVerificationError": "imgfarm.webhooks",
    "verify_webhook": "imgfarm.webhooks",
}
__all__ = [
    "ApiError",
    "Client",
    "RetryPolicy",
    "WebhookEvent",
    "WebhookVerificationError",
    "verify_webhook",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'imgfarm' has no attribute {name!r}")

"""When the client sends a request again: the api refused it for now (429 Too Many Requests,
503 Service Unavailable) or the connection failed. Never for any other answer: a 4xx says
the request itself is wrong, and sending it again cannot help.

POSTs that create work carry an ``Idempotency-Key`` that stays the same across these
retries, so a retry whose first answer was lost replays that answer instead of creating
the work twice (see imgfarm/transport.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    before_sleep_log,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential_jitter,
)

from shared.webhooks import parse_retry_after

log = logging.getLogger("imgfarm.client")

RETRY_STATUSES = frozenset({429, 503})
# No answer came: refused or cut connections, timeouts, a server that hung up mid-answer.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    httpx.NetworkError,
    httpx.TimeoutException,
    httpx.RemoteProtocolError,
)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long the client retries one call.

    A ``Retry-After`` header (seconds or an HTTP date) sets the wait; without one the wait
    starts at ``backoff_seconds`` and doubles (jittered) up to ``max_backoff_seconds``. The
    client gives up after ``attempts`` sends, or before a wait that would end past
    ``total_seconds`` since the first send, and raises the last error.
    """

    attempts: int = 5
    total_seconds: float = 60.0
    backoff_seconds: float = 0.5
    max_backoff_seconds: float = 8.0

    def call(self, send: Callable[[], httpx.Response]) -> httpx.Response:
        """``send()`` until it answers something other than 429/503 or the budget is spent;
        returns the last answer (the caller raises on its status) or raises the last error."""
        retrying = Retrying(
            retry=retry_if_exception_type(TRANSIENT_ERRORS) | retry_if_result(_refused),
            wait=_RetryAfterOr(
                wait_exponential_jitter(
                    initial=self.backoff_seconds,
                    max=self.max_backoff_seconds,
                    jitter=self.backoff_seconds,
                )
            ),
            stop=stop_after_attempt(self.attempts) | stop_before_delay(self.total_seconds),
            retry_error_callback=_last_outcome,
            before_sleep=before_sleep_log(log, logging.INFO),
        )
        return retrying(send)  # type: ignore[no-any-return]


NO_RETRIES = RetryPolicy(attempts=1)


def _refused(response: httpx.Response) -> bool:
    return response.status_code in RETRY_STATUSES


def _last_outcome(state: RetryCallState) -> httpx.Response:
    # Out of attempts or time: hand back the last 429/503 (or raise the last error).
    assert state.outcome is not None
    return state.outcome.result()  # type: ignore[no-any-return]


class _RetryAfterOr:
    """The server's ``Retry-After`` when it sent one, else ``fallback``'s backoff."""

    def __init__(self, fallback: Callable[[RetryCallState], float]) -> None:
        self.fallback = fallback

    def __call__(self, state: RetryCallState) -> float:
        outcome = state.outcome
        if outcome is not None and not outcome.failed:
            response: httpx.Response = outcome.result()
            asked = parse_retry_after(response.headers.get("retry-after"), datetime.now(UTC))
            if asked is not None:
                return asked
        return self.fallback(state)

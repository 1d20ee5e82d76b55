"""The retry policy, declared once: which errors are worth another attempt, and when."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, OperationalError

from shared.errors import InvalidRequest, PermanentRenderError, StorageError, TransientError

# Retried with backoff while attempts remain.
TRANSIENT: tuple[type[BaseException], ...] = (
    TransientError,
    OperationalError,
    ConnectionError,
    TimeoutError,
)
# Failed at once: trying again cannot help.
PERMANENT: tuple[type[BaseException], ...] = (PermanentRenderError, InvalidRequest, StorageError)

BACKOFF_BASE_SECONDS = 2.0
BACKOFF_MAX_SECONDS = 60.0


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, TRANSIENT)


def backoff_seconds(attempt: int) -> float:
    """Exponential: 2 s, 4 s, 8 s... capped at a minute."""
    return float(min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** max(0, attempt - 1)))

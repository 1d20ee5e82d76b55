"""The retry policy, declared once: which errors are worth another attempt, and when."""

from __future__ import annotations

import sys

from sqlalchemy.exc import DBAPIError, OperationalError
from tenacity import retry, retry_if_exception, stop_after_delay, wait_exponential

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


def is_out_of_memory(exc: BaseException) -> bool:
    """The accelerator (or the host) ran out of memory: a smaller batch may fit."""
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")  # not imported: no torch call can have raised this
    if torch is not None and isinstance(exc, torch.OutOfMemoryError):
        return True
    # cuBLAS, cuDNN and MPS allocation failures surface as plain RuntimeErrors.
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "CUBLAS_STATUS_ALLOC_FAILED" in text
    )


# Recording an outcome must survive a database restart: the render is already paid for.
# The decorated function is run again from the top: it must only read and write the
# database, and leave counting and logging to its caller (or they happen once per try).
db_retry = retry(
    retry=retry_if_exception(is_transient),
    wait=wait_exponential(multiplier=0.2, max=5),
    stop=stop_after_delay(60),
    reraise=True,
)

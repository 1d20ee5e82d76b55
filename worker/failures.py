"""What happens to a job whose render raised: another attempt or failed, and what its row says.

A person reads a job's ``error``: the farm's own errors (an undecodable source, a bad mask,
a size outside the model's limits, storage refusing) already say what went wrong in words,
so they are shown as they are. Anything else is a bug or a fault of the worker's machine,
whose text (``OverflowError: signed integer is greater than maximum``) helps nobody who
submitted a photo: the row names its class and says what to do, and the worker's log keeps
the traceback for the operators (``worker/tasks.py``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from shared.errors import ImgfarmError
from worker.retry import PERMANENT, backoff_seconds, is_transient


@dataclass(frozen=True)
class Failure:
    """The decision for one failed job, before anything is written."""

    error: str
    # Seconds until the next attempt; None fails the job now.
    retry_in: float | None = None
    # Neither the input's fault nor a known transient one: a bug, logged with its traceback,
    # and the render task reports it (RenderFailed).
    unexpected: bool = False


def decide_failure(
    exc: BaseException, attempts: int, max_attempts: int, batch_id: uuid.UUID | None
) -> Failure:
    """Permanent errors fail at once; transient ones come back with backoff while attempts
    remain; anything else fails, as a bug."""
    if not isinstance(exc, PERMANENT) and is_transient(exc):
        reason = _transient_reason(exc)
        if attempts < max_attempts:
            delay = backoff_seconds(attempts)
            return Failure(f"attempt {attempts}: {reason}; retrying in {delay:.0f}s", delay)
        return Failure(f"{reason} (gave up after {attempts} attempts); {_what_to_do(batch_id)}")
    if isinstance(exc, ImgfarmError):
        return Failure(str(exc))
    return Failure(
        f"the render failed because of an internal error ({type(exc).__name__}); "
        f"the farm's operators have the details; {_what_to_do(batch_id)}",
        unexpected=True,
    )


def _transient_reason(exc: BaseException) -> str:
    """The farm's own message, or only the class of anything else (its text is for the log)."""
    if isinstance(exc, ImgfarmError):
        return str(exc)
    return f"a temporary fault ({type(exc).__name__})"


def _what_to_do(batch_id: uuid.UUID | None) -> str:
    if batch_id is None:
        return "resubmit the job"
    return f"retry with POST /v1/batches/{batch_id}/retry or resubmit"

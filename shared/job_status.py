"""The values of ``jobs.status``. Only shared/jobs.py changes them (the state machine);
this module holds just the names, so the outbox (shared/events.py) can read them without
importing the writer that calls it."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


# Every state's name: the only values shared/models.py StatusName writes into SQL as literals.
STATE_NAMES = frozenset(s.value for s in JobStatus)
FINAL_STATES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})

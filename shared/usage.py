"""What each team uses: images and GPU-seconds per month and model, and its jobs now.

The worker adds to ``usage_monthly`` in the transaction that records the successes
(worker/tasks.py), so a month's count is exactly its succeeded jobs, and it survives the
pruning of old job rows. The api reads it for ``GET /v1/usage`` and the quotas
(api/quotas.py).
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import datetime
from functools import cache
from typing import Any, Protocol

from sqlalchemy import Insert, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from shared.job_status import JobStatus
from shared.models import Job, UsageMonthly, utcnow

# Jobs that count against a team's queue: not finished yet.
UNFINISHED = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


class Rendered(Protocol):
    """What ``add_usage`` needs of a recorded success (worker/render.py ``RenderResult``)."""

    @property
    def job_id(self) -> uuid.UUID: ...

    @property
    def team_id(self) -> uuid.UUID: ...

    @property
    def provenance(self) -> dict[str, Any]: ...


def month_of(moment: datetime | None = None) -> str:
    """The ``usage_monthly.month`` of ``moment`` (now by default): ``YYYY-MM`` in UTC."""
    return (moment or utcnow()).strftime("%Y-%m")


def gpu_seconds_of(provenance: dict[str, Any]) -> float:
    """One job's share of its pipeline call: the call's seconds over its batch size (padding
    included, so a padded slot is charged to no one)."""
    return float(provenance.get("render_seconds", 0.0)) / max(1, int(provenance["batch_size"]))


def add_usage(session: Session, results: Sequence[Rendered]) -> None:
    """Add ``results`` (jobs that just succeeded) to their teams' usage this month, one
    upsert per (team, model); the caller's transaction commits it with the successes."""
    if not results:
        return
    images: Counter[tuple[uuid.UUID, str]] = Counter()
    seconds: defaultdict[tuple[uuid.UUID, str], float] = defaultdict(float)
    for result in results:
        key = (result.team_id, str(result.provenance["model"]))
        images[key] += 1
        seconds[key] += gpu_seconds_of(result.provenance)
    month = month_of()
    rows = [
        {"team_id": t, "month": month, "model": m, "images": n, "gpu_seconds": seconds[t, m]}
        # Sorted: two workers upserting the same rows take their locks in one order.
        for (t, m), n in sorted(images.items(), key=lambda kv: (str(kv[0][0]), kv[0][1]))
    ]
    session.execute(_upsert(session.get_bind().dialect.name), rows)


@cache
def _upsert(dialect: str) -> Insert:
    """The usage upsert, built once per dialect (it runs for every rendered group)."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(UsageMonthly)
    return statement.on_conflict_do_update(
        index_elements=["team_id", "month", "model"],
        set_={
            "images": UsageMonthly.images + statement.excluded.images,
            "gpu_seconds": UsageMonthly.gpu_seconds + statement.excluded.gpu_seconds,
        },
    )


def month_usage(session: Session, team_id: uuid.UUID, month: str) -> list[UsageMonthly]:
    """The team's usage rows of ``month``, by model."""
    query = select(UsageMonthly).where(UsageMonthly.team_id == team_id, UsageMonthly.month == month)
    return list(session.scalars(query.order_by(UsageMonthly.model)))


def month_images(session: Session, team_id: uuid.UUID, month: str) -> int:
    """Images the team rendered in ``month``, all models."""
    total = session.scalar(
        select(func.coalesce(func.sum(UsageMonthly.images), 0)).where(
            UsageMonthly.team_id == team_id, UsageMonthly.month == month
        )
    )
    return int(total or 0)


def unfinished_jobs(session: Session, team_id: uuid.UUID) -> int:
    """The team's jobs queued or running now."""
    count = session.scalar(
        select(func.count()).where(Job.team_id == team_id, Job.status.in_(UNFINISHED))
    )
    return int(count or 0)

"""Observed throughput per model and the ETAs read from it (deadlines, dry runs).

A model's throughput is read from its most recent renders: at most ``SAMPLE_JOBS`` jobs
finished (succeeded or failed) in the last ``WINDOW`` (ix_jobs_model_finished, so one
index range read however big the table). Jobs per second is how many of them finished
over the span from the first one's start to the last one's end; GPU-seconds per job is that
span times the workers that rendered them, over the jobs (each worker is one GPU). A
model that rendered nothing lately has no throughput: its ETAs are unknown (None).

The queue ahead of a batch is every queued or running job of its model created before it:
fair share may serve a team sooner than that (other teams' backlogs are interleaved, not
waited for), so the ETA errs late, which is the side a deadline wants.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from shared.jobs import JobStatus
from shared.models import Job, utcnow

WINDOW = timedelta(minutes=10)
SAMPLE_JOBS = 500
ACTIVE = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


@dataclass(frozen=True)
class Throughput:
    """A model's recent pace."""

    jobs_per_second: float
    gpu_seconds_per_job: float

    def seconds_for(self, jobs: int) -> float:
        """Seconds the farm takes to render ``jobs`` more at this pace."""
        return jobs / self.jobs_per_second


def observed(session: Session, model: str, now: datetime | None = None) -> Throughput | None:
    """The model's throughput over its recent renders, or None if it rendered none."""
    now = now or utcnow()
    recent = (
        select(Job.started_at, Job.finished_at, Job.worker)
        .where(
            Job.model == model,
            Job.finished_at.is_not(None),
            Job.finished_at >= now - WINDOW,
            Job.status.in_((JobStatus.SUCCEEDED.value, JobStatus.FAILED.value)),
        )
        .order_by(Job.finished_at.desc())
        .limit(SAMPLE_JOBS)
        .subquery()
    )
    count, first, last, workers = session.execute(
        select(
            func.count(),
            func.min(recent.c.started_at),
            func.max(recent.c.finished_at),
            func.count(func.distinct(recent.c.worker)),
        )
    ).one()
    if not count or first is None or last is None:
        return None
    span = max((_aware(last) - _aware(first)).total_seconds(), 1e-3)
    return Throughput(count / span, span * max(workers, 1) / count)


def queued_ahead(
    session: Session, model: str, before: datetime | None = None, batch: uuid.UUID | None = None
) -> int:
    """Queued and running jobs of ``model`` (created before ``before``; not of ``batch``)."""
    query = select(func.count()).select_from(Job).where(Job.model == model, Job.status.in_(ACTIVE))
    if before is not None:
        query = query.where(Job.created_at < before)
    if batch is not None:
        query = query.where(or_(Job.batch_id.is_(None), Job.batch_id != batch))
    return session.scalar(query) or 0


@dataclass(frozen=True)
class BatchEta:
    """When a batch should finish, and whether that makes its deadline."""

    eta: datetime | None
    on_track: bool | None


def batch_eta(
    session: Session,
    model: str,
    batch: uuid.UUID,
    created_at: datetime,
    remaining: int,
    deadline: datetime | None,
    now: datetime | None = None,
) -> BatchEta:
    """``remaining`` jobs behind the model's queue ahead of the batch, at its pace."""
    now = now or utcnow()
    if not remaining:
        return BatchEta(None, None)
    pace = observed(session, model, now)
    if pace is None:
        return BatchEta(None, None)
    ahead = queued_ahead(session, model, before=created_at, batch=batch)
    eta = now + timedelta(seconds=pace.seconds_for(ahead + remaining))
    return BatchEta(eta, None if deadline is None else eta <= _aware(deadline))


def _aware(value: datetime) -> datetime:
    # SQLite hands timestamps back naive; they were written in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)

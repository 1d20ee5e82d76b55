"""The job state machine. Every transition is one conditional UPDATE, so races resolve in SQL.

 queued ──▶ running ──▶ succeeded
   │  ▲        │
   │  └────────┤ (lease expired / transient error: handed back for another attempt)
   ▼           ▼
canceled    failed | canceled
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import case, literal, select, update
from sqlalchemy.orm import Session

from shared.models import Job, Worker, utcnow


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


FINAL_STATES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.QUEUED}
    ),
    JobStatus.SUCCEEDED: frozenset(),
    # A failed job may be retried on request (POST /v1/batches/{id}/retry).
    JobStatus.FAILED: frozenset({JobStatus.QUEUED}),
    JobStatus.CANCELED: frozenset(),
}


class IllegalTransition(ValueError):
    """A transition the state machine does not allow (a programming error, not a race)."""


def check_transition(source: JobStatus, target: JobStatus) -> None:
    if target not in TRANSITIONS[source]:
        raise IllegalTransition(f"job cannot go from {source} to {target}")


def transition(
    session: Session,
    job_id: uuid.UUID,
    source: JobStatus,
    target: JobStatus,
    **values: Any,
) -> bool:
    """Move a job from ``source`` to ``target`` if it is still in ``source``.

    Returns False when another process moved it first: the caller lost the race and must
    not act as if it owned the job.
    """
    check_transition(source, target)
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == source.value)
        .values(status=target.value, **values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined, no-any-return]


def claim_job(session: Session, job_id: uuid.UUID, worker: str, lease_seconds: int) -> bool:
    """queued → running for ``worker``, counting the attempt and taking a lease."""
    now = utcnow()
    return transition(
        session,
        job_id,
        JobStatus.QUEUED,
        JobStatus.RUNNING,
        worker=worker,
        started_at=now,
        attempts=Job.attempts + 1,
        error=None,
        lease_expires_at=now + timedelta(seconds=lease_seconds),
    )


def claim_jobs_bulk(
    session: Session, job_ids: Sequence[uuid.UUID], worker: str, lease_seconds: int
) -> list[uuid.UUID]:
    """``claim_job`` for a whole task's jobs in one conditional UPDATE (not one per job).

    Those still ``queued`` go ``running`` for ``worker``, counting the attempt and taking a
    lease; the others (claimed by someone else, canceled, finished) are left alone. Returns
    the ids claimed, in the order given.
    """
    if not job_ids:
        return []
    check_transition(JobStatus.QUEUED, JobStatus.RUNNING)
    now = utcnow()
    claimed = set(
        session.scalars(
            update(Job)
            .where(Job.id.in_(list(job_ids)), Job.status == JobStatus.QUEUED.value)
            .values(
                status=JobStatus.RUNNING.value,
                worker=worker,
                started_at=now,
                attempts=Job.attempts + 1,
                error=None,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
            )
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
    )
    return [j for j in job_ids if j in claimed]


def mark_succeeded(
    session: Session,
    job_id: uuid.UUID,
    outputs: list[dict[str, Any]],
    provenance: dict[str, Any],
) -> bool:
    return transition(
        session,
        job_id,
        JobStatus.RUNNING,
        JobStatus.SUCCEEDED,
        outputs=outputs,
        provenance=provenance,
        finished_at=utcnow(),
        lease_expires_at=None,
    )


# What a render produced for one job: (job id, outputs, provenance).
Success = tuple[uuid.UUID, list[dict[str, Any]], dict[str, Any]]


def mark_succeeded_bulk(session: Session, successes: Sequence[Success]) -> list[uuid.UUID]:
    """``mark_succeeded`` for a rendered group in one conditional UPDATE ... RETURNING, each
    job getting its own outputs and provenance. Returns the ids that were still ``running``
    (the others were finished or taken back by someone else), in the order given."""
    if not successes:
        return []
    check_transition(JobStatus.RUNNING, JobStatus.SUCCEEDED)

    def per_job(column: Any, index: int) -> Any:
        branches = {s[0]: literal(s[index], column.type) for s in successes}
        return case(branches, value=Job.id, else_=column)

    done = set(
        session.scalars(
            update(Job)
            .where(Job.id.in_([s[0] for s in successes]), Job.status == JobStatus.RUNNING.value)
            .values(
                status=JobStatus.SUCCEEDED.value,
                outputs=per_job(Job.outputs, 1),
                provenance=per_job(Job.provenance, 2),
                finished_at=utcnow(),
                lease_expires_at=None,
            )
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
    )
    return [s[0] for s in successes if s[0] in done]


def mark_failed(
    session: Session, job_id: uuid.UUID, error: str, source: JobStatus = JobStatus.RUNNING
) -> bool:
    return transition(
        session,
        job_id,
        source,
        JobStatus.FAILED,
        error=error[:4000],
        finished_at=utcnow(),
        lease_expires_at=None,
    )


def requeue(session: Session, job_id: uuid.UUID, error: str, delay_seconds: float = 0) -> bool:
    """running → queued: hand the job back for another attempt after ``delay_seconds``.

    The error is kept so ops can see why the job is on its second attempt.
    """
    return transition(
        session,
        job_id,
        JobStatus.RUNNING,
        JobStatus.QUEUED,
        error=error[:4000],
        worker=None,
        enqueued_at=None,
        lease_expires_at=None,
        not_before=utcnow() + timedelta(seconds=delay_seconds),
    )


def cancel(session: Session, job_id: uuid.UUID) -> bool:
    """Cancel a queued job so it never renders, or ask a running one to stop.

    A running job keeps its ``lease_expires_at``: it marks that an output may have been
    stored and must be removed (``canceled_with_outputs``)."""
    now: datetime = utcnow()
    canceled = transition(
        session, job_id, JobStatus.QUEUED, JobStatus.CANCELED, finished_at=now
    ) or transition(session, job_id, JobStatus.RUNNING, JobStatus.CANCELED, finished_at=now)
    if canceled:
        # webhooks: the job.canceled event commits with the cancel (transactional outbox).
        from shared.events import JOB_CANCELED, emit_job_event  # events imports this module

        emit_job_event(session, job_id, JOB_CANCELED)
    return canceled


def renew_leases(session: Session, worker: str, lease_seconds: int) -> int:
    """Extend the lease of every job ``worker`` is running (its heartbeat)."""
    result = session.execute(
        update(Job)
        .where(Job.worker == worker, Job.status == JobStatus.RUNNING.value)
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    return result.rowcount  # type: ignore[attr-defined, no-any-return]


def expire_leases(session: Session, max_attempts: int) -> tuple[int, int]:
    """Take back running jobs whose worker stopped renewing its lease (killed, OOM, gone).

    Jobs with attempts left go back to ``queued`` for another worker; the others fail with a
    reason a person can read. Returns (requeued, failed).
    """
    now = utcnow()
    expired = (Job.status == JobStatus.RUNNING.value) & (Job.lease_expires_at < now)
    failed_ids = list(
        session.scalars(
            update(Job)
            .where(expired, Job.attempts >= max_attempts)
            .values(
                status=JobStatus.FAILED.value,
                error="worker lost: lease expired without heartbeat (killed, out of memory or "
                f"machine gone) on each of {max_attempts} attempts",
                finished_at=now,
                lease_expires_at=None,
            )
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
    )
    failed = len(failed_ids)
    if failed_ids:
        # webhooks: job.failed events commit with the sweep (transactional outbox).
        from shared.events import JOB_FAILED, emit_job_events  # events imports this module

        emit_job_events(session, failed_ids, JOB_FAILED)
    requeued = session.execute(
        update(Job)
        .where(expired, Job.attempts < max_attempts)
        .values(
            status=JobStatus.QUEUED.value,
            error="worker lost: lease expired; retrying",
            worker=None,
            enqueued_at=None,
            lease_expires_at=None,
        )
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    return requeued, failed


# --- reservations: handed over, held by a worker, not yet claimed ---------------------------
# A message a worker has received but not started (prefetched, or waiting for its ETA) sits
# unacked in Redis, and Redis returns it only after its visibility timeout (an hour). The
# worker notes which jobs it holds (``Job.worker`` on a still-queued job), so when it dies
# the dispatcher takes them back within one lease, as it does its running jobs.


def reserve_jobs(session: Session, job_ids: Sequence[uuid.UUID], worker: str) -> int:
    """Note that ``worker`` holds these handed-over jobs' message. Claimed, finished or
    re-armed jobs are left alone (their row already says who, or nobody, has them)."""
    if not job_ids:
        return 0
    result = session.execute(
        update(Job)
        .where(
            Job.id.in_(list(job_ids)),
            Job.status == JobStatus.QUEUED.value,
            Job.enqueued_at.is_not(None),
        )
        .values(worker=worker)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount  # type: ignore[attr-defined, no-any-return]


def rearm_reserved_by_lost_workers(session: Session, lease_seconds: int) -> int:
    """Hand back to the dispatcher the jobs reserved by workers gone for a lease (killed,
    out of memory) or stopped. Sending them again is safe: whichever message arrives first
    claims the job (``claim_jobs_bulk``), a late copy is skipped."""
    from shared.workers import lost_cutoff  # workers is read here only, never the reverse

    alive = (
        select(Worker.name)
        .where(
            Worker.name == Job.worker,
            Worker.stopped_at.is_(None),
            Worker.last_seen_at >= lost_cutoff(lease_seconds),
        )
        .exists()
    )
    result = session.execute(
        update(Job)
        .where(
            Job.status == JobStatus.QUEUED.value,
            Job.enqueued_at.is_not(None),
            Job.worker.is_not(None),
            ~alive,
        )
        .values(enqueued_at=None, worker=None)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount  # type: ignore[attr-defined, no-any-return]


def release_previous_life(session: Session, worker: str) -> tuple[int, int]:
    """At a worker's start: give back what an earlier process of the same name (a container
    restarted in place keeps its host name and pid) still holds. Its reservations go back
    to the dispatcher now; its running jobs' leases end now, so the sweep takes them back,
    counting the attempt. Without this the new process's heartbeat would renew leases of
    jobs nobody renders. Returns (reservations released, leases ended)."""
    released = session.execute(
        update(Job)
        .where(Job.worker == worker, Job.status == JobStatus.QUEUED.value)
        .values(enqueued_at=None, worker=None)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    ended = session.execute(
        update(Job)
        .where(Job.worker == worker, Job.status == JobStatus.RUNNING.value)
        .values(lease_expires_at=utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    return released, ended


# --- outputs of canceled jobs ---------------------------------------------------------------
# A running job canceled keeps its lease_expires_at (``cancel``): the mark that a worker may
# have stored an output for it. The worker removes what it stored when mark_succeeded
# refuses the job; if it dies between the upload and the delete, the dispatcher does,
# once the lease has run out (by then no live worker still holds the job).


def canceled_with_outputs(session: Session, limit: int) -> list[tuple[uuid.UUID, uuid.UUID, str]]:
    """Lock up to ``limit`` canceled jobs whose outputs may remain (``SKIP LOCKED``: two
    dispatchers never sweep one twice); returns (job id, team id, output format)."""
    rows = session.execute(
        select(Job.id, Job.team_id, Job.params)
        .where(Job.status == JobStatus.CANCELED.value, Job.lease_expires_at < utcnow())
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    return [(r.id, r.team_id, (r.params or {}).get("output_format", "png")) for r in rows]


def outputs_removed(session: Session, job_ids: Sequence[uuid.UUID]) -> None:
    """Clear the mark ``canceled_with_outputs`` looks for: nothing of these jobs remains."""
    if job_ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(list(job_ids)), Job.status == JobStatus.CANCELED.value)
            .values(lease_expires_at=None)
            .execution_options(synchronize_session=False)
        )

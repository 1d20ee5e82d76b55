"""Webhook events, written as outbox rows in the transaction that changed the job.

shared/jobs.py, the only writer of ``jobs.status``, calls ``emit_job_events`` in the same
session as each move into a final state (bulk moves included), so the rows commit or roll
back with the state change: no event is lost, none is sent for a change that did not
happen. Nothing else emits job events. The webhook worker (worker/webhooks.py) delivers
them later.

One event has one id (``evt_…``) and one body; it gets one delivery row per receiver: the
job's own ``webhook_url``, its batch's ``webhook_url`` and each enabled team endpoint
subscribed to the event type.

``batch.completed`` is sent exactly once per round of a batch: the batch row is locked
(``SELECT … FOR UPDATE``), so of two transactions finishing a batch's last two jobs the
second checks only after the first committed and sees no job left; then a conditional
UPDATE (``completed_at IS NULL``) picks the one that sends it. A retry opens a new round
(``reopen_batch``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import FromClause, Select, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from shared.job_status import JobStatus
from shared.models import Batch, Job, WebhookDelivery, WebhookEndpoint, utcnow
from shared.review_status import SETTLED_STATES, review_counts

JOB_SUCCEEDED = "job.succeeded"
JOB_FAILED = "job.failed"
JOB_CANCELED = "job.canceled"
# A job succeeded but its output missed a fidelity threshold: a person should look at it
# (sent after its job.succeeded, in the same transaction: shared/jobs.py mark_succeeded_bulk).
JOB_NEEDS_REVIEW = "job.needs_review"
BATCH_COMPLETED = "batch.completed"
BATCH_PROGRESS = "batch.progress"
# Every output of a batch is passed, approved or rejected: once per round (settle_review).
BATCH_REVIEWED = "batch.reviewed"
EVENT_TYPES = (
    JOB_SUCCEEDED,
    JOB_FAILED,
    JOB_CANCELED,
    JOB_NEEDS_REVIEW,
    BATCH_COMPLETED,
    BATCH_PROGRESS,
    BATCH_REVIEWED,
)
# The event a job's final state sends.
JOB_EVENTS = {
    JobStatus.SUCCEEDED: JOB_SUCCEEDED,
    JobStatus.FAILED: JOB_FAILED,
    JobStatus.CANCELED: JOB_CANCELED,
}
ACTIVE_STATES = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
# batch.progress goes out at most this often per batch, when a job of it finishes.
BATCH_PROGRESS_SECONDS = 60.0
# Rows per SELECT ... IN (...) when emitting for many jobs at once (a batch cancel).
CHUNK = 1000


def new_event_id() -> str:
    """A stable event id: every attempt of every delivery of the event carries it."""
    return f"evt_{uuid.uuid4().hex}"


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat().replace("+00:00", "Z")


def event_body(event_id: str, event_type: str, now: datetime, data: dict[str, Any]) -> str:
    """The JSON sent on every attempt (stored as text: retries send the very same bytes)."""
    payload = {"id": event_id, "type": event_type, "timestamp": _iso(now), "data": data}
    return json.dumps(payload, separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True)
class Endpoint:
    """A team endpoint as the emitter needs it."""

    id: uuid.UUID
    url: str
    events: frozenset[str]


@dataclass(frozen=True)
class Target:
    """One receiver of one event: an endpoint (its own secret) or a bare URL (team secret)."""

    url: str
    endpoint_id: uuid.UUID | None = None


# The statements every rendered group's events run, built once: building one afresh cost
# the worker more CPU than sending it.
_ENDPOINTS = select(
    WebhookEndpoint.team_id, WebhookEndpoint.id, WebhookEndpoint.url, WebhookEndpoint.events
).where(
    WebhookEndpoint.team_id.in_(bindparam("teams", expanding=True)),
    WebhookEndpoint.disabled_at.is_(None),
)


def team_endpoints(
    session: Session, team_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, list[Endpoint]]:
    """Enabled endpoints of each team (a team has a handful: filter events in Python)."""
    found: dict[uuid.UUID, list[Endpoint]] = {t: [] for t in team_ids}
    if not found:
        return found
    rows = session.execute(_ENDPOINTS, {"teams": list(found)}).tuples()
    for team_id, endpoint_id, url, events in rows:
        found[team_id].append(Endpoint(endpoint_id, url, frozenset(events)))
    return found


def targets_for(
    event_type: str, urls: Iterable[str | None], endpoints: Iterable[Endpoint]
) -> list[Target]:
    """The bare URLs given (deduplicated) plus the endpoints subscribed to ``event_type``."""
    targets = [Target(url) for url in dict.fromkeys(u for u in urls if u)]
    targets += [Target(e.url, e.id) for e in endpoints if event_type in e.events]
    return targets


def _delivery_rows(
    team_id: uuid.UUID,
    event_type: str,
    data: dict[str, Any],
    targets: list[Target],
    now: datetime,
    *,
    job_id: uuid.UUID | None = None,
    batch_id: uuid.UUID | None = None,
) -> list[dict[str, Any]]:
    if not targets:
        return []
    event_id = new_event_id()
    body = event_body(event_id, event_type, now, data)
    return [
        {
            "id": uuid.uuid4(),
            "team_id": team_id,
            "endpoint_id": t.endpoint_id,
            "event_id": event_id,
            "event_type": event_type,
            "job_id": job_id,
            "batch_id": batch_id,
            "url": t.url,
            "body": body,
            "status": "pending",
            "attempts": 0,
            # The first attempt is always immediate (the schedule's first entry is 0).
            "next_attempt_at": now,
            "created_at": now,
        }
        for t in targets
    ]


# --- job events -----------------------------------------------------------------------------

# What an event reads of a job: ``jobs`` column names (``metadata`` is read as ``meta``). A
# move on Postgres returns them with the change (shared/jobs.py), so emitting reads nothing.
EVENT_FIELDS = (
    "id",
    "team_id",
    "status",
    "model",
    "batch_id",
    "sku",
    "prompt_name",
    "variant",
    "attempts",
    "error",
    "metadata",
    "outputs",
    "created_at",
    "started_at",
    "finished_at",
    "webhook_url",
    "fidelity",
    "review",
)


def event_rows(jobs: FromClause) -> Select[Any]:
    """What ``emit_job_events`` reads of each job of ``jobs`` (the table, or a CTE of a move's
    RETURNING ``EVENT_FIELDS``), with its batch's webhook URL: joined, where a second SELECT
    cost a round trip."""
    fields = [jobs.c[n].label("meta" if n == "metadata" else n) for n in EVENT_FIELDS]
    return select(*fields, Batch.webhook_url.label("batch_webhook_url")).select_from(
        jobs.outerjoin(Batch, Batch.id == jobs.c.batch_id)
    )


def job_data(row: Any) -> dict[str, Any]:
    """A job as events describe it. Outputs carry no URL: a signed URL may have expired by
    the time a retried event arrives; ``GET /v1/jobs/{id}`` gives fresh ones."""
    return {
        "id": str(row.id),
        "status": row.status,
        "model": row.model,
        "batch_id": None if row.batch_id is None else str(row.batch_id),
        "sku": row.sku,
        "prompt_name": row.prompt_name,
        "variant": row.variant,
        "attempts": row.attempts,
        "error": row.error,
        "metadata": row.meta,
        "outputs": [
            {"width": o["width"], "height": o["height"], "content_type": o["content_type"]}
            for o in row.outputs or []
        ],
        # The output's scores against its source and its review state (null until rendered).
        "fidelity": row.fidelity,
        "review": row.review,
        "created_at": _iso(row.created_at),
        "started_at": _iso(row.started_at),
        "finished_at": _iso(row.finished_at),
    }


def emit_job_events(
    session: Session,
    job_ids: Sequence[uuid.UUID],
    event_type: str,
    *,
    progress_seconds: float = BATCH_PROGRESS_SECONDS,
    settle_batches: bool = True,
    rows: Sequence[Any] | None = None,
) -> int:
    """Outbox rows for the final-state event of each of ``job_ids`` (and their batches'
    progress or completion), with a few queries however many jobs: a batch cancel, the
    lease sweep. Returns the number of delivery rows written. Call only in the transaction
    that moved the jobs (shared/jobs.py does). ``settle_batches=False`` for an event that
    follows another one of the same jobs (job.needs_review): their batches were settled.
    ``rows``: the jobs as ``event_rows`` reads them, where the move returned them already."""
    now = utcnow()
    written = 0
    batch_ids: set[uuid.UUID] = set()
    known: dict[uuid.UUID, list[Endpoint]] = {}  # the teams' endpoints, read once here
    for start in range(0, len(job_ids), CHUNK):
        if rows is None:
            # Columns, not ORM objects: the caller's session may hold a stale Job from
            # before its own UPDATE (transitions do not synchronise the session).
            chunk = list(job_ids[start : start + CHUNK])
            jobs = session.execute(event_rows(Job.__table__).where(Job.id.in_(chunk))).all()
        else:
            jobs = list(rows[start : start + CHUNK])
        batch_ids.update(j.batch_id for j in jobs if j.batch_id is not None)
        endpoints = team_endpoints(session, {j.team_id for j in jobs})
        known.update(endpoints)
        written += _deliver_jobs(session, jobs, event_type, endpoints, now)
    # Sorted: two transactions settling the same batches lock them in one order (no deadlock).
    for batch_id in sorted(batch_ids) if settle_batches else ():
        written += settle_batch(
            session, batch_id, now, progress_seconds=progress_seconds, endpoints=known
        )
    return written


def _deliver_jobs(
    session: Session,
    jobs: Sequence[Any],
    event_type: str,
    endpoints: Mapping[uuid.UUID, list[Endpoint]],
    now: datetime,
) -> int:
    """One event per job to each of its receivers; the job's data is built only for a job
    that has one (most have none: no webhook given, no endpoint subscribed)."""
    rows: list[dict[str, Any]] = []
    for job in jobs:
        urls = [job.webhook_url, job.batch_webhook_url]
        targets = targets_for(event_type, urls, endpoints[job.team_id])
        if targets:
            data = job_data(job)
            rows += _delivery_rows(
                job.team_id, event_type, data, targets, now, job_id=job.id, batch_id=job.batch_id
            )
    if rows:
        session.execute(insert(WebhookDelivery), rows)
    return len(rows)


# --- batch events ---------------------------------------------------------------------------


def _locked_batch(session: Session, batch_id: uuid.UUID, extra: str) -> Any:
    """The batch's row as its events need it (and its column ``extra``), locked ``FOR
    UPDATE``: whoever settles the batch waits here for the others to commit, so the last one
    sees every job final."""
    return session.execute(_locking(extra), {"batch_id": batch_id}).one_or_none()


@cache
def _locking(extra: str) -> Select[Any]:
    columns = (Batch.id, Batch.team_id, Batch.webhook_url, Batch.job_count, Batch.meta)
    return (
        select(*columns, Batch.created_at, Batch.completed_at, getattr(Batch, extra))
        .where(Batch.id == bindparam("batch_id"))
        .with_for_update()
    )


# Any job of the batch left? An index probe that stops at the first hit.
_JOB_LEFT = (
    select(Job.id)
    .where(Job.batch_id == bindparam("batch_id"), Job.status.in_(ACTIVE_STATES))
    .limit(1)
)


def settle_batch(
    session: Session,
    batch_id: uuid.UUID,
    now: datetime | None = None,
    *,
    progress_seconds: float = BATCH_PROGRESS_SECONDS,
    endpoints: Mapping[uuid.UUID, list[Endpoint]] | None = None,
) -> int:
    """After a job of the batch reached a final state: send batch.completed if no job is
    left (exactly once), else batch.progress if its interval passed. Returns rows written.
    ``endpoints``: its team's, if the caller read them in this transaction already."""
    now = now or utcnow()
    # 1. lock the batch row: whoever finishes a job of this batch waits here for the others
    # to commit, so the last one to check sees every other job final.
    batch = _locked_batch(session, batch_id, "progress_sent_at")
    if batch is None or batch.completed_at is not None:
        return 0
    # 2. any job left? (read after the lock: this statement's snapshot sees their commits)
    left = session.scalar(_JOB_LEFT, {"batch_id": batch_id})
    if left is None:
        # every output passed: batch.reviewed follows batch.completed at once
        completed = _complete_batch(session, batch, now, endpoints)
        return completed + settle_review(session, batch_id, now)
    if progress_seconds > 0 and (
        batch.progress_sent_at is None
        or (now - batch.progress_sent_at).total_seconds() >= progress_seconds
    ):
        return _progress(session, batch, now, endpoints)
    return 0


def reopen_batch(session: Session, batch_id: uuid.UUID) -> None:
    """A new round of the batch began (its failed jobs were retried, its rejected ones
    rerendered): its end sends batch.completed again, and batch.reviewed once settled."""
    session.execute(
        update(Batch)
        .where(Batch.id == batch_id)
        .values(completed_at=None, reviewed_at=None)
        .execution_options(synchronize_session=False)
    )


def _complete_batch(
    session: Session,
    batch: Any,
    now: datetime,
    endpoints: Mapping[uuid.UUID, list[Endpoint]] | None,
) -> int:
    won = session.execute(
        update(Batch)
        .where(Batch.id == batch.id, Batch.completed_at.is_(None))
        .values(completed_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if won != 1:
        return 0
    targets = _batch_targets(session, batch, BATCH_COMPLETED, endpoints)
    if not targets:
        return 0
    counts = batch_counts(session, batch.id)
    failed_ids = session.scalars(
        select(Job.id)
        .where(Job.batch_id == batch.id, Job.status == JobStatus.FAILED.value)
        .order_by(Job.id)
    )
    data = {
        **_batch_data(batch, counts),
        "status": batch_status(counts),
        "failed_job_ids": [str(i) for i in failed_ids],
        "review_counts": review_counts(session, [batch.id])[batch.id],
        "completed_at": _iso(now),
    }
    rows = _delivery_rows(batch.team_id, BATCH_COMPLETED, data, targets, now, batch_id=batch.id)
    session.execute(insert(WebhookDelivery), rows)
    return len(rows)


def _progress(
    session: Session,
    batch: Any,
    now: datetime,
    endpoints: Mapping[uuid.UUID, list[Endpoint]] | None,
) -> int:
    targets = _batch_targets(session, batch, BATCH_PROGRESS, endpoints)
    if not targets:
        return 0
    session.execute(
        update(Batch)
        .where(Batch.id == batch.id)
        .values(progress_sent_at=now)
        .execution_options(synchronize_session=False)
    )
    counts = batch_counts(session, batch.id)
    finished = sum(counts[s] for s in ("succeeded", "failed", "canceled"))
    data = {
        **_batch_data(batch, counts),
        "status": "running",
        "progress": round(finished / batch.job_count, 4) if batch.job_count else 1.0,
        "review_counts": review_counts(session, [batch.id])[batch.id],
    }
    rows = _delivery_rows(batch.team_id, BATCH_PROGRESS, data, targets, now, batch_id=batch.id)
    session.execute(insert(WebhookDelivery), rows)
    return len(rows)


def _batch_targets(
    session: Session,
    batch: Any,
    event_type: str,
    known: Mapping[uuid.UUID, list[Endpoint]] | None = None,
) -> list[Target]:
    """The batch's URL and its team's endpoints subscribed to ``event_type``: from ``known``
    (read earlier in this transaction) where it has the team, else read now."""
    endpoints = (known or {}).get(batch.team_id)
    if endpoints is None:
        endpoints = team_endpoints(session, [batch.team_id])[batch.team_id]
    return targets_for(event_type, [batch.webhook_url], endpoints)


def batch_counts(session: Session, batch_id: uuid.UUID) -> dict[str, int]:
    """Jobs of the batch by status, every status present (zeros included)."""
    counts = {s.value: 0 for s in JobStatus}
    rows = session.execute(
        select(Job.status, func.count()).where(Job.batch_id == batch_id).group_by(Job.status)
    ).tuples()
    counts.update({status: count for status, count in rows})
    return counts


def batch_status(counts: dict[str, int]) -> str:
    """A finished batch: failed if any job failed, canceled if any was, else succeeded."""
    if counts.get("failed"):
        return "failed"
    if counts.get("canceled"):
        return "canceled"
    return "succeeded"


def _batch_data(batch: Any, counts: dict[str, int]) -> dict[str, Any]:
    return {
        "id": str(batch.id),
        "job_count": batch.job_count,
        "counts": counts,
        "metadata": batch.meta,
        "created_at": _iso(batch.created_at),
    }


# --- batch review ---------------------------------------------------------------------------


def settle_review(session: Session, batch_id: uuid.UUID, now: datetime | None = None) -> int:
    """After a batch completed or a person decided on one of its outputs: send
    batch.reviewed if every output is passed, approved or rejected (none needs review, no
    job left to render), exactly once per round, as batch.completed is (the batch row
    locked, then a conditional UPDATE on ``reviewed_at``). Returns rows written."""
    now = now or utcnow()
    batch = _locked_batch(session, batch_id, "reviewed_at")
    if batch is None or batch.completed_at is None or batch.reviewed_at is not None:
        return 0
    unsettled = (Job.status == JobStatus.SUCCEEDED.value) & (
        Job.review.is_(None) | Job.review.not_in([s.value for s in SETTLED_STATES])
    )
    left = session.scalar(
        select(Job.id)
        .where(Job.batch_id == batch_id, Job.status.in_(ACTIVE_STATES) | unsettled)
        .limit(1)
    )
    if left is not None:
        return 0
    rendered = session.scalar(  # a round with no output (all failed or canceled): no review
        select(Job.id)
        .where(Job.batch_id == batch_id, Job.status == JobStatus.SUCCEEDED.value)
        .limit(1)
    )
    if rendered is None:
        return 0
    won = session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.reviewed_at.is_(None))
        .values(reviewed_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    targets = _batch_targets(session, batch, BATCH_REVIEWED) if won == 1 else []
    if not targets:
        return 0
    data = {
        **_batch_data(batch, batch_counts(session, batch.id)),
        "review_counts": review_counts(session, [batch.id])[batch.id],
        "reviewed_at": _iso(now),
    }
    rows = _delivery_rows(batch.team_id, BATCH_REVIEWED, data, targets, now, batch_id=batch.id)
    session.execute(insert(WebhookDelivery), rows)
    return len(rows)

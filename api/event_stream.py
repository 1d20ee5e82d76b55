"""What one event stream reads: its start, its next page of the log, its batch's or job's state.

Each function runs in one short session (the routes call them in a worker thread). A stream
follows one batch or one job and keeps a ``Cursor``: its place in the log's read order,
(txid, id) on Postgres, the id on SQLite (shared/job_events.py says why).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Text, cast, func, literal, select, tuple_
from sqlalchemy.orm import Session

from shared.events import ACTIVE_STATES, batch_counts, batch_status
from shared.job_events import event_data
from shared.job_status import FINAL_STATES
from shared.models import Job, JobEvent

# Rows read per query: a stream replaying a 10,000-job batch's log reads it in pages, each
# sent (at the client's pace) before the next is read.
PAGE = 500
START = -1  # below every txid: the beginning of the log
FINAL_STATUSES = frozenset(s.value for s in FINAL_STATES)


@dataclass(frozen=True)
class Follow:
    """What a stream follows: a batch (``job_id`` None) or one job."""

    team_id: uuid.UUID
    batch_id: uuid.UUID | None
    job_id: uuid.UUID | None = None

    @property
    def keys(self) -> set[uuid.UUID]:
        """The NOTIFY payloads that concern it (shared/job_events.py ``notify``)."""
        return {self.team_id} | ({self.batch_id} if self.batch_id else set())

    def where(self) -> ColumnElement[bool]:
        if self.job_id is not None:
            return JobEvent.job_id == self.job_id
        return JobEvent.batch_id == self.batch_id


@dataclass
class Cursor:
    """The last row a stream sent (or its start), in the log's read order."""

    txid: int = START
    id: int = 0
    # Rows at or below this id are never sent: a resume from an id no longer in the log.
    floor: int = 0


@dataclass
class Event:
    id: int
    type: str
    data: dict[str, Any]


@dataclass
class Page:
    events: list[Event] = field(default_factory=list)
    # A row is logged but an older transaction may still commit one before it: read again.
    held_back: bool = False
    full: bool = False


def _postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _xmin() -> ColumnElement[Any]:
    """The oldest transaction still running: every older one committed or rolled back."""
    return cast(cast(func.pg_snapshot_xmin(func.pg_current_snapshot()), Text), BigInteger)


def start_cursor(session: Session, follow: Follow, last_event_id: int | None) -> Cursor:
    """After ``last_event_id`` (0: the beginning), or after the last row readable now."""
    postgres = _postgres(session)
    if last_event_id == 0:
        return Cursor()
    if last_event_id is not None:
        seen = session.execute(
            select(JobEvent.txid).where(JobEvent.id == last_event_id, follow.where())
        ).first()
        if seen is None:  # pruned (or not this stream's): resume by id alone
            return Cursor(floor=last_event_id)
        return Cursor(seen.txid if postgres and seen.txid is not None else START, last_event_id)
    query = select(JobEvent.txid, JobEvent.id).where(follow.where())
    if postgres:
        query = query.where(JobEvent.txid < _xmin()).order_by(
            JobEvent.txid.desc(), JobEvent.id.desc()
        )
    else:
        query = query.order_by(JobEvent.id.desc())
    last = session.execute(query.limit(1)).first()
    if last is None:
        return Cursor()
    return Cursor(last.txid if postgres else START, last.id)


def read_page(session: Session, follow: Follow, cursor: Cursor, *, force: bool = False) -> Page:
    """The next rows after ``cursor`` that no running transaction can still precede (with
    ``force``, every committed one); moves the cursor past those returned."""
    postgres = _postgres(session)
    data = event_data(postgres).label("data")
    columns = (JobEvent.id, JobEvent.type, JobEvent.job_id, data, JobEvent.created_at)
    query = select(*columns).where(follow.where(), JobEvent.id > cursor.floor)
    if postgres:
        query = (
            query.add_columns(JobEvent.txid, _xmin().label("xmin"))
            .where(tuple_(JobEvent.txid, JobEvent.id) > tuple_(literal(cursor.txid), cursor.id))
            .order_by(JobEvent.txid, JobEvent.id)
        )
    else:
        query = query.where(JobEvent.id > cursor.id).order_by(JobEvent.id)
    rows = session.execute(query.limit(PAGE)).all()
    page = Page(full=len(rows) == PAGE)
    for row in rows:
        txid = getattr(row, "txid", None)
        if txid is not None and txid >= row.xmin and not force:
            page.held_back, page.full = True, False
            break
        page.events.append(Event(row.id, row.type, _event_data(follow, row)))
        cursor.txid, cursor.id = (txid if txid is not None else START), row.id
    return page


def _event_data(follow: Follow, row: Any) -> dict[str, Any]:
    return {
        "job_id": str(row.job_id),
        "batch_id": None if follow.batch_id is None else str(follow.batch_id),
        **(row.data or {}),
        "at": _iso(row.created_at),
    }


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


# --- state: the snapshot, progress and end events ------------------------------------------


def batch_done(session: Session, batch_id: uuid.UUID) -> bool:
    """No job of the batch is queued or running (an index probe that stops at the first)."""
    left = session.scalar(
        select(Job.id).where(Job.batch_id == batch_id, Job.status.in_(ACTIVE_STATES)).limit(1)
    )
    return left is None


def batch_state(session: Session, batch_id: uuid.UUID, job_count: int) -> dict[str, Any]:
    """The batch now: status, counts by status and by review state, jobs done."""
    counts = batch_counts(session, batch_id)
    active = sum(counts[s] for s in ACTIVE_STATES)
    reviews = session.execute(
        select(Job.review, func.count())
        .where(Job.batch_id == batch_id, Job.review.is_not(None))
        .group_by(Job.review)
    ).tuples()
    return {
        "batch_id": str(batch_id),
        "status": "running" if active else batch_status(counts),
        "job_count": job_count,
        "done": sum(counts.values()) - active,
        "counts": counts,
        "review": {state: n for state, n in reviews},
    }


def job_state(session: Session, job_id: uuid.UUID) -> dict[str, Any]:
    """The job now, as its events describe it."""
    job = session.execute(
        select(
            Job.id,
            Job.batch_id,
            Job.status,
            Job.attempts,
            Job.review,
            Job.sku,
            Job.prompt_name,
            Job.variant,
        ).where(Job.id == job_id)
    ).one()
    return {
        "job_id": str(job.id),
        "batch_id": None if job.batch_id is None else str(job.batch_id),
        "status": job.status,
        "attempts": job.attempts,
        "review": job.review,
        "sku": job.sku,
        "prompt_name": job.prompt_name,
        "variant": job.variant,
    }

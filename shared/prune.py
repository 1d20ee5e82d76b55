"""Data lifecycle: what a team's ``retention_days`` has expired goes, objects first, then rows.

Objects are deleted before the rows that name them, inside the chunk's transaction: a crash
between the two leaves rows pointing at nothing, which the next run deletes again (a missing
key is no error), and never an object no row names any more (nothing would ever find it).
Chunks are small transactions over rows locked ``FOR UPDATE SKIP LOCKED``: only finished
jobs past retention are locked, never the queued and running rows the farm works on.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from shared.db import session_scope
from shared.job_status import JobStatus
from shared.jobs import cancel, cancel_queued_of_batch
from shared.models import (
    Batch,
    Job,
    JobEvent,
    Team,
    Upload,
    WebhookAttempt,
    WebhookDelivery,
    utcnow,
)
from shared.storage import Storage, delete_many, thumbnail_key

# Jobs per transaction: short enough that a chunk's locks and its S3 calls take a second or so.
CHUNK = 500
FINISHED = (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value, JobStatus.CANCELED.value)
# What deleting a job needs of its row.
JOB_COLUMNS = (
    Job.id,
    Job.batch_id,
    Job.source_key,
    Job.mask_key,
    Job.outputs,
    Job.history,
    Job.finished_at,
)
# Every size the console caches a thumbnail at (api/routes/thumbnails.py SIZES).
SIZES = (256, 1024)


@dataclass
class PruneCounts:
    """What one prune deleted (or, dry run, would delete)."""

    jobs: int = 0
    batches: int = 0
    uploads: int = 0
    objects: int = 0
    # False when the time budget ran out with more due: run again soon.
    finished: bool = True

    def add(self, other: PruneCounts) -> None:
        for name, value in asdict(other).items():
            if name != "finished":
                setattr(self, name, getattr(self, name) + value)
        self.finished = self.finished and other.finished


def prune(
    factory: sessionmaker[Session],
    storage: Storage,
    *,
    now: datetime | None = None,
    team: str | None = None,
    dry_run: bool = False,
    chunk: int = CHUNK,
    budget_seconds: float | None = None,
) -> PruneCounts:
    """Delete every team's (or ``team``'s) jobs, batches and uploads past retention with their
    objects; ``dry_run`` counts them and deletes nothing. With ``budget_seconds`` no chunk
    starts after it (``finished`` False: more is due)."""
    now = now or utcnow()
    stop_at = None if budget_seconds is None else time.monotonic() + budget_seconds
    with session_scope(factory) as session:
        query = select(Team.id, Team.retention_days).order_by(Team.name)
        if team is not None:
            query = query.where(Team.name == team)
        teams = session.execute(query).all()
    total = PruneCounts()
    for team_id, days in teams:
        cutoff = now - timedelta(days=days)
        total.add(_prune_jobs(factory, storage, team_id, cutoff, dry_run, chunk, stop_at))
        total.add(_prune_uploads(factory, storage, team_id, cutoff, dry_run, chunk, stop_at))
    return total


def _out_of_time(stop_at: float | None, counts: PruneCounts) -> bool:
    if stop_at is not None and time.monotonic() >= stop_at:
        counts.finished = False
        return True
    return False


def _prune_jobs(
    factory: sessionmaker[Session],
    storage: Storage,
    team_id: uuid.UUID,
    cutoff: datetime,
    dry_run: bool,
    chunk: int,
    stop_at: float | None,
) -> PruneCounts:
    counts = PruneCounts()
    after: uuid.UUID | None = None  # keyset: a dry run (which deletes nothing) still moves on
    while not _out_of_time(stop_at, counts):
        with session_scope(factory) as session:
            jobs = _expired_jobs(session, team_id, cutoff, after, chunk)
            if not jobs:
                return counts
            after = jobs[-1].id
            gone = _delete_jobs(session, storage, team_id, cutoff, jobs, dry_run)
            if dry_run:
                session.rollback()
        counts.add(gone)
        if len(jobs) < chunk:
            return counts
    return counts


def _expired_jobs(
    session: Session, team_id: uuid.UUID, cutoff: datetime, after: uuid.UUID | None, chunk: int
) -> Sequence[Any]:
    query = (
        select(*JOB_COLUMNS)
        .outerjoin(Batch, Batch.id == Job.batch_id)
        .where(Job.team_id == team_id, Job.status.in_(FINISHED), Job.finished_at < cutoff)
        # A batch goes as a whole, retention after its last job (its expires_at).
        .where(or_(Job.batch_id.is_(None), Batch.completed_at < cutoff))
        .order_by(Job.id)
        .limit(chunk)
        .with_for_update(of=Job, skip_locked=True)
    )
    if after is not None:
        query = query.where(Job.id > after)
    return session.execute(query).all()


def expires_at(completed_at: datetime | None, retention_days: int) -> datetime | None:
    """When prune deletes a batch that completed at ``completed_at`` (None while running)."""
    if completed_at is None:
        return None
    if completed_at.tzinfo is None:  # SQLite hands timestamps back naive, written in UTC
        completed_at = completed_at.replace(tzinfo=UTC)
    return completed_at + timedelta(days=retention_days)


def delete_batch(
    factory: sessionmaker[Session], storage: Storage, batch_id: uuid.UUID, chunk: int = CHUNK
) -> int:
    """Cancel the batch's queued and running jobs, then delete every job whose outputs are
    final (objects, sources no other job or upload uses, rows) and the batch once empty.

    Returns the jobs left: running ones just canceled keep their rows until the worker (or
    the dispatcher's canceled-output sweep) removed what they stored; DELETE again then."""
    with session_scope(factory) as session:
        cancel_queued_of_batch(session, batch_id)
        running = select(Job.id).where(Job.batch_id == batch_id, Job.status == "running")
        running_ids = session.scalars(running).all()
    for job_id in running_ids:
        # One transaction each: a worker finishing its group locks those rows (then the
        # batch's) in its own order; holding several here could deadlock with it.
        with session_scope(factory) as session:
            cancel(session, job_id)
    while True:
        with session_scope(factory) as session:
            team_id = session.scalar(select(Batch.team_id).where(Batch.id == batch_id))
            if team_id is None:
                return 0
            jobs = session.execute(
                select(*JOB_COLUMNS)
                .where(Job.batch_id == batch_id, Job.status.in_(FINISHED))
                # A canceled job still leased may yet store an output: keep its row till swept.
                .where(or_(Job.status != "canceled", Job.lease_expires_at.is_(None)))
                .limit(chunk)
                .with_for_update(skip_locked=True)
            ).all()
            if jobs:
                _delete_jobs(session, storage, team_id, None, jobs, dry_run=False)
            else:
                return (
                    session.scalar(
                        select(func.count()).select_from(Job).where(Job.batch_id == batch_id)
                    )
                    or 0
                )


def _delete_jobs(
    session: Session,
    storage: Storage,
    team_id: uuid.UUID,
    cutoff: datetime | None,
    jobs: Sequence[Any],
    dry_run: bool,
) -> PruneCounts:
    ids = [j.id for j in jobs]
    inputs = {k for j in jobs for k in (j.source_key, j.mask_key) if k}
    unused = inputs - _inputs_in_use(session, team_id, inputs, ids, cutoff)
    keys = [k for j in jobs for k in _output_keys(j)] + sorted(unused)
    thumbs = [t for j in jobs for t in _thumbnail_keys(team_id, j, unused)]
    batch_ids = {j.batch_id for j in jobs if j.batch_id is not None}
    if not dry_run:
        delete_many(storage, keys + thumbs)
        _delete_job_rows(session, ids)
    emptied = _emptied_batches(session, batch_ids, ids)
    if not dry_run:
        _delete_batch_rows(session, emptied)
    return PruneCounts(jobs=len(ids), batches=len(emptied), objects=len(keys))


def _output_keys(job: Any) -> list[str]:
    current = [o["key"] for o in job.outputs or []]
    earlier = [o["key"] for h in job.history or [] for o in h.get("outputs") or []]
    return current + earlier


def _thumbnail_keys(team_id: uuid.UUID, job: Any, unused: set[str]) -> list[str]:
    # The console names a thumbnail by its object, the attempt that wrote it and its size.
    made_of: list[tuple[str, str]] = []
    if job.outputs and job.finished_at is not None:
        made_of.append((job.outputs[0]["key"], job.finished_at.isoformat()))
    for h in job.history or []:
        if h.get("outputs") and h.get("finished_at"):
            made_of.append((h["outputs"][0]["key"], h["finished_at"].replace("Z", "+00:00")))
    made_of += [(k, "source") for k in (job.source_key,) if k in unused]
    made_of += [(k, "mask") for k in (job.mask_key,) if k in unused]
    return [thumbnail_key(team_id, k, v, s) for k, v in made_of for s in SIZES]


def _inputs_in_use(
    session: Session,
    team_id: uuid.UUID,
    keys: set[str],
    leaving: list[uuid.UUID],
    cutoff: datetime | None,
) -> set[str]:
    """Which of ``keys`` a job staying or an upload younger than ``cutoff`` still names."""
    if not keys:
        return set()
    used: set[str] = set()
    for column in (Job.source_key, Job.mask_key):
        used.update(
            session.scalars(
                select(column)
                .where(Job.team_id == team_id, column.in_(keys), Job.id.not_in(leaving))
                .distinct()
            )
        )
    uploads = select(Upload.object_key).where(
        Upload.team_id == team_id, Upload.object_key.in_(keys)
    )
    if cutoff is not None:
        uploads = uploads.where(Upload.created_at >= cutoff)
    used.update(session.scalars(uploads.distinct()))
    return used


def _delete_job_rows(session: Session, ids: list[uuid.UUID]) -> None:
    deliveries = select(WebhookDelivery.id).where(WebhookDelivery.job_id.in_(ids))
    # Attempts cascade on Postgres; SQLite enforces no foreign keys here, so say it.
    session.execute(delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(deliveries)))
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.job_id.in_(ids)))
    session.execute(delete(JobEvent).where(JobEvent.job_id.in_(ids)))
    session.execute(delete(Job).where(Job.id.in_(ids)).execution_options(synchronize_session=False))


def _emptied_batches(
    session: Session, batch_ids: set[uuid.UUID], leaving: list[uuid.UUID]
) -> list[uuid.UUID]:
    if not batch_ids:
        return []
    kept = set(
        session.scalars(
            select(Job.batch_id)
            .where(Job.batch_id.in_(batch_ids), Job.id.not_in(leaving))
            .distinct()
        )
    )
    return sorted(batch_ids - kept)


def _delete_batch_rows(session: Session, batch_ids: Iterable[uuid.UUID]) -> None:
    ids = list(batch_ids)
    if not ids:
        return
    deliveries = select(WebhookDelivery.id).where(WebhookDelivery.batch_id.in_(ids))
    session.execute(delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(deliveries)))
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.batch_id.in_(ids)))
    session.execute(delete(JobEvent).where(JobEvent.batch_id.in_(ids)))
    session.execute(
        delete(Batch).where(Batch.id.in_(ids)).execution_options(synchronize_session=False)
    )


def _prune_uploads(
    factory: sessionmaker[Session],
    storage: Storage,
    team_id: uuid.UUID,
    cutoff: datetime,
    dry_run: bool,
    chunk: int,
    stop_at: float | None,
) -> PruneCounts:
    """Uploads older than retention: the row goes, its object too unless a job or a younger
    upload still names it."""
    counts = PruneCounts()
    after: uuid.UUID | None = None
    while not _out_of_time(stop_at, counts):
        with session_scope(factory) as session:
            query = (
                select(Upload.id, Upload.object_key)
                .where(Upload.team_id == team_id, Upload.created_at < cutoff)
                .order_by(Upload.id)
                .limit(chunk)
                .with_for_update(skip_locked=True)
            )
            if after is not None:
                query = query.where(Upload.id > after)
            rows = session.execute(query).all()
            if not rows:
                return counts
            after = rows[-1].id
            ids = [r.id for r in rows]
            keys = {r.object_key for r in rows}
            unused = sorted(keys - _inputs_in_use(session, team_id, keys, [], cutoff))
            if not dry_run:
                thumbs = [thumbnail_key(team_id, k, "source", n) for k in unused for n in SIZES]
                delete_many(storage, unused + thumbs)
                session.execute(delete(Upload).where(Upload.id.in_(ids)))
        counts.add(PruneCounts(uploads=len(ids), objects=len(unused)))
        if len(rows) < chunk:
            return counts
    return counts

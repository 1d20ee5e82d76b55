"""The job state machine, and the only code that changes ``jobs.status``.

 queued ──▶ running ──▶ succeeded
   │  ▲        │
   │  └────────┤ (lease expired / transient error: handed back for another attempt)
   ▼           ▼
canceled    failed | canceled
               │
               └──▶ queued (a client's batch retry: a new round)
succeeded ──▶ queued (a person rejected its output: rerendered, the old attempt kept)

Every transition is one conditional UPDATE (``WHERE status = <source>``) through ``_move``,
so races resolve in SQL and a bulk transition costs one statement however many jobs it
moves. A move into a final state writes its webhook event (shared/events.py) in the same
session, so the outbox row commits or rolls back with the change. No other module updates
``jobs.status``: tests/shared/test_one_writer.py reads the tree to keep it that way.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import cache
from typing import Any, NamedTuple

from sqlalchemy import (
    JSON,
    ColumnElement,
    Select,
    Update,
    Uuid,
    bindparam,
    case,
    column,
    func,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session, aliased

from shared.dispatch import CHANNEL as DISPATCH_CHANNEL
from shared.events import (
    EVENT_FIELDS,
    JOB_EVENTS,
    JOB_NEEDS_REVIEW,
    emit_job_events,
    event_rows,
    reopen_batch,
)
from shared.job_events import LOGGED_FIELDS, log_events, log_moved, transition_event
from shared.job_status import FINAL_STATES, JobStatus
from shared.models import Job, Worker, utcnow
from shared.review import attempt_record, rerender_seed
from shared.review_status import ReviewState

__all__ = ["FINAL_STATES", "JobStatus"]  # re-exported: callers import them from here

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.QUEUED}
    ),
    # A rejected output may be rendered again (POST /v1/batches/{id}/rerender).
    JobStatus.SUCCEEDED: frozenset({JobStatus.QUEUED}),
    # A failed job may be retried on request (POST /v1/batches/{id}/retry).
    JobStatus.FAILED: frozenset({JobStatus.QUEUED}),
    JobStatus.CANCELED: frozenset(),
}
# Error texts are for people; a stack of them must not grow the row without bound.
MAX_ERROR_CHARS = 4000


class IllegalTransition(ValueError):
    """A transition the state machine does not allow (a programming error, not a race)."""


def check_transition(source: JobStatus, target: JobStatus) -> None:
    if target not in TRANSITIONS[source]:
        raise IllegalTransition(f"job cannot go from {source} to {target}")


def _move(
    session: Session,
    where: ColumnElement[bool],
    sources: tuple[JobStatus, ...],
    target: JobStatus,
    **values: Any,
) -> list[uuid.UUID]:
    """Move the jobs matching ``where`` that are still in one of ``sources`` to ``target``,
    in one UPDATE ... RETURNING, with what every move writes in its transaction: its log
    rows (shared/job_events.py) and, for a final ``target``, its webhook events. Returns
    the ids moved (in no particular order): the others were moved first by someone else,
    and their caller lost the race."""
    return [row.id for row in _move_rows(session, _moving(where, sources, target, values), target)]


def _moving(
    where: ColumnElement[bool],
    sources: tuple[JobStatus, ...],
    target: JobStatus,
    values: dict[str, Any],
) -> Update:
    """The UPDATE of ``_move``, for its caller to say what it returns."""
    for source in sources:
        check_transition(source, target)
    return (
        update(Job)
        .where(where, Job.status.in_([s.value for s in sources]))
        .values(status=target.value, **values)
        .execution_options(synchronize_session=False)
    )


def _move_rows(session: Session, moving: Update, target: JobStatus) -> Sequence[Any]:
    """Run ``moving`` and what it writes with it; the rows moved, as ``event_rows`` reads them
    for a final ``target`` (an ``id`` alone otherwise).

    Postgres: one statement, the UPDATE and its log rows and NOTIFY (``_logged``), its
    RETURNING the events' data: a move into a final state reads no job again. SQLite: the
    log and the events read the moved rows back (``_moved``)."""
    if session.get_bind().dialect.name == "postgresql":
        return _run_logged(session, _logged(moving, target), {}, target)
    moved_ids = list(session.scalars(moving.returning(Job.id)))
    _moved(session, moved_ids, target)
    return [_Moved(job_id) for job_id in moved_ids]


def _logged(moving: Update, target: JobStatus) -> Select[Any]:
    """Postgres: ``moving`` as a CTE, read back with its log rows and NOTIFY (``log_moved``)
    in one statement; what it reads is ``event_rows`` for a final ``target``, else ids."""
    final = target in FINAL_STATES
    fields = dict.fromkeys((*LOGGED_FIELDS, *(EVENT_FIELDS if final else ())))
    moved = moving.returning(*(Job.__table__.c[f] for f in fields)).cte("moved")
    reading = event_rows(moved) if final else select(moved.c.id)
    return reading.add_columns(log_moved(moved, transition_event(target)))


def _run_logged(
    session: Session, statement: Select[Any], params: dict[str, Any], target: JobStatus
) -> Sequence[Any]:
    """Run a ``_logged`` move; a final ``target`` writes its webhook events from the rows."""
    rows = session.execute(statement, params).all()
    if rows and target in FINAL_STATES:  # webhooks: the event rows commit with the change
        emit_job_events(session, [r.id for r in rows], JOB_EVENTS[target], rows=rows)
    return rows


class _Moved(NamedTuple):
    id: uuid.UUID


def _moved(session: Session, moved: list[uuid.UUID], target: JobStatus) -> None:
    """What every move writes with it, in its transaction, where it is not one statement with
    it (SQLite; ``_move_rows``)."""
    # The live streams' log: every move, one INSERT ... SELECT for all the jobs it moved.
    log_events(session, moved, transition_event(target))
    if moved and target in FINAL_STATES:
        # webhooks: the event rows commit with the change (transactional outbox).
        emit_job_events(session, moved, JOB_EVENTS[target])


def _in_order(given: Sequence[uuid.UUID], moved: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    done = set(moved)
    return [j for j in given if j in done]


def claim_jobs_bulk(
    session: Session, job_ids: Sequence[uuid.UUID], worker: str, lease_seconds: int
) -> list[uuid.UUID]:
    """queued → running for ``worker``: a whole task's jobs in one conditional UPDATE.

    Each claimed job counts the attempt and takes a lease; the others (claimed by someone
    else, canceled, finished) are left alone. Returns the ids claimed, in the order given.
    """
    return [job.id for job in claim_jobs_loaded(session, job_ids, worker, lease_seconds)]


def claim_jobs_loaded(
    session: Session, job_ids: Sequence[uuid.UUID], worker: str, lease_seconds: int
) -> list[Job]:
    """``claim_jobs_bulk``, returning the claimed jobs themselves as the UPDATE left them
    (its RETURNING: a worker needs every field to render, and a SELECT after the claim was
    one more round trip per task)."""
    if not job_ids:
        return []
    now = utcnow()
    lease_until = now + timedelta(seconds=lease_seconds)
    if session.get_bind().dialect.name == "postgresql":  # the claim and its log: one statement
        params = {"ids": list(job_ids), "worker": worker, "now": now, "lease_until": lease_until}
        claimed = session.execute(_claim_statement(), params)
        jobs = {job.id: job for job, _, _ in claimed}
    else:
        claiming = _moving(
            Job.id.in_(list(job_ids)), *_CLAIM, _claim_values(worker, now, lease_until)
        )
        jobs = {job.id: job for job in session.scalars(claiming.returning(Job))}
        _moved(session, list(jobs), JobStatus.RUNNING)
    return [jobs[j] for j in job_ids if j in jobs]


_CLAIM = ((JobStatus.QUEUED,), JobStatus.RUNNING)


def _claim_values(worker: Any, now: Any, lease_until: Any) -> dict[str, Any]:
    """What a claim sets: the attempt counted, the lease taken."""
    return {
        "worker": worker,
        "started_at": now,
        "attempts": Job.attempts + 1,
        "error": None,
        "lease_expires_at": lease_until,
    }


@cache
def _claim_statement() -> Select[Any]:
    """Postgres: the claim, returning the jobs (a worker needs every field to render), built
    once: each task's claim built afresh (its CTE, 33 column proxies, the cache key) cost the
    worker more CPU than sending it."""
    values = _claim_values(bindparam("worker"), bindparam("now"), bindparam("lease_until"))
    claiming = _moving(Job.id == func.any(bindparam("ids", type_=ARRAY(Uuid()))), *_CLAIM, values)
    moved = claiming.returning(*Job.__table__.c).cte("moved")
    logged = log_moved(moved, transition_event(JobStatus.RUNNING))
    # Room just opened in the model's queue: the dispatcher refills it while these render
    # (shared/dispatch.py's nudge, sent at commit; Postgres folds the identical ones).
    opened = func.pg_notify(DISPATCH_CHANNEL, moved.c.model)
    # The jobs as the claim left them, even where the session holds them from before it.
    reading = select(aliased(Job, moved), logged, opened)
    return reading.execution_options(populate_existing=True)


class Success(NamedTuple):
    """What a render produced for one job; ``fidelity`` and ``review`` are its output's
    scores and the review state they decided (worker/fidelity.py), None when not scored."""

    job_id: uuid.UUID
    outputs: list[dict[str, Any]]
    provenance: dict[str, Any]
    fidelity: dict[str, Any] | None = None
    review: str | None = None
    # The mask a cut-out found for a ``mask: "auto"`` job (worker/cutout.py); None leaves
    # the job's as it is (given, or none).
    mask_key: str | None = None


def mark_succeeded_bulk(
    session: Session, given: Sequence[Success | tuple[Any, ...]]
) -> list[uuid.UUID]:
    """running → succeeded for a rendered group in one conditional UPDATE, each job getting
    its own outputs, provenance, scores, review state and found mask (``mask: "auto"``), and
    its ``job.succeeded`` event
    (and ``job.needs_review`` for those whose review says so). Returns the ids that were
    still ``running`` (the others were finished or taken back), in the order given."""
    if not given:
        return []
    successes = [Success(*s) for s in given]
    ids = [s.job_id for s in successes]
    postgres = session.get_bind().dialect.name == "postgresql"
    if postgres:
        params = {"rows": _success_rows(successes), "finished_at": utcnow()}
        moved = _run_logged(session, _success_statement(), params, JobStatus.SUCCEEDED)
    else:
        where, values = _cases_of(successes)
        values.update(finished_at=utcnow(), lease_expires_at=None)
        moving = _moving(where, (JobStatus.RUNNING,), JobStatus.SUCCEEDED, values)
        moved = _move_rows(session, moving, JobStatus.SUCCEEDED)
    rows = {row.id: row for row in moved}
    needs_review = ReviewState.NEEDS_REVIEW
    flagged = [s.job_id for s in successes if s.job_id in rows and s.review == needs_review]
    if flagged:  # same session: the event commits with the move, after its job.succeeded
        read = [rows[j] for j in flagged] if postgres else None  # as the move returned them
        emit_job_events(session, flagged, JOB_NEEDS_REVIEW, settle_batches=False, rows=read)
        log_events(session, flagged, JOB_NEEDS_REVIEW)  # and for the live streams
    return _in_order(ids, list(rows))


# What a success writes per job; a None value leaves that column as it was.
_SUCCESS_COLUMNS = ("outputs", "provenance", "fidelity", "review", "mask_key")


def _success_rows(successes: list[Success]) -> list[dict[str, Any]]:
    return [
        {"id": str(s.job_id), **{c: getattr(s, c) for c in _SUCCESS_COLUMNS}} for s in successes
    ]


@cache
def _success_statement() -> Select[Any]:
    """Postgres: every job's values in one JSON parameter (``rows``), unpacked by
    json_to_recordset (UPDATE ... FROM): one short statement whatever the group's size,
    built once. A CASE per column with a branch per job cost the worker ~10 ms of CPU per
    16 jobs to build and send."""
    given = func.json_to_recordset(bindparam("rows", type_=JSON))
    v = given.table_valued(
        column("id", Uuid), *(column(c, Job.__table__.c[c].type) for c in _SUCCESS_COLUMNS)
    ).render_derived("given", with_types=True)
    values: dict[str, Any] = {c: func.coalesce(v.c[c], getattr(Job, c)) for c in _SUCCESS_COLUMNS}
    values.update(finished_at=bindparam("finished_at"), lease_expires_at=None)
    moving = _moving(Job.id == v.c.id, (JobStatus.RUNNING,), JobStatus.SUCCEEDED, values)
    return _logged(moving, JobStatus.SUCCEEDED)


def _cases_of(successes: list[Success]) -> tuple[ColumnElement[bool], dict[str, Any]]:
    """Elsewhere (SQLite): a CASE on the job id per column."""

    def per_job(column: Any, field: str) -> Any:
        values = {s.job_id: getattr(s, field) for s in successes}
        branches = {i: literal(v, column.type) for i, v in values.items() if v is not None}
        return case(branches, value=Job.id, else_=column) if branches else column

    values = {c: per_job(getattr(Job, c), c) for c in _SUCCESS_COLUMNS}
    return Job.id.in_([s.job_id for s in successes]), values


def _failed_values(error: str, now: datetime) -> dict[str, Any]:
    return {"error": error[:MAX_ERROR_CHARS], "finished_at": now, "lease_expires_at": None}


def mark_failed_bulk(
    session: Session,
    job_ids: Sequence[uuid.UUID],
    error: str,
    source: JobStatus = JobStatus.RUNNING,
) -> list[uuid.UUID]:
    """``source`` → failed with ``error`` (and ``job.failed``) for the jobs still in
    ``source``; returns those, in the order given. A worker fails one job at a time (each
    has its own error), the dispatcher a tick's unrenderable ones (``source`` queued)."""
    if not job_ids:
        return []
    failed = _move(
        session,
        Job.id.in_(list(job_ids)),
        (source,),
        JobStatus.FAILED,
        **_failed_values(error, utcnow()),
    )
    return _in_order(job_ids, failed)


def fail_queued_of_model(session: Session, model: str, error: str) -> int:
    """queued → failed (and ``job.failed``) for every waiting job of ``model``: the model
    left the registry, nothing will render them. Returns how many failed."""
    return len(
        _move(
            session,
            Job.model == model,
            (JobStatus.QUEUED,),
            JobStatus.FAILED,
            **_failed_values(error, utcnow()),
        )
    )


def requeue(session: Session, job_id: uuid.UUID, error: str, delay_seconds: float = 0) -> bool:
    """running → queued: hand the job back for another attempt after ``delay_seconds``.

    The error is kept so ops can see why the job is on its second attempt.
    """
    return bool(
        _move(
            session,
            Job.id == job_id,
            (JobStatus.RUNNING,),
            JobStatus.QUEUED,
            error=error[:MAX_ERROR_CHARS],
            worker=None,
            enqueued_at=None,
            lease_expires_at=None,
            not_before=utcnow() + timedelta(seconds=delay_seconds),
        )
    )


def cancel(session: Session, job_id: uuid.UUID) -> bool:
    """Cancel a queued job so it never renders, or ask a running one to stop (and send
    ``job.canceled``). False if the job had already finished.

    A running job keeps its ``lease_expires_at``: it marks that an output may have been
    stored and must be removed (``canceled_with_outputs``)."""
    return bool(
        _move(
            session,
            Job.id == job_id,
            (JobStatus.QUEUED, JobStatus.RUNNING),
            JobStatus.CANCELED,
            finished_at=utcnow(),
        )
    )


def cancel_queued_of_batch(session: Session, batch_id: uuid.UUID) -> int:
    """queued → canceled (and ``job.canceled``, then the batch's completion if nothing is
    left running) for a batch's waiting jobs in one UPDATE; running ones may finish.
    Returns how many were canceled."""
    return len(
        _move(
            session,
            Job.batch_id == batch_id,
            (JobStatus.QUEUED,),
            JobStatus.CANCELED,
            finished_at=utcnow(),
            lease_expires_at=None,
        )
    )


def retry_failed_of_batch(session: Session, batch_id: uuid.UUID) -> int:
    """failed → queued for a batch's failed jobs: a client's deliberate new round, in one
    UPDATE (a job cannot be retried twice by racing requests). The round starts clean:
    error, timings and attempts are reset, so the retry policy (IMGFARM_MAX_ATTEMPTS for
    transient errors) applies to it in full, and the batch is reopened, so the round's end
    sends ``batch.completed`` again. Returns how many were requeued."""
    retried = len(
        _move(
            session,
            Job.batch_id == batch_id,
            (JobStatus.FAILED,),
            JobStatus.QUEUED,
            error=None,
            attempts=0,
            worker=None,
            outputs=None,
            provenance=None,
            enqueued_at=None,
            started_at=None,
            finished_at=None,
            lease_expires_at=None,
            not_before=None,
        )
    )
    if retried:
        reopen_batch(session, batch_id)
    return retried


# Rows per rerender UPDATE: each carries a CASE branch per job for its seed and history.
RERENDER_CHUNK = 1000


def rerender_rejected_of_batch(session: Session, batch_id: uuid.UUID, batch_seed: int) -> int:
    """succeeded → queued for a batch's rejected outputs: new attempts of the same jobs
    (same id, grid place and archive name), each with a new seed derived from the batch
    seed and the round (shared/review.py ``rerender_seed``: a rerender reproduces). The
    attempt replaced is appended to ``history`` (outputs, scores, review, seed); its
    objects stay in storage, as the next round stores under its own key. One conditional
    UPDATE per 1,000 jobs (``WHERE status = 'succeeded' AND review = 'rejected'``: a job a
    person approved meanwhile stays); the batch is reopened. Returns how many were queued."""
    rows = session.execute(
        select(
            Job.id,
            Job.sku,
            Job.prompt_name,
            Job.variant,
            Job.params,
            Job.outputs,
            Job.fidelity,
            Job.review,
            Job.review_note,
            Job.reviewed_by,
            Job.reviewed_at,
            Job.finished_at,
            Job.history,
        )
        .where(
            Job.batch_id == batch_id,
            Job.status == JobStatus.SUCCEEDED.value,
            Job.review == ReviewState.REJECTED.value,
        )
        .order_by(Job.id)
        .with_for_update()  # the history written is built from these very values
    ).all()
    moved = 0
    for start in range(0, len(rows), RERENDER_CHUNK):
        chunk = rows[start : start + RERENDER_CHUNK]
        params, history = {}, {}
        for r in chunk:
            round_ = len(r.history or []) + 1
            seed = rerender_seed(batch_seed, r.sku, r.prompt_name, r.variant, round_)
            params[r.id] = {**r.params, "seed": seed}
            history[r.id] = [*(r.history or []), attempt_record(r)]
        moved += len(
            _move(
                session,
                Job.id.in_(list(params)) & (Job.review == ReviewState.REJECTED.value),
                (JobStatus.SUCCEEDED,),
                JobStatus.QUEUED,
                params=_by_id(Job.params, params),
                history=_by_id(Job.history, history),
                outputs=None,
                provenance=None,
                fidelity=None,
                review=None,
                review_note=None,
                reviewed_by=None,
                reviewed_at=None,
                error=None,
                attempts=0,
                worker=None,
                enqueued_at=None,
                started_at=None,
                finished_at=None,
                lease_expires_at=None,
                not_before=None,
            )
        )
    if moved:
        reopen_batch(session, batch_id)
    return moved


def _by_id(column: Any, values: dict[uuid.UUID, Any]) -> Any:
    """``column`` set to each job's own value in one statement (a CASE on the id)."""
    branches = {job_id: literal(value, column.type) for job_id, value in values.items()}
    return case(branches, value=Job.id, else_=column)


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
    reason a person can read (and ``job.failed``). Returns (requeued, failed).
    """
    now = utcnow()
    error = (
        "worker lost: lease expired without heartbeat (killed, out of memory or machine gone)"
        f" on each of {max_attempts} attempts"
    )
    params: dict[str, Any] = {"now": now, "max_attempts": max_attempts, "error": error}
    if session.get_bind().dialect.name == "postgresql":  # built once: it runs every sweep
        moved = [_run_logged(session, st, params, target) for st, target in _expiry_statements()]
    else:
        moved = [_move_rows(session, moving, target) for moving, target in _expiries(**params)]
    failed, requeued = moved
    return len(requeued), len(failed)


def _expiries(now: Any, max_attempts: Any, error: Any) -> list[tuple[Update, JobStatus]]:
    """The two moves of an expired lease: failed on its last attempt, else queued again."""
    expired = Job.lease_expires_at < now
    last = Job.attempts >= max_attempts
    failed = {"error": error, "finished_at": now, "lease_expires_at": None}
    again = {
        "error": "worker lost: lease expired; retrying",
        "worker": None,
        "enqueued_at": None,
        "lease_expires_at": None,
    }
    return [
        (_moving(expired & last, (JobStatus.RUNNING,), JobStatus.FAILED, failed), JobStatus.FAILED),
        (_moving(expired & ~last, (JobStatus.RUNNING,), JobStatus.QUEUED, again), JobStatus.QUEUED),
    ]


@cache
def _expiry_statements() -> list[tuple[Select[Any], JobStatus]]:
    """Postgres: ``_expiries`` as ``_logged`` statements with bind parameters, built once
    (built at every sweep, they cost the dispatcher 4.4 ms of CPU a second, idle or not)."""
    params: dict[str, Any] = {name: bindparam(name) for name in ("now", "max_attempts", "error")}
    return [(_logged(moving, target), target) for moving, target in _expiries(**params)]


# --- reservations: handed over, held by a worker, not yet claimed ---------------------------
# A message a worker has received but not started (prefetched, or waiting for its ETA) sits
# unacked in Redis, and Redis returns it only after its visibility timeout (an hour). The
# worker notes which jobs it holds (``Job.worker`` on a still-queued job), so when it dies
# the dispatcher takes them back within one lease, as it does its running jobs.


def reserve_jobs(session: Session, job_ids: Sequence[uuid.UUID], worker: str) -> int:
    """Note that ``worker`` holds these handed-over jobs' message. Claimed, finished or
    re-armed jobs are left alone (their row already says who, or nobody, has them), and so
    are rows locked now: that lock is the claim of the same message, which records the
    worker itself. Returns the jobs noted.

    The note is advisory, so its commit does not wait for the WAL flush: lost in a Postgres
    crash, it costs those jobs the re-arm timer (``redispatch_seconds``), and a claim
    waiting on the note's row locks waits no fsync."""
    if not job_ids:
        return 0
    postgres = session.get_bind().dialect.name == "postgresql"
    if postgres:
        session.execute(text("SET LOCAL synchronous_commit = off"))
    held = (
        select(Job.id)
        .where(
            Job.id.in_(list(job_ids)),
            Job.status == JobStatus.QUEUED.value,
            Job.enqueued_at.is_not(None),
        )
        .with_for_update(skip_locked=True)
    )
    result = session.execute(
        update(Job)
        .where(Job.id.in_(held.scalar_subquery()))
        .values(worker=worker)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount  # type: ignore[attr-defined, no-any-return]


def waiting_clauses(jobs: type[Job], model: str, now: datetime) -> list[ColumnElement[bool]]:
    """Rows of ``jobs`` (``Job`` or an alias) the dispatcher may hand over at ``now``."""
    return [
        jobs.model == model,
        jobs.status == JobStatus.QUEUED.value,
        jobs.enqueued_at.is_(None),
        or_(jobs.not_before.is_(None), jobs.not_before <= now),
    ]


# The same rows in SQL, of a ``jobs j`` with ``:model`` bound (the dispatcher's prebuilt
# statements; ``not_before`` is checked where a statement needs it, against ``:now``).
WAITING_SQL = "j.model = :model AND j.status = 'queued' AND j.enqueued_at IS NULL"
# Postgres: ``hand_over`` as one prebuilt statement (the ORM's IN list costs ~1.5 ms a tick).
# Rows are locked and marked in the one UPDATE: a SELECT ... FOR UPDATE and then an UPDATE
# wrote each row twice (its lock, then its new version) in two round trips.
HAND_OVER = text(
    "UPDATE jobs SET enqueued_at = :now WHERE id IN (SELECT j.id FROM jobs j"
    f" WHERE j.id = ANY(CAST(:ids AS uuid[])) AND {WAITING_SQL}"
    " AND (j.not_before IS NULL OR j.not_before <= :now)"
    " FOR UPDATE SKIP LOCKED) RETURNING id, params"
)


def hand_over(
    session: Session, model: str, now: datetime, ids: list[uuid.UUID]
) -> list[tuple[uuid.UUID, dict[str, Any]]]:
    """Mark the ``ids`` still waiting and not locked by another dispatcher handed over at
    ``now`` (``enqueued_at``; their rows stay locked until the caller commits) and return
    their (id, params) in the order given. What the caller then fails to send it gives back
    with ``unsend`` before committing."""
    if not ids:
        return []
    if session.get_bind().dialect.name == "postgresql":  # one array parameter, prebuilt
        rows: Any = session.execute(HAND_OVER, {"ids": ids, "model": model, "now": now})
    else:  # SQLite: one writer at a time, nothing to skip
        rows = session.execute(
            update(Job)
            .where(Job.id.in_(ids), *waiting_clauses(Job, model, now))
            .values(enqueued_at=now)
            .returning(Job.id, Job.params)
            .execution_options(synchronize_session=False)
        )
    params: dict[uuid.UUID, dict[str, Any]] = dict(rows.tuples().all())
    return [(i, params[i]) for i in ids if i in params]


def unsend(session: Session, job_ids: Sequence[uuid.UUID]) -> None:
    """Back to waiting: jobs the dispatcher marked handed over (``hand_over``) whose message
    the broker then refused, in the same transaction."""
    _set_while(session, job_ids, JobStatus.QUEUED, enqueued_at=None)


def _set_while(
    session: Session, job_ids: Sequence[uuid.UUID], status: JobStatus, **values: Any
) -> None:
    """Set ``values`` (never the status) on those of ``job_ids`` still in ``status``."""
    if job_ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(list(job_ids)), Job.status == status.value)
            .values(**values)
            .execution_options(synchronize_session=False)
        )


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


def rearm_unclaimed(session: Session, handed_over_before: datetime) -> int:
    """Hand back to the dispatcher the jobs handed over before ``handed_over_before`` and
    never claimed: their message was lost (a Redis restart). As above, a late copy of it
    is skipped by the claim."""
    result = session.execute(
        update(Job)
        .where(Job.status == JobStatus.QUEUED.value, Job.enqueued_at < handed_over_before)
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
# have stored an output for it. The worker removes what it stored when mark_succeeded_bulk
# refuses the job; if it dies between the upload and the delete, the dispatcher does,
# once the lease has run out (by then no live worker still holds the job).


class CanceledAttempt(NamedTuple):
    """What names the objects a canceled job's last attempt may have stored: the round
    (earlier attempts a rerender kept are history, never removed), the render's format, and
    the marketplace presets, each an output of its own beside the render."""

    job_id: uuid.UUID
    team_id: uuid.UUID
    output_format: str
    round: int
    presets: tuple[str, ...]


def canceled_with_outputs(session: Session, limit: int) -> list[CanceledAttempt]:
    """Lock up to ``limit`` canceled jobs whose outputs may remain (``SKIP LOCKED``: two
    dispatchers never sweep one twice)."""
    round_ = func.coalesce(func.json_array_length(Job.history), 0)
    rows = session.execute(
        select(Job.id, Job.team_id, Job.params, round_)
        .where(Job.status == JobStatus.CANCELED.value, Job.lease_expires_at < utcnow())
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    return [
        CanceledAttempt(
            r[0],
            r[1],
            (r[2] or {}).get("output_format", "png"),
            r[3],
            tuple((r[2] or {}).get("presets") or ()),
        )
        for r in rows
    ]


def outputs_removed(session: Session, job_ids: Sequence[uuid.UUID]) -> None:
    """Clear the mark ``canceled_with_outputs`` looks for: nothing of these jobs remains."""
    _set_while(session, job_ids, JobStatus.CANCELED, lease_expires_at=None)

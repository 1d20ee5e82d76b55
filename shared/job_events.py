"""The event log behind the live progress streams: one ``job_events`` row per change.

Every job transition (shared/jobs.py ``_move``), job creation (api/submit.py, api/batches.py)
and review decision writes its rows here in the transaction of the change, with one
``INSERT ... SELECT`` from ``jobs`` however many jobs changed, and a ``NOTIFY imgfarm_events``
that Postgres delivers at commit. The api's one listener per process (api/live.py) wakes the
streams that follow the batches named in the payload; each reads its own rows.

Unlike the webhook outbox (shared/events.py: final states only, one row per receiver, none
without one), the log has one row per change whoever listens, so a stream can replay it
from any point (``Last-Event-ID``).

Order: ids are taken before commit, so id 8 can commit after id 9. On Postgres each row
keeps its transaction id and streams read in (txid, id) order, only rows of transactions
older than every running one (``pg_snapshot_xmin``): a row can then never appear behind one
already read. SQLite writers take turns, so there the id alone is the order.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    CTE,
    JSON,
    BigInteger,
    ColumnElement,
    Insert,
    ScalarSelect,
    Text,
    bindparam,
    case,
    cast,
    func,
    insert,
    literal,
    null,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session
from sqlalchemy.types import Uuid

from shared.db import delete_oldest
from shared.job_status import JobStatus
from shared.models import Job, JobEvent, utcnow

CHANNEL = "imgfarm_events"
JOB_NEEDS_REVIEW = "job.needs_review"
JOB_REVIEWED = "job.reviewed"
# Past this many batches in one change, the NOTIFY names teams instead (a lease sweep over
# many batches); streams listen to their team as well as their batch.
MAX_NOTIFY_KEYS = 100
PRUNE_BATCH = 5000


def transition_event(status: JobStatus) -> str:
    """The event type of a move into ``status``: ``job.queued`` ... ``job.canceled``."""
    return f"job.{status.value}"


def _is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


# What a job event carries: these fields of the row as the change left it.
DATA_FIELDS = ("status", "attempts", "review", "sku", "prompt_name", "variant")
# And what its row needs besides: a move's RETURNING gives ``log_moved`` all of them.
LOGGED_FIELDS = ("id", "team_id", "batch_id", *DATA_FIELDS)


def _job_data(
    postgres: bool,
    known: Mapping[str, ColumnElement[Any]] | None = None,
    row: Any = None,
) -> ColumnElement[Any]:
    """What a job event carries, built in SQL from the row as the change left it (``row``:
    the columns to read it from, ``jobs`` itself by default; ``known``: fields whose value
    is not the row's now, such as a creation's first state)."""
    columns = Job.__table__.c if row is None else row
    pairs: list[Any] = []
    for name in DATA_FIELDS:
        pairs += [literal(name), (known or {}).get(name, columns[name])]
    return func.json_build_object(*pairs) if postgres else func.json_object(*pairs)


def txid_now() -> ColumnElement[Any]:
    """This transaction's id as a BIGINT (it takes one if it had none)."""
    return cast(cast(func.pg_current_xact_id(), Text), BigInteger)


def log_events(session: Session, job_ids: Sequence[uuid.UUID], event_type: str) -> int:
    """One ``event_type`` row per job of ``job_ids`` (as each row is now) and the NOTIFY,
    in one INSERT ... SELECT; call in the transaction of the change. Returns rows written."""
    if not job_ids:
        return 0
    if _is_postgres(session):
        # One array parameter, not one per id: a 10,000-job move stays one short statement.
        where = Job.id == func.any(bindparam("ids", list(job_ids), type_=ARRAY(Uuid())))
    else:
        where = Job.id.in_(list(job_ids))
    return _log_where(session, where, event_type)


def log_batch_created(session: Session, batch_id: uuid.UUID) -> int:
    """``job.queued`` for every job of a batch just inserted, its data left NULL: the data
    of a job's creation is its names and the first state, which the reader builds from the
    row (``event_data``). 10,000 JSON objects built and stored were a quarter of a
    10,000-job batch's submission."""
    return _log_where(session, Job.batch_id == batch_id, "job.queued", data=False)


def event_data(postgres: bool) -> ColumnElement[Any]:
    """An event row's data as streams send it: as logged, or a creation row's from its job
    (a subquery that COALESCE runs only for those rows)."""
    first: dict[str, ColumnElement[Any]] = {
        "status": literal(JobStatus.QUEUED.value),
        "attempts": literal(0),
        "review": null(),
    }
    built = _job_data(postgres, first)
    created = select(built).where(Job.id == JobEvent.job_id).scalar_subquery()
    return func.coalesce(JobEvent.data, created, type_=JSON)


def _log_where(
    session: Session, where: ColumnElement[bool], event_type: str, *, data: bool = True
) -> int:
    postgres = _is_postgres(session)
    logging = _logging(Job.__table__.c, event_type, postgres, where=where, data=data)
    if not postgres:  # SQLite: no NOTIFY; the api's one poller reads the log's new rows
        return len(session.execute(logging.returning(JobEvent.id)).all())
    return int(session.execute(_logged_and_notified(logging)).scalar_one())


def log_moved(moved: CTE, event_type: str) -> ScalarSelect[Any]:
    """Postgres: ``event_type``'s rows and the NOTIFY for the jobs that ``moved`` (a CTE of an
    UPDATE ... RETURNING at least ``LOGGED_FIELDS``) changed, read from its RETURNING: a
    scalar for the move's own SELECT, so the change and its log are one statement. A second
    statement cost the worker's claim and its success a round trip each, and Postgres a
    second lookup of every job it had just updated."""
    logging = _logging(moved.c, event_type, True)
    notified = _logged_and_notified(logging, name=f"{moved.name}_logged", counted=False)
    return notified.scalar_subquery()


def _logging(
    row: Any,
    event_type: str,
    postgres: bool,
    *,
    where: ColumnElement[bool] | None = None,
    data: bool = True,
) -> Insert:
    """The INSERT ... SELECT of one ``event_type`` row per job of ``row`` (``jobs``'s columns
    or a move's RETURNING) matching ``where``; ``data=False`` leaves the data to the reader
    (``event_data``)."""
    rows = select(
        row.team_id,
        row.batch_id,
        row.id,
        literal(event_type),
        _job_data(postgres, row=row) if data else null(),
        # A parameter read at each run: the statement may be built once and run many times.
        bindparam("logged_at", callable_=utcnow, type_=JobEvent.created_at.type),
        txid_now() if postgres else null(),
    )
    columns = ["team_id", "batch_id", "job_id", "type", "data", "created_at", "txid"]
    return insert(JobEvent).from_select(columns, rows if where is None else rows.where(where))


def _logged_and_notified(logging: Any, name: str = "written", *, counted: bool = True) -> Any:
    """Postgres: the INSERT, the count of rows it wrote and the NOTIFY that wakes the streams
    at commit, in one statement (a 10,000-job change sends back one number; a task's claim
    and its success each took a round trip more with the NOTIFY apart). The payload is a
    batch id, or a team id for jobs outside a batch, and for all when a change touched more
    than ``MAX_NOTIFY_KEYS`` batches; Postgres folds a transaction's identical ones.
    ``counted=False``: the NOTIFY's count alone (``log_moved``'s one column)."""
    written = logging.returning(JobEvent.team_id, JobEvent.batch_id).cte(name)
    per = (
        select(written.c.team_id, written.c.batch_id, func.count().label("n"))
        .group_by(written.c.team_id, written.c.batch_id)
        .cte(f"{name}_per")
    )
    many = select(func.count()).select_from(per).scalar_subquery() > MAX_NOTIFY_KEYS
    key = case(
        (many, cast(per.c.team_id, Text)),
        else_=cast(func.coalesce(per.c.batch_id, per.c.team_id), Text),
    )
    keys = select(key.label("key")).distinct().cte(f"{name}_keys")
    rows = select(func.coalesce(func.sum(per.c.n), 0)).scalar_subquery()
    sent = func.count(func.pg_notify(CHANNEL, keys.c.key))
    # Counted, so every key's pg_notify runs; the INSERT runs whatever is read (a CTE's).
    return select(rows, sent).select_from(keys) if counted else select(sent).select_from(keys)


def prune_job_events(session: Session, older_than: datetime, limit: int = PRUNE_BATCH) -> int:
    """Delete up to ``limit`` events logged before ``older_than``, oldest first; returns how
    many (the dispatcher's housekeeping calls it until a chunk comes back short)."""
    return delete_oldest(session, JobEvent, older_than, limit)

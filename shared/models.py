"""Database tables: teams, their API keys, uploads and jobs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    FetchedValue,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    literal_column,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql import operators
from sqlalchemy.types import TypeDecorator

from shared.job_status import STATE_NAMES


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite hands back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class StatusName(TypeDecorator[str]):
    """``jobs.status``. Compared with a job state, it is written into the SQL as that
    literal (``status = 'queued'``), not sent as a parameter: psycopg prepares the farm's hot
    queries, and Postgres's generic plan for a prepared ``status = $1`` cannot use the
    partial indexes whose predicates name a state (ix_jobs_handed_over, ix_jobs_waiting,
    ix_jobs_team_unfinished), so it counted the handed-over jobs through every queued row of
    the model. Anything but a state's name (a client's filter, say) stays a parameter: only
    the fixed names of shared/job_status.py STATE_NAMES are ever written into SQL."""

    impl = String(16)
    cache_ok = True

    class comparator_factory(String.Comparator[str]):  # noqa: N801 - SQLAlchemy's hook name
        def operate(self, op: Any, *other: Any, **kwargs: Any) -> Any:
            if op in (operators.eq, operators.ne):
                other = tuple(_state_literal(o) for o in other)
            elif op in (operators.in_op, operators.not_in_op) and other:
                values = other[0]
                if isinstance(values, list | tuple | set | frozenset) and all(
                    v in STATE_NAMES for v in values
                ):
                    other = ([_state_literal(v) for v in sorted(values)], *other[1:])
            return super().operate(op, *other, **kwargs)


def _state_literal(value: Any) -> Any:
    """A state's name as a SQL literal; any other value as it came (a parameter)."""
    if isinstance(value, str) and value in STATE_NAMES:
        return literal_column(f"'{value}'", String(16))
    return value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON}


class Team(Base):
    __tablename__ = "teams"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Operator-set share and limits (issue 17): a team's share of each model's queue is
    # proportional to its weight while it has work; NULL limits mean unlimited.
    weight: Mapped[float] = mapped_column(Float, default=1.0, server_default="1")
    max_queued: Mapped[int | None] = mapped_column(Integer, default=None)
    max_batch: Mapped[int | None] = mapped_column(Integer, default=None)
    rate_per_second: Mapped[float | None] = mapped_column(Float, default=None)
    # The submission-rate token bucket: tokens left when last checked.
    rate_tokens: Mapped[float | None] = mapped_column(Float, default=None)
    rate_checked_at: Mapped[datetime | None] = mapped_column(default=None)
    monthly_images: Mapped[int | None] = mapped_column(Integer, default=None)
    # Finished jobs' outputs, sources and rows are pruned this many days after they finished.
    retention_days: Mapped[int] = mapped_column(Integer, default=30, server_default="30")


class ApiKey(Base):
    """Only a SHA-256 of the key is stored; the key itself is shown once at creation."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    # When a request last authenticated with it, to the minute (shared/teams.py): during a
    # rotation, ops see whether the old key is still in use before revoking it.
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    # admin: manage keys, webhooks and team settings; member: submit, read, review. Keys
    # made before scopes existed are admin (the migration's server default).
    scope: Mapped[str] = mapped_column(String(16), default="admin", server_default="admin")


class Upload(Base):
    """A source image a team uploaded once and may reference from many jobs."""

    __tablename__ = "uploads"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    object_key: Mapped[str] = mapped_column(String(512))
    filename: Mapped[str | None] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(64))
    width: Mapped[int]
    height: Mapped[int]
    size_bytes: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    """One render: a source image, a prompt and resolved parameters; the queue of record."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_team_created", "team_id", "created_at"),
        # Queued and running jobs by model: the farm gauges, a model's queue (migration 0018).
        Index(
            "ix_jobs_status_model",
            "status",
            "model",
            postgresql_where=text("status IN ('queued', 'running')"),
            sqlite_where=text("status IN ('queued', 'running')"),
        ),
        # The lease sweeps: only leased rows (a new job is not in it; migration 0015).
        Index(
            "ix_jobs_lease",
            "status",
            "lease_expires_at",
            postgresql_where=text("lease_expires_at IS NOT NULL"),
            sqlite_where=text("lease_expires_at IS NOT NULL"),
        ),
        # The dispatcher's working set, kept small by being partial: jobs waiting to be handed
        # over, read per model and team oldest first (fair share, dispatch/dispatcher.py), and
        # jobs handed over but not yet claimed (the room left in Redis, lost-message re-arm).
        # Without them every tick reads the whole backlog.
        # Priority before age (migration 0011): a team's jobs are read one class at a time.
        Index(
            "ix_jobs_waiting",
            "model",
            "team_id",
            "priority",
            "created_at",
            postgresql_where=text("status = 'queued' AND enqueued_at IS NULL"),
            sqlite_where=text("status = 'queued' AND enqueued_at IS NULL"),
        ),
        Index(
            "ix_jobs_waiting_interactive",
            "model",
            "team_id",
            postgresql_where=text(
                "status = 'queued' AND enqueued_at IS NULL AND priority = 'interactive'"
            ),
            sqlite_where=text(
                "status = 'queued' AND enqueued_at IS NULL AND priority = 'interactive'"
            ),
        ),
        # The pick's "teams with jobs created since" (dispatch/pick.py TEAMS; migration 0015).
        Index(
            "ix_jobs_waiting_created",
            "model",
            "created_at",
            postgresql_where=text("status = 'queued' AND enqueued_at IS NULL"),
            sqlite_where=text("status = 'queued' AND enqueued_at IS NULL"),
        ),
        # Observed throughput per model (shared/throughput.py).
        Index(
            "ix_jobs_model_finished",
            "model",
            "finished_at",
            postgresql_where=text("finished_at IS NOT NULL"),
            sqlite_where=text("finished_at IS NOT NULL"),
        ),
        Index(
            "ix_jobs_handed_over",
            "model",
            "enqueued_at",
            postgresql_where=text("status = 'queued' AND enqueued_at IS NOT NULL"),
            sqlite_where=text("status = 'queued' AND enqueued_at IS NOT NULL"),
        ),
        # A batch's counts and cancel/retry filter by (batch_id, status); its job listing
        # pages by (batch_id, id). Partial: single jobs (batch_id NULL) stay out of both.
        Index(
            "ix_jobs_batch_status",
            "batch_id",
            "status",
            postgresql_where=text("batch_id IS NOT NULL"),
            sqlite_where=text("batch_id IS NOT NULL"),
        ),
        Index(
            "ix_jobs_batch_id",
            "batch_id",
            "id",
            postgresql_where=text("batch_id IS NOT NULL"),
            sqlite_where=text("batch_id IS NOT NULL"),
        ),
        # A batch's review counts and its listing filtered by review state: reviewed rows only
        # (a new job has no review state; migration 0015).
        Index(
            "ix_jobs_batch_review",
            "batch_id",
            "review",
            postgresql_where=text("batch_id IS NOT NULL AND review IS NOT NULL"),
            sqlite_where=text("batch_id IS NOT NULL AND review IS NOT NULL"),
        ),
        # A team's queued and running jobs, counted by its quotas at intake (migration 0012).
        Index(
            "ix_jobs_team_unfinished",
            "team_id",
            postgresql_where=text("status IN ('queued', 'running')"),
            sqlite_where=text("status IN ('queued', 'running')"),
        ),
    )

    # A bulk insert (shared/bulk.py) leaves the id to Postgres (gen_random_uuid(), migration
    # 0014); the ORM and SQLite draw uuid4 here.
    id: Mapped[uuid.UUID] = mapped_column(
        Uuid, primary_key=True, default=uuid.uuid4, server_default=FetchedValue()
    )
    # No foreign keys on this hot table (nor on job_events): each cost a lookup and a lock on
    # the parent per row written (migration 0014 says why nothing needs them).
    team_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    model: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(StatusName(), default="queued")
    prompt: Mapped[str] = mapped_column(Text)
    negative_prompt: Mapped[str | None] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    source_key: Mapped[str] = mapped_column(String(512))
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    worker: Mapped[str | None] = mapped_column(String(255), default=None)
    outputs: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=None)
    provenance: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column(default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    # Earliest time the dispatcher may hand the job over again (backoff after a transient error).
    not_before: Mapped[datetime | None] = mapped_column(default=None)
    # Batch membership (all NULL for a single job): which batch, and the job's place in its
    # images x prompts x variants grid, which also names its file in the archive.
    batch_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, default=None)
    sku: Mapped[str | None] = mapped_column(String(100), default=None)
    prompt_name: Mapped[str | None] = mapped_column(String(100), default=None)
    variant: Mapped[int | None] = mapped_column(Integer, default=None)
    # Webhooks (shared/events.py): where this job's own events are sent, signed with the
    # team's webhook secret.
    webhook_url: Mapped[str | None] = mapped_column(String(2048), default=None)
    # Inpaint jobs given a mask: its content-addressed key, stored like the source.
    mask_key: Mapped[str | None] = mapped_column(String(512), default=None)
    # Trust (issue 15): the output's scores against its source; its review state (NULL until
    # it rendered; passed | needs_review, then approved | rejected by a person), who decided
    # (an api key id), when and why; earlier attempts' outputs kept by a rerender.
    fidelity: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    review: Mapped[str | None] = mapped_column(String(16), default=None)
    review_note: Mapped[str | None] = mapped_column(Text, default=None)
    reviewed_by: Mapped[uuid.UUID | None] = mapped_column(Uuid, default=None)
    reviewed_at: Mapped[datetime | None] = mapped_column(default=None)
    history: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=None)
    # interactive | standard | bulk (issue 17).
    priority: Mapped[str] = mapped_column(String(16), default="standard", server_default="standard")


class Worker(Base):
    """A render worker process, as its heartbeat last described it."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    model: Mapped[str] = mapped_column(String(100), index=True)
    device: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(default=None)


class Batch(Base):
    """Images x prompts x variants jobs created by one request, sharing a model and params."""

    __tablename__ = "batches"
    __table_args__ = (
        Index("ix_batches_team_created", "team_id", "created_at", "id"),
        # Batches whose deadline may still raise their urgency (dispatch/urgency.py).
        Index(
            "ix_batches_open_deadline",
            "model",
            "deadline",
            postgresql_where=text("deadline IS NOT NULL AND completed_at IS NULL"),
            sqlite_where=text("deadline IS NOT NULL AND completed_at IS NULL"),
        ),
        # Batches a team deleted whose rows and objects are still being removed (the
        # dispatcher's sweep finishes them; migration 0017).
        Index(
            "ix_batches_deleting",
            "deleting_at",
            postgresql_where=text("deleting_at IS NOT NULL"),
            sqlite_where=text("deleting_at IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(100))
    # Every job's seed is derived from this one (api/batches.py derive_seed).
    seed: Mapped[int] = mapped_column(BigInteger)
    # The resolved shared params (RenderParams without the per-job seed).
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    image_count: Mapped[int] = mapped_column(Integer)
    prompt_count: Mapped[int] = mapped_column(Integer)
    variants: Mapped[int] = mapped_column(Integer)
    job_count: Mapped[int] = mapped_column(Integer)
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    canceled_at: Mapped[datetime | None] = mapped_column(default=None)
    # Webhooks (shared/events.py): the batch's own URL; when its last job reached a final
    # state (set once by a conditional UPDATE, so batch.completed is sent exactly once); the
    # last batch.progress event.
    webhook_url: Mapped[str | None] = mapped_column(String(2048), default=None)
    completed_at: Mapped[datetime | None] = mapped_column(default=None)
    progress_sent_at: Mapped[datetime | None] = mapped_column(default=None)
    # Review thresholds overriding the model's ({min_structure, max_colour_drift}); when every
    # output was last seen passed, approved or rejected (batch.reviewed, once per round).
    review: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    reviewed_at: Mapped[datetime | None] = mapped_column(default=None)
    priority: Mapped[str] = mapped_column(String(16), default="standard", server_default="standard")
    deadline: Mapped[datetime | None] = mapped_column(default=None)
    # Set by DELETE /v1/batches/{id}: from then on the batch reads as gone (404) while what
    # is left of it is removed (shared/prune.py delete_batch).
    deleting_at: Mapped[datetime | None] = mapped_column(default=None)


class IdempotencyKey(Base):
    """The first answer to a POST sent with an ``Idempotency-Key``, replayed for retries.

    The row is inserted before the work, in the same transaction, so the unique constraint
    makes a concurrent retry wait for (and then replay) the first request's answer. It
    expires after ``idempotency_ttl_seconds`` and is pruned some time after.
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        UniqueConstraint("team_id", "key", name="uq_idempotency_keys_team_key"),
        # Pruning expired keys (shared/idempotency.py) deletes by age.
        Index("ix_idempotency_keys_created", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    # SHA-256 of the route and the canonical (parsed, re-serialised) request body.
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    response: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- Webhooks (shared/events.py, shared/webhooks.py, worker/webhooks.py) ---------------------


class WebhookEndpoint(Base):
    """A team's registered receiver: a URL, the events it wants, its signing secret(s).

    During a rotation's overlap ``previous_secret`` still signs too (until it expires).
    """

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_team", "team_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[str]] = mapped_column(JSON)
    description: Mapped[str | None] = mapped_column(String(255), default=None)
    secret: Mapped[str] = mapped_column(String(100))
    previous_secret: Mapped[str | None] = mapped_column(String(100), default=None)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set when the receiver answered 410 Gone: nothing more is sent until re-enabled.
    disabled_at: Mapped[datetime | None] = mapped_column(default=None)
    disabled_reason: Mapped[str | None] = mapped_column(String(255), default=None)


class TeamWebhookSecret(Base):
    """The secret that signs events sent to a job's or batch's own ``webhook_url``."""

    __tablename__ = "team_webhook_secrets"

    team_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True
    )
    secret: Mapped[str] = mapped_column(String(100))
    previous_secret: Mapped[str | None] = mapped_column(String(100), default=None)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """One event for one receiver: the outbox row and its durable retry schedule.

    Written in the transaction that changed the job, so no event is lost and none is sent
    for a change that rolled back. ``body`` is the exact JSON sent on every attempt.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_team", "team_id", "created_at", "id"),
        Index("ix_webhook_deliveries_event", "event_id"),
        # The scheduler's question: which pending deliveries are due (partial: the delivered
        # and dead-lettered history stays out of it).
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    # NULL for a job's or batch's own webhook_url (signed with the team secret).
    endpoint_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), default=None
    )
    event_id: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(32))
    job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, default=None)
    batch_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, default=None)
    url: Mapped[str] = mapped_column(String(2048))
    body: Mapped[str] = mapped_column(Text)
    # pending → delivered | failed (refused for good) | dead (every attempt used)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=utcnow)
    # Hand-over to the Celery queue and the running attempt's lease (worker/webhooks.py).
    token: Mapped[str | None] = mapped_column(String(32), default=None)
    dispatched_at: Mapped[datetime | None] = mapped_column(default=None)
    locked_until: Mapped[datetime | None] = mapped_column(default=None)
    last_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
    last_status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    last_latency_ms: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)


class WebhookAttempt(Base):
    """One HTTP attempt of a delivery: the log behind ``GET /v1/webhooks/deliveries/{id}``."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_delivery", "delivery_id", "started_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    delivery_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE")
    )
    attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    latency_ms: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    # What the attempt led to: delivered, retry, failed, dead or disabled.
    outcome: Mapped[str] = mapped_column(String(16))


class UsageMonthly(Base):
    """Images rendered and GPU-seconds spent per team, month (``YYYY-MM``) and model.

    Kept apart from the jobs so the month's usage survives pruning of old rows.
    """

    __tablename__ = "usage_monthly"

    team_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True
    )
    month: Mapped[str] = mapped_column(String(7), primary_key=True)
    model: Mapped[str] = mapped_column(String(100), primary_key=True)
    images: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    gpu_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")


class JobEvent(Base):
    """One change of a job or batch as live streams tell it: the append-only event log.

    Written by shared/job_events.py in the transaction of the change; the id orders the log
    and is the stream's event id (``Last-Event-ID`` resumes after it).
    """

    __tablename__ = "job_events"
    __table_args__ = (
        Index(
            "ix_job_events_batch",
            "batch_id",
            "txid",
            "id",
            postgresql_where=text("batch_id IS NOT NULL"),
            sqlite_where=text("batch_id IS NOT NULL"),
        ),
        Index("ix_job_events_job", "job_id", "txid", "id"),
        # Retention deletes by age (dispatch/housekeeping): a BRIN on Postgres, as the log is
        # append-only (migration 0016).
        Index(
            "ix_job_events_created",
            "created_at",
            postgresql_using="brin",
            postgresql_with={"autosummarize": "on"},
        ),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), Identity(always=False), primary_key=True
    )
    team_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    batch_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, default=None)
    job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, default=None)
    # job.queued | job.running | job.succeeded | job.failed | job.canceled | job.reviewed ...
    type: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The writing transaction's id (Postgres ``pg_current_xact_id``; NULL on SQLite, whose
    # writers take turns). Ids are handed out before commit, so a later id can commit first:
    # streams read in (txid, id) order up to the oldest running transaction instead.
    txid: Mapped[int | None] = mapped_column(BigInteger, default=None)


class Adapter(Base):
    """A team's brand style adapter: LoRA weights (a safetensors file) under a name.

    The file is stored content-addressed (shared/adapters.py); a job pins the digest when it
    is accepted, so registering the name again changes new jobs only. Not job data: pruning
    and deleting a batch leave it (the team removes it with DELETE /v1/adapters/{name}).
    """

    __tablename__ = "adapters"
    __table_args__ = (UniqueConstraint("team_id", "name", name="uq_adapters_team_name"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    sha256: Mapped[str] = mapped_column(String(64))
    object_key: Mapped[str] = mapped_column(String(512))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

"""The dispatcher: hands committed jobs from Postgres to their model's Redis queue.

Postgres is the queue of record; Redis only ever holds a few batches per online worker.
Each tick (on a NOTIFY from the api, or every ``dispatch_poll_seconds``):

1. take back running jobs whose lease expired (worker killed, OOM, machine gone);
2. re-arm jobs handed over long ago but never claimed (lost with a Redis restart);
3. for each model, pick the oldest waiting jobs (``FOR UPDATE SKIP LOCKED``, so two
   dispatchers never pick the same rows), group compatible ones into batches, send them.

A job sent twice (two dispatchers racing, a crash between send and commit) is harmless:
the render task claims with a conditional UPDATE and skips what it cannot claim.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from celery import Celery
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.broker import send_render
from shared.db import session_scope
from shared.dispatch import CHANNEL
from shared.events import JOB_FAILED, emit_job_events
from shared.jobs import JobStatus, expire_leases
from shared.models import Job, Worker, utcnow
from shared.registry import ModelSpec
from shared.settings import Settings

log = logging.getLogger(__name__)
UNKNOWN_MODEL_ERROR = "model {model!r} is no longer in the registry"


def compatibility_key(params: dict[str, Any]) -> tuple[Any, ...]:
    """Jobs render in one pipeline call only if these match (prompts and seeds may differ)."""
    return (
        params["steps"],
        params["strength"],
        params["guidance_scale"],
        params["width"],
        params["height"],
    )


def group_compatible(
    jobs: Iterable[tuple[uuid.UUID, dict[str, Any]]], max_batch: int
) -> list[list[uuid.UUID]]:
    """Batches of at most ``max_batch`` compatible jobs, oldest first."""
    groups: dict[tuple[Any, ...], list[uuid.UUID]] = defaultdict(list)
    batches: list[list[uuid.UUID]] = []
    for job_id, params in jobs:
        group = groups[compatibility_key(params)]
        group.append(job_id)
        if len(group) == max_batch:
            batches.append(list(group))
            group.clear()
    batches.extend(g for g in groups.values() if g)
    return batches


@dataclass
class TickStats:
    sent_jobs: int = 0
    sent_batches: int = 0
    requeued: int = 0
    failed: int = 0
    rearmed: int = 0
    errors: list[str] = field(default_factory=list)


class Dispatcher:
    """One dispatcher process; several may run at once safely."""

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        celery: Celery,
        registry: dict[str, ModelSpec],
        on_tick: Callable[[Session], None] | None = None,
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.celery = celery
        self.registry = registry
        self.on_tick = on_tick

    def tick(self) -> TickStats:
        stats = TickStats()
        with session_scope(self.session_factory) as session:
            stats.requeued, stats.failed = expire_leases(session, self.settings.max_attempts)
            stats.rearmed = self._rearm_lost(session)
        with self.session_factory() as session:
            models = self._models_waiting(session)
        for model in models:
            self._dispatch_model(model, stats)
        if self.on_tick is not None:
            with self.session_factory() as session:
                self.on_tick(session)
        if stats.sent_jobs or stats.requeued or stats.failed or stats.rearmed:
            log.info(
                "dispatched %d job(s) in %d batch(es); leases expired: %d requeued, %d failed;"
                " %d re-armed",
                stats.sent_jobs,
                stats.sent_batches,
                stats.requeued,
                stats.failed,
                stats.rearmed,
            )
        return stats

    def _rearm_lost(self, session: Session) -> int:
        cutoff = utcnow() - timedelta(seconds=self.settings.redispatch_seconds)
        result = session.execute(
            update(Job)
            .where(Job.status == JobStatus.QUEUED.value, Job.enqueued_at < cutoff)
            .values(enqueued_at=None)
            .execution_options(synchronize_session=False)
        )
        return result.rowcount  # type: ignore[attr-defined, no-any-return]

    def _models_waiting(self, session: Session) -> list[str]:
        return list(
            session.scalars(
                select(Job.model)
                .where(Job.status == JobStatus.QUEUED.value, Job.enqueued_at.is_(None))
                .distinct()
            )
        )

    def _online_workers(self, session: Session, model: str) -> int:
        fresh = utcnow() - timedelta(seconds=max(10, self.settings.lease_seconds))
        return (
            session.scalar(
                select(func.count())
                .select_from(Worker)
                .where(
                    Worker.model == model, Worker.last_seen_at > fresh, Worker.stopped_at.is_(None)
                )
            )
            or 0
        )

    def _dispatch_model(self, model: str, stats: TickStats) -> None:
        spec = self.registry.get(model)
        with session_scope(self.session_factory) as session:
            if spec is None:
                self._fail_unknown_model(session, model)
                return
            # 1. how much room is left in this model's Redis queue
            in_flight = (
                session.scalar(
                    select(func.count())
                    .select_from(Job)
                    .where(
                        Job.model == model,
                        Job.status == JobStatus.QUEUED.value,
                        Job.enqueued_at.is_not(None),
                    )
                )
                or 0
            )
            depth = self.settings.dispatch_depth_per_worker * max(
                1, self._online_workers(session, model)
            )
            room = depth * spec.max_batch - in_flight
            if room <= 0:
                return
            # 2. the oldest waiting jobs, locked so a second dispatcher skips them
            now = utcnow()
            rows = session.execute(
                select(Job.id, Job.params)
                .where(
                    Job.model == model,
                    Job.status == JobStatus.QUEUED.value,
                    Job.enqueued_at.is_(None),
                    or_(Job.not_before.is_(None), Job.not_before <= now),
                )
                .order_by(Job.created_at)
                .limit(room)
                .with_for_update(skip_locked=True)
            ).all()
            # 3. send compatible groups; mark exactly what reached the broker
            valid = self._drop_malformed(session, rows)
            sent: list[uuid.UUID] = []
            try:
                for batch in group_compatible(valid, spec.max_batch):
                    send_render(self.celery, [str(i) for i in batch], model)
                    sent.extend(batch)
                    stats.sent_batches += 1
            except Exception as e:  # kombu raises many types for "broker unreachable"
                stats.errors.append(f"{model}: {e}")
                log.warning(
                    "broker unavailable; %s job(s) wait in Postgres: %s", len(rows) - len(sent), e
                )
            if sent:
                session.execute(
                    update(Job)
                    .where(Job.id.in_(sent), Job.status == JobStatus.QUEUED.value)
                    .values(enqueued_at=now)
                    .execution_options(synchronize_session=False)
                )
            stats.sent_jobs += len(sent)

    def _drop_malformed(
        self, session: Session, rows: Iterable[Any]
    ) -> list[tuple[uuid.UUID, dict[str, Any]]]:
        """Fail rows whose params cannot be rendered, so one bad row never blocks a model."""
        valid, bad = [], []
        for row in rows:
            try:
                compatibility_key(row.params)
            except (KeyError, TypeError):
                bad.append(row.id)
            else:
                valid.append((row.id, row.params))
        if bad:
            log.error("failing %d job(s) with malformed params: %s", len(bad), bad)
            failed_ids = list(
                session.scalars(
                    update(Job)
                    .where(Job.id.in_(bad), Job.status == JobStatus.QUEUED.value)
                    .values(
                        status=JobStatus.FAILED.value,
                        error="invalid render parameters (missing steps/strength/size)",
                        finished_at=utcnow(),
                    )
                    .returning(Job.id)
                    .execution_options(synchronize_session=False)
                )
            )
            emit_job_events(session, failed_ids, JOB_FAILED)
        return valid

    def _fail_unknown_model(self, session: Session, model: str) -> None:
        failed_ids = list(
            session.scalars(
                update(Job)
                .where(Job.model == model, Job.status == JobStatus.QUEUED.value)
                .values(
                    status=JobStatus.FAILED.value,
                    error=UNKNOWN_MODEL_ERROR.format(model=model),
                    finished_at=utcnow(),
                )
                .returning(Job.id)
                .execution_options(synchronize_session=False)
            )
        )
        # webhooks: job.failed events commit with the failure (transactional outbox).
        emit_job_events(session, failed_ids, JOB_FAILED)

    def run(self, stop: threading.Event) -> None:
        """Tick until ``stop`` is set, woken early by NOTIFY where the database has it."""
        waiter = NotifyWaiter(self.settings.database_url)
        try:
            while not stop.is_set():
                try:
                    self.tick()
                except Exception:  # a database restart must not end the dispatcher
                    log.exception("dispatch tick failed; retrying")
                    stop.wait(1.0)
                waiter.wait(self.settings.dispatch_poll_seconds, stop)
        finally:
            waiter.close()


class NotifyWaiter:
    """Sleep until a ``NOTIFY imgfarm_dispatch`` or a timeout; a plain sleep off Postgres."""

    def __init__(self, database_url: str) -> None:
        self.url = (
            database_url.replace("postgresql+psycopg://", "postgresql://", 1)
            if database_url.startswith("postgresql")
            else None
        )
        self.conn: Any = None

    def _connect(self) -> Any:
        import psycopg

        if self.conn is None or self.conn.closed:
            self.conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
            self.conn.execute(f"LISTEN {CHANNEL}")
        return self.conn

    def wait(self, timeout: float, stop: threading.Event) -> None:
        if self.url is None:
            stop.wait(timeout)
            return
        try:
            conn = self._connect()
            for _ in conn.notifies(timeout=timeout, stop_after=1):
                pass
            # Drain the burst: 10,000 inserts' worth of NOTIFYs need one tick, not 10,000.
            for _ in conn.notifies(timeout=0.005):
                pass
        except Exception as e:  # Postgres restarting: fall back to polling, reconnect later
            log.warning("LISTEN connection lost (%s); polling", e)
            self.close()
            stop.wait(timeout)

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None

"""The dispatcher: hands committed jobs from Postgres to their model's Redis queue.

Postgres is the queue of record; Redis only ever holds a few batches per online worker.
Each tick (on a NOTIFY from the api, or every ``dispatch_poll_seconds``):

1. take back running jobs whose lease expired (worker killed, OOM, machine gone);
2. re-arm jobs handed over but never claimed: at once if the worker that noted it holds
   them (prefetched, unacked in Redis for an hour) has been gone for a lease or stopped,
   otherwise after ``redispatch_seconds`` (their message was lost with a Redis restart);
   and remove what a worker that died mid-upload left of jobs canceled while running;
3. for each model, pick waiting jobs fairly between teams (below), lock them with
   ``FOR UPDATE SKIP LOCKED`` (two dispatchers never pick the same rows), group compatible
   ones into batches, send them.

Fair share: the room left in a model's queue is filled round-robin across the teams that
have jobs waiting for it. Each team's jobs go oldest first; round one takes every team's
oldest job, round two every team's second oldest, and so on, and within a round the older
job goes first. So a team with one job behind another team's 10,000 is handed over in the
next tick that has room, and a team alone still fills all of it. Rows another dispatcher
has locked are skipped, not replaced: that tick hands over fewer jobs, the next one catches
up.

A job sent twice (two dispatchers racing, a crash between send and commit) is harmless:
the render task claims with a conditional UPDATE and skips what it cannot claim.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from sqlalchemy import (
    CTE,
    ColumnElement,
    ScalarSelect,
    Select,
    Subquery,
    func,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.orm import Session, aliased, sessionmaker

from shared.batching import compatibility_key, group_compatible
from shared.broker import BROKER_UNAVAILABLE, send_render
from shared.db import session_scope
from shared.dispatch import CHANNEL
from shared.errors import StorageError, TransientError
from shared.idempotency import expiry_cutoff, prune_idempotency_keys
from shared.images import EXTENSIONS
from shared.jobs import (
    JobStatus,
    canceled_with_outputs,
    expire_leases,
    fail_queued_of_model,
    mark_failed_bulk,
    outputs_removed,
    rearm_reserved_by_lost_workers,
    rearm_unclaimed,
)
from shared.models import Job, utcnow
from shared.registry import ModelSpec
from shared.settings import Settings
from shared.staging import sweep_staging
from shared.storage import S3Storage, Storage, output_key, storage_from_settings
from shared.workers import online_workers_by_model

log = logging.getLogger(__name__)
UNKNOWN_MODEL_ERROR = "model {model!r} is no longer in the registry"
# Canceled jobs whose outputs one tick removes at most (one delete each).
SWEEP_OUTPUTS_PER_TICK = 100


PRUNE_EVERY_SECONDS = 60.0

MODELS_WAITING = text(
    """
    WITH RECURSIVE waiting(model) AS (
        SELECT min(model) FROM jobs WHERE status = 'queued' AND enqueued_at IS NULL
        UNION ALL
        SELECT (SELECT min(j.model) FROM jobs j
                WHERE j.status = 'queued' AND j.enqueued_at IS NULL AND j.model > w.model)
        FROM waiting w WHERE w.model IS NOT NULL
    )
    SELECT model FROM waiting
    """
)


def waiting_clauses(jobs: type[Job], model: str, now: datetime) -> list[ColumnElement[bool]]:
    """Rows of ``jobs`` (``Job`` or an alias) the dispatcher may hand over at ``now``."""
    return [
        jobs.model == model,
        jobs.status == JobStatus.QUEUED.value,
        jobs.enqueued_at.is_(None),
        or_(jobs.not_before.is_(None), jobs.not_before <= now),
    ]


def fair_pick(model: str, room: int, now: datetime, *, lateral: bool) -> Subquery:
    """Ids of at most ``room`` waiting jobs of ``model``, taken round-robin across teams.

    Columns: ``id``, ``turn`` (1 for each team's oldest job, 2 for its second...) and
    ``created_at``; order by those three for the fair order. Nothing is locked here.
    """
    candidates = (
        _oldest_per_team(model, room, now) if lateral else _all_waiting(model, now)
    ).subquery("candidates")
    ranked = select(
        candidates.c.id,
        candidates.c.created_at,
        func.row_number()
        .over(
            partition_by=candidates.c.team_id,
            order_by=(candidates.c.created_at, candidates.c.id),
        )
        .label("turn"),
    ).subquery("ranked")
    return (
        select(ranked.c.id, ranked.c.turn, ranked.c.created_at)
        .order_by(ranked.c.turn, ranked.c.created_at, ranked.c.id)
        .limit(room)
        .subquery("picked")
    )


def select_to_dispatch(
    model: str, room: int, now: datetime, *, lateral: bool
) -> Select[uuid.UUID, dict[str, Any]]:
    """Lock and return (id, params) of the jobs ``fair_pick`` chose, in the fair order.

    Postgres refuses FOR UPDATE next to window functions, so the ranking is a subquery and
    only the outer rows are locked. Rows another dispatcher holds are skipped (fewer jobs
    this tick); rows it changed since the ranking read them are re-checked against the
    outer WHERE, so a job it already handed over is not taken again.
    """
    picked = fair_pick(model, room, now, lateral=lateral)
    return (
        select(Job.id, Job.params)
        .join(picked, picked.c.id == Job.id)
        .where(*waiting_clauses(Job, model, now))
        .order_by(picked.c.turn, picked.c.created_at, picked.c.id)
        .with_for_update(skip_locked=True, of=Job)
    )


def _teams_waiting(model: str) -> CTE:
    """The teams with jobs waiting for ``model`` (column ``team_id``, a trailing NULL ends
    it): a loose index scan of ix_jobs_waiting, one probe per such team, however many teams
    exist. Reading the ``teams`` table instead costs a probe per team in the farm: with
    20,000 teams that tick took ~1 s, most of it Postgres JIT-compiling the big plan."""

    def next_team(after: ColumnElement[Any] | None) -> ScalarSelect[Any]:
        jobs = aliased(Job)
        query = select(jobs.team_id).where(
            jobs.model == model,
            jobs.status == JobStatus.QUEUED.value,
            jobs.enqueued_at.is_(None),
        )
        if after is not None:
            query = query.where(jobs.team_id > after)
        # ORDER BY ... LIMIT 1, not min(): Postgres has no min() over uuid.
        return query.order_by(jobs.team_id).limit(1).scalar_subquery()

    teams = select(next_team(None).label("team_id")).cte("teams_waiting", recursive=True)
    return teams.union_all(select(next_team(teams.c.team_id)).where(teams.c.team_id.is_not(None)))


def _oldest_per_team(
    model: str, room: int, now: datetime
) -> Select[uuid.UUID, uuid.UUID, datetime]:
    """Each team's ``room`` oldest waiting jobs: one index range scan per team with jobs
    waiting for ``model`` (``_teams_waiting``).

    A team never gets more than ``room``, so ranking these is the same as ranking the whole
    backlog, without reading it. Postgres only (LATERAL).
    """
    teams = _teams_waiting(model)
    first, per_team = aliased(Job), aliased(Job)
    # enqueued_at is NULL in every matched row, so ordering by it changes nothing; but it
    # lets Postgres walk ix_jobs_dispatch in order instead of sorting the whole backlog.
    oldest = (
        select(first.created_at)
        .where(*waiting_clauses(first, model, now))
        .order_by(first.enqueued_at, first.created_at)
        .limit(1)
        .scalar_subquery()
    )
    # Each probe is a range scan of ix_jobs_waiting (model, team_id, created_at over waiting
    # rows, migration 0007): it reads only what it returns. The lower bound at the model's
    # oldest waiting job keeps the probe cheap on the older ix_jobs_team_created too.
    team_jobs = (
        select(per_team.id, per_team.team_id, per_team.created_at)
        .where(
            per_team.team_id == teams.c.team_id,
            per_team.created_at >= oldest,
            *waiting_clauses(per_team, model, now),
        )
        .order_by(per_team.created_at, per_team.id)
        .limit(room)
        .lateral("team_jobs")
    )
    return select(team_jobs.c.id, team_jobs.c.team_id, team_jobs.c.created_at).select_from(
        teams.join(team_jobs, true())
    )


def _all_waiting(model: str, now: datetime) -> Select[uuid.UUID, uuid.UUID, datetime]:
    """Every waiting job of ``model``: for SQLite (no LATERAL), whose embedded backlog is small."""
    jobs = aliased(Job)
    return select(jobs.id, jobs.team_id, jobs.created_at).where(*waiting_clauses(jobs, model, now))


@dataclass
class TickStats:
    sent_jobs: int = 0
    sent_batches: int = 0
    requeued: int = 0
    failed: int = 0
    rearmed: int = 0
    outputs_removed: int = 0
    errors: list[str] = field(default_factory=list)


class Dispatcher:
    """One dispatcher process; several may run at once safely."""

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        celery: Celery,
        registry: dict[str, ModelSpec],
        on_tick: Callable[[Session], object] | None = None,
        storage: Storage | None = None,
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.celery = celery
        self.registry = registry
        self.on_tick = on_tick
        self._storage = storage
        self._pruned_at = -PRUNE_EVERY_SECONDS

    def tick(self) -> TickStats:
        stats = TickStats()
        with session_scope(self.session_factory) as session:
            stats.requeued, stats.failed = expire_leases(session, self.settings.max_attempts)
            stats.rearmed = self._rearm_lost(session)
        stats.outputs_removed = self._remove_canceled_outputs()
        self._housekeeping()
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
        # Reserved by a dead worker: its message is unacked in Redis for an hour; a lease
        # after its last heartbeat is when its running jobs come back too.
        held = rearm_reserved_by_lost_workers(session, self.settings.lease_seconds)
        cutoff = utcnow() - timedelta(seconds=self.settings.redispatch_seconds)
        return held + rearm_unclaimed(session, cutoff)

    @property
    def storage(self) -> Storage:
        if self._storage is None:  # built on first use: most ticks never need it
            self._storage = storage_from_settings(self.settings)
        return self._storage

    def _remove_canceled_outputs(self) -> int:
        """Delete the outputs a worker stored for a job canceled meanwhile and then died
        before removing; a delete that fails is tried again next tick."""
        with session_scope(self.session_factory) as session:
            removed = []
            for job_id, team_id, fmt in canceled_with_outputs(session, SWEEP_OUTPUTS_PER_TICK):
                ext = EXTENSIONS.get(fmt)  # none: malformed params, nothing was rendered
                try:
                    if ext is not None:
                        self.storage.delete(output_key(team_id, job_id, 0, ext))
                except (StorageError, TransientError) as e:
                    # The store is away: one warning a tick, not one per job.
                    log.warning("could not remove outputs of canceled job %s: %s", job_id, e)
                    break
                removed.append(job_id)
            outputs_removed(session, removed)
        return len(removed)

    def _housekeeping(self) -> None:
        # Expired Idempotency-Keys replay nothing any more and stale staged uploads can no
        # longer be completed: removing them only bounds a table and a bucket prefix, so
        # once a minute is plenty; ticks come on every submission's NOTIFY.
        if time.monotonic() - self._pruned_at < PRUNE_EVERY_SECONDS:
            return
        with session_scope(self.session_factory) as session:
            prune_idempotency_keys(session, expiry_cutoff(self.settings.idempotency_ttl_seconds))
        self._sweep_staged_uploads()
        self._pruned_at = time.monotonic()

    def _sweep_staged_uploads(self) -> None:
        if not isinstance(self.storage, S3Storage):
            return  # presigned uploads exist only on S3
        try:
            swept = sweep_staging(self.storage, utcnow(), self.settings.presign_expiry_seconds)
        except (StorageError, TransientError) as e:  # the next minute tries again
            log.warning("could not sweep staged uploads: %s", e)
            return
        if swept:
            log.info("swept %d staged upload(s) older than their PUT URL", swept)

    def _models_waiting(self, session: Session) -> list[str]:
        # A loose index scan over ix_jobs_waiting: one probe per distinct model, where
        # SELECT DISTINCT would read every waiting row (55-72 ms per tick at 220k jobs).
        return [m for m in session.scalars(MODELS_WAITING) if m is not None]

    def _online_workers(self, session: Session, model: str) -> int:
        # The same "online" the api tells clients about (shared/workers.py).
        online = online_workers_by_model(session, self.settings.lease_seconds, [model])
        return len(online.get(model, []))

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
            # 2. waiting jobs round-robin across teams, locked so a second dispatcher skips them
            now = utcnow()
            lateral = session.get_bind().dialect.name == "postgresql"
            if lateral:
                # The planner guesses each team's probe far costlier than it is, which can cross
                # jit_above_cost: compiling then takes ~20 ms for a query that runs in ~1 ms.
                session.execute(text("SET LOCAL jit = off"))
            rows = session.execute(select_to_dispatch(model, room, now, lateral=lateral)).all()
            # 3. send compatible groups; mark exactly what reached the broker
            valid = self._drop_malformed(session, rows)
            sent: list[uuid.UUID] = []
            try:
                for batch in group_compatible(valid, spec.max_batch):
                    send_render(self.celery, [str(i) for i in batch], model)
                    sent.extend(batch)
                    stats.sent_batches += 1
            except BROKER_UNAVAILABLE as e:
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
            mark_failed_bulk(
                session,
                bad,
                "invalid render parameters (missing steps/strength/size)",
                source=JobStatus.QUEUED,
            )
        return valid

    def _fail_unknown_model(self, session: Session, model: str) -> None:
        fail_queued_of_model(session, model, UNKNOWN_MODEL_ERROR.format(model=model))

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

    def _connect(self, url: str) -> Any:
        import psycopg

        if self.conn is None or self.conn.closed:
            self.conn = psycopg.connect(url, autocommit=True, connect_timeout=5)
            self.conn.execute(f"LISTEN {CHANNEL}")
        return self.conn

    def wait(self, timeout: float, stop: threading.Event) -> None:
        if self.url is None:
            stop.wait(timeout)
            return
        try:
            conn = self._connect(self.url)
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

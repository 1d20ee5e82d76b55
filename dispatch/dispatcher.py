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

Fair share (dispatch/fair_share.py, read by dispatch/pick.py): the room left in a model's
queue goes to the teams with jobs waiting in proportion to their weights (stride
scheduling: the team least served for its weight goes next), each team's own jobs by
priority then age; interactive jobs may go ahead of other teams' turns in at most 3 of
every 4 slots; a batch whose ETA reaches its deadline counts one class up
(dispatch/urgency.py). Rows another dispatcher has locked are skipped, not replaced: that
tick hands over fewer jobs, the next one catches up.

A job sent twice (two dispatchers racing, a crash between send and commit) is harmless:
the render task claims with a conditional UPDATE and skips what it cannot claim.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from celery import Celery
from sqlalchemy import bindparam, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from dispatch.fair_share import FairShare
from dispatch.pick import Waiting, pick
from dispatch.urgency import DeadlineWatch
from shared.batching import compatibility_key, group_compatible
from shared.broker import BROKER_UNAVAILABLE, send_render
from shared.db import session_scope
from shared.dispatch import CHANNEL, nudged_models
from shared.errors import StorageError, TransientError
from shared.idempotency import expiry_cutoff, prune_idempotency_keys
from shared.images import EXTENSIONS
from shared.job_events import PRUNE_BATCH as EVENT_PRUNE_BATCH
from shared.job_events import prune_job_events
from shared.jobs import (
    CanceledAttempt,
    JobStatus,
    canceled_with_outputs,
    expire_leases,
    fail_queued_of_model,
    mark_failed_bulk,
    outputs_removed,
    rearm_reserved_by_lost_workers,
    rearm_unclaimed,
    unsend,
)
from shared.models import Batch, Job, Worker, utcnow
from shared.presets import load_presets
from shared.prune import delete_batch, prune
from shared.registry import ModelSpec
from shared.settings import Settings
from shared.staging import sweep_staging
from shared.storage import S3Storage, Storage, delete_many, output_key, storage_from_settings
from shared.workers import is_online, online_cutoff

log = logging.getLogger(__name__)
UNKNOWN_MODEL_ERROR = "model {model!r} is no longer in the registry"
# Canceled jobs whose outputs one tick removes at most (one delete each).
SWEEP_OUTPUTS_PER_TICK = 100


PRUNE_EVERY_SECONDS = 60.0
# Deleted batches finished per sweep (each a few short transactions).
DELETIONS_PER_SWEEP = 10
# One retention prune stops starting chunks after this: a backlog (the first run on an old
# farm) is worked off a minute apart, so dispatching never waits on it for long.
PRUNE_RUN_SECONDS = 10.0
# At most this many chunks of the event log go per housekeeping round: a backlog (a long
# outage, a lowered retention) is worked off over a few minutes, each tick staying short.
EVENT_PRUNE_CHUNKS = 20

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


# Every tick, per model: its jobs handed over and not yet claimed, and its online workers
# (the api's "online", shared/workers.py), in one statement built once (building it per
# tick cost a tenth of the dispatcher's CPU).
ROOM = select(
    select(func.count())
    .select_from(Job)
    .where(
        Job.model == bindparam("model"),
        Job.status == JobStatus.QUEUED.value,
        Job.enqueued_at.is_not(None),
    )
    .scalar_subquery(),
    select(func.count())
    .select_from(Worker)
    .where(Worker.model == bindparam("model"), is_online(bindparam("cutoff")))
    .scalar_subquery(),
)


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
        self._swept_at = -math.inf  # the first tick sweeps
        # The first prune an interval after start: a farm's restarts do not all prune at once.
        self._retention_pruned_at = time.monotonic()
        # Per model: the teams' virtual times (in memory: a restart starts them even).
        self.shares: dict[str, FairShare] = defaultdict(FairShare)
        # Per model: the teams with jobs waiting, kept between ticks (dispatch/pick.py).
        self.waiting: dict[str, Waiting] = defaultdict(Waiting)
        self.deadlines = DeadlineWatch()

    def tick(self, *, sweep: bool = True, models: set[str] | None = None) -> TickStats:
        """Hand waiting jobs over: of ``models`` (those the nudges named), of every model
        with waiting jobs when None or with ``sweep``. ``sweep`` first takes back what the
        clock expired (leases, lost messages, canceled attempts' outputs), of any model."""
        stats = TickStats()
        if sweep:
            self._swept_at = time.monotonic()
            with session_scope(self.session_factory) as session:
                stats.requeued, stats.failed = expire_leases(session, self.settings.max_attempts)
                stats.rearmed = self._rearm_lost(session)
            stats.outputs_removed = self._remove_canceled_outputs()
            self._finish_deletions()
        self._housekeeping()
        # One session (one connection checkout) for the tick: the models, then each model's
        # hand-over in a transaction of its own, so its rows are unlocked before the next.
        with session_scope(self.session_factory) as session:
            looked_at = self._models_waiting(session) if sweep or models is None else sorted(models)
            for model in looked_at:
                self._dispatch_model(session, model, stats)
                session.commit()
        if self.on_tick is not None:
            with session_scope(self.session_factory) as session:
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

    def _finish_deletions(self) -> None:
        # Batches their team deleted (DELETE /v1/batches/{id} answered at once) that still
        # had running jobs: what those held goes once their canceled attempts were swept.
        with session_scope(self.session_factory) as session:
            deleting = session.scalars(
                select(Batch.id)
                .where(Batch.deleting_at.is_not(None))
                .order_by(Batch.deleting_at)
                .limit(DELETIONS_PER_SWEEP)
            ).all()
        for batch_id in deleting:
            try:
                delete_batch(self.session_factory, self.storage, batch_id)
            except (StorageError, TransientError) as e:  # the next sweep tries again
                log.warning("could not finish deleting batch %s: %s", batch_id, e)
                return

    def _sweep_due(self) -> bool:
        # Ticks come on every submission's and every claim's NOTIFY (hundreds a second on a
        # busy farm), but what the sweeps look for changes with the clock: a lease or a
        # re-arm is due seconds after it expires. Once per poll interval, as when idle, so a
        # busy farm recovers as fast as a quiet one; the sweeps were 5 of a tick's 13
        # statements.
        return time.monotonic() - self._swept_at >= self.settings.dispatch_poll_seconds

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

    def _attempt_keys(self, attempt: CanceledAttempt) -> list[str]:
        """The keys a canceled attempt may have stored: its render and each preset output
        (the extension from the presets this farm's registry file defines, as the worker's)."""
        ext = EXTENSIONS.get(attempt.output_format)
        if ext is None:  # malformed params: nothing was rendered
            return []
        team, job, round_ = attempt.team_id, attempt.job_id, attempt.round
        presets = load_presets(self.settings.models)
        return [
            output_key(team, job, round_, ext),
            *(
                output_key(team, job, round_, presets[name].extension, preset=name)
                for name in attempt.presets
                if name in presets  # one the registry no longer has: its extension is unknown
            ),
        ]

    def _remove_canceled_outputs(self) -> int:
        """Delete the outputs a worker stored for a job canceled meanwhile and then died
        before removing; a delete that fails is tried again next tick."""
        with session_scope(self.session_factory) as session:
            removed = []
            for attempt in canceled_with_outputs(session, SWEEP_OUTPUTS_PER_TICK):
                try:
                    delete_many(self.storage, self._attempt_keys(attempt))
                except (StorageError, TransientError) as e:
                    # The store is away: one warning a tick, not one per job.
                    log.warning(
                        "could not remove outputs of canceled job %s: %s", attempt.job_id, e
                    )
                    break
                removed.append(attempt.job_id)
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
        self._prune_event_log()
        self._pruned_at = time.monotonic()
        self._prune_retention()

    def _prune_retention(self) -> None:
        # What the teams' retention_days expired (shared/prune.py), in its own short
        # chunks; once an interval (hourly by default).
        if time.monotonic() - self._retention_pruned_at < self.settings.prune_interval_seconds:
            return
        self._retention_pruned_at = time.monotonic()
        try:
            counts = prune(self.session_factory, self.storage, budget_seconds=PRUNE_RUN_SECONDS)
        except (StorageError, TransientError) as e:  # the next interval tries again
            log.warning("could not prune data past retention: %s", e)
            return
        if not counts.finished:  # a backlog: go on at the next housekeeping, not in an hour
            self._retention_pruned_at -= self.settings.prune_interval_seconds
        if counts.jobs or counts.uploads:
            log.info(
                "pruned past retention: %d job(s), %d batch(es), %d upload(s), %d object(s)",
                counts.jobs, counts.batches, counts.uploads, counts.objects,
            )  # fmt: skip

    def _prune_event_log(self) -> None:
        # The live streams' log (shared/job_events.py) past its retention, in chunks of
        # their own short transactions: no long lock on a table the api reads and writes.
        cutoff = utcnow() - timedelta(hours=self.settings.event_retention_hours)
        for _ in range(EVENT_PRUNE_CHUNKS):
            with session_scope(self.session_factory) as session:
                if prune_job_events(session, cutoff) < EVENT_PRUNE_BATCH:
                    return

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

    def _room(self, session: Session, model: str, max_batch: int) -> int:
        """Jobs this model's Redis queue has room for: ``dispatch_depth_per_worker`` tasks
        per online worker, less those handed over and not yet claimed."""
        cutoff = online_cutoff(self.settings.lease_seconds)
        queued, workers = session.execute(ROOM, {"model": model, "cutoff": cutoff}).one()
        depth = self.settings.dispatch_depth_per_worker * max(1, workers)
        return int(depth * max_batch - queued)

    def _dispatch_model(self, session: Session, model: str, stats: TickStats) -> None:
        spec = self.registry.get(model)
        if spec is None:
            self._fail_unknown_model(session, model)
            return
        room = self._room(session, model, spec.max_batch)
        if room <= 0:
            return
        # 1. waiting jobs by weighted fair share, taken: marked handed over and locked, so a
        # second dispatcher skips them
        now = utcnow()
        urgent = self.deadlines.urgent(session, model, now)
        share, waiting = self.shares[model], self.waiting[model]
        rows = pick(session, share, model, room, now, urgent, waiting=waiting)
        # 2. send compatible groups; give back what did not reach the broker
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
            done = set(sent)
            unsend(session, [job_id for job_id, _ in valid if job_id not in done])
        stats.sent_jobs += len(sent)

    def _drop_malformed(
        self, session: Session, rows: Iterable[tuple[uuid.UUID, dict[str, Any]]]
    ) -> list[tuple[uuid.UUID, dict[str, Any]]]:
        """Fail rows whose params cannot be rendered, so one bad row never blocks a model."""
        valid, bad = [], []
        for job_id, params in rows:
            try:
                compatibility_key(params)
            except (KeyError, TypeError):
                bad.append(job_id)
            else:
                valid.append((job_id, params))
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
            models: set[str] | None = None  # the first tick looks at every model
            while not stop.is_set():
                try:
                    self.tick(sweep=self._sweep_due(), models=models)
                except Exception:  # a database restart must not end the dispatcher
                    log.exception("dispatch tick failed; retrying")
                    stop.wait(1.0)
                models = waiter.wait(self.settings.dispatch_poll_seconds, stop)
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

    def wait(self, timeout: float, stop: threading.Event) -> set[str] | None:
        """The models the nudges named (shared/dispatch.py); None, every model, after a
        quiet ``timeout``, a nudge naming none, or without NOTIFY."""
        if self.url is None:
            stop.wait(timeout)
            return None
        try:
            conn = self._connect(self.url)
            payloads = [n.payload for n in conn.notifies(timeout=timeout, stop_after=1)]
            # Drain the burst: 10,000 inserts' worth of NOTIFYs need one tick, not 10,000.
            payloads += [n.payload for n in conn.notifies(timeout=0.005)]
        except Exception as e:  # Postgres restarting: fall back to polling, reconnect later
            log.warning("LISTEN connection lost (%s); polling", e)
            self.close()
            stop.wait(timeout)
            return None
        return nudged_models(payloads)

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None

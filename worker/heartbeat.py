"""The worker's heartbeat: says it is alive, renews its jobs' leases, notices cancels, and
notes which handed-over jobs it holds before claiming them (its reservations)."""

from __future__ import annotations

import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery.signals import task_received
from sqlalchemy import select, update

from shared.broker import RENDER_TASK
from shared.db import session_scope
from shared.jobs import JobStatus, release_previous_life, renew_leases, reserve_jobs
from shared.models import Job, Worker, utcnow
from worker.context import WorkerContext

log = logging.getLogger(__name__)


def heartbeat_interval(lease_seconds: int) -> float:
    """Three beats per lease, so one slow beat never loses a job; at most every 10 s."""
    return max(0.2, min(10.0, lease_seconds / 3))


class Reservations:
    """Notes in Postgres, as each render message arrives, that this worker holds its jobs.

    A received message may wait before its task claims the jobs (prefetched, or a retry's
    ETA). If the worker dies meanwhile the message stays unacked in Redis for its
    visibility timeout (an hour); with the note, the dispatcher re-arms the jobs one lease
    after the last heartbeat (shared/jobs.py ``rearm_reserved_by_lost_workers``).
    """

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        # One thread of its own: the note never delays the consumer handing the task to the
        # pool, nor waits behind the io pool's fetches and uploads.
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="imgfarm-reserve")

    def connect(self) -> None:
        task_received.connect(self.on_received, weak=False)

    def disconnect(self) -> None:
        task_received.disconnect(self.on_received)
        self.writer.shutdown(wait=False)

    def on_received(self, sender: Any = None, request: Any = None, **_: Any) -> None:
        if request is None or request.name != RENDER_TASK or request.hostname != self.ctx.name:
            return
        try:
            job_ids = [uuid.UUID(j) for j in request.args[0]]
        except (IndexError, TypeError, ValueError):
            return  # the task itself will say what is wrong with its arguments
        self.writer.submit(self.record, job_ids)

    def record(self, job_ids: list[uuid.UUID]) -> None:
        # A message whose task already started needs no note: its claim records the worker.
        job_ids = self.ctx.in_flight.not_held(job_ids)
        if not job_ids:
            return
        try:
            with session_scope(self.ctx.session_factory) as session:
                reserve_jobs(session, job_ids, self.ctx.name)
        except Exception as e:  # the database may be restarting: the 600 s re-arm remains
            log.warning("could not note %d reserved job(s): %s", len(job_ids), e)


class Heartbeat(threading.Thread):
    def __init__(self, ctx: WorkerContext) -> None:
        super().__init__(name="imgfarm-heartbeat", daemon=True)
        self.ctx = ctx
        self.stopped = threading.Event()
        self.reservations = Reservations(ctx)

    def register(self) -> None:
        """Record this worker as online and start noting its reservations; call before it
        consumes anything."""
        with session_scope(self.ctx.session_factory) as session:
            released, ended = release_previous_life(session, self.ctx.name)
            if released or ended:
                log.warning(
                    "an earlier %s held %d reserved and %d running job(s): handed back",
                    self.ctx.name,
                    released,
                    ended,
                )
            session.merge(
                Worker(
                    name=self.ctx.name,
                    model=self.ctx.model.spec.alias,
                    device=self.ctx.model.device,
                    started_at=utcnow(),
                    last_seen_at=utcnow(),
                    stopped_at=None,
                )
            )
        self.reservations.connect()

    def beat(self) -> None:
        ctx = self.ctx
        with session_scope(ctx.session_factory) as session:
            session.execute(
                update(Worker).where(Worker.name == ctx.name).values(last_seen_at=utcnow())
            )
            renew_leases(session, ctx.name, ctx.settings.lease_seconds)
            running = ctx.in_flight.snapshot()
            if running:
                canceled = set(
                    session.scalars(
                        select(Job.id).where(
                            Job.id.in_(running), Job.status == JobStatus.CANCELED.value
                        )
                    )
                )
                ctx.in_flight.mark_canceled(canceled)

    def run(self) -> None:
        interval = heartbeat_interval(self.ctx.settings.lease_seconds)
        while not self.stopped.wait(interval):
            try:
                self.beat()
            except Exception as e:  # the database may be restarting; keep beating
                log.warning("heartbeat failed: %s", e)

    def stop(self) -> None:
        self.stopped.set()
        self.reservations.disconnect()
        try:
            with session_scope(self.ctx.session_factory) as session:
                session.execute(
                    update(Worker).where(Worker.name == self.ctx.name).values(stopped_at=utcnow())
                )
        except Exception as e:
            log.warning("could not record worker stop: %s", e)

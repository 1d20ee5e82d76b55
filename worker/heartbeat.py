"""The worker's heartbeat: says it is alive, renews its jobs' leases, notices cancels."""

from __future__ import annotations

import logging
import threading

from sqlalchemy import select, update

from shared.db import session_scope
from shared.jobs import JobStatus, renew_leases
from shared.models import Job, Worker, utcnow
from worker.context import WorkerContext

log = logging.getLogger(__name__)


def heartbeat_interval(lease_seconds: int) -> float:
    """Three beats per lease, so one slow beat never loses a job; at most every 10 s."""
    return max(0.2, min(10.0, lease_seconds / 3))


class Heartbeat(threading.Thread):
    def __init__(self, ctx: WorkerContext) -> None:
        super().__init__(name="imgfarm-heartbeat", daemon=True)
        self.ctx = ctx
        self.stopped = threading.Event()

    def register(self) -> None:
        with session_scope(self.ctx.session_factory) as session:
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
        try:
            with session_scope(self.ctx.session_factory) as session:
                session.execute(
                    update(Worker).where(Worker.name == self.ctx.name).values(stopped_at=utcnow())
                )
        except Exception as e:
            log.warning("could not record worker stop: %s", e)

"""Farm-wide gauges read from Postgres, the queue of record, exported by the dispatcher.

Redis holds only a shallow slice of the work (the dispatcher keeps it so), and Flower has
no queue depth at all: the backlog, its age and lost leases are only visible here.

    farm = FarmMetrics()                            # once, in the dispatcher process
    with session_factory() as session:              # each loop; it queries at most
        farm.update(session)                        # every `interval` seconds

One small grouped query per gauge family, all served by the jobs indexes on
(status, model, ...). Run from one process (the dispatcher): every replica exports the
same farm-wide numbers, so dashboards aggregate with ``max``, never ``sum``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from prometheus_client import Gauge
from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from shared.jobs import JobStatus
from shared.models import Job, Worker, utcnow

log = logging.getLogger(__name__)

QUEUED = Gauge(
    "imgfarm_farm_jobs_queued",
    "Jobs waiting to render (status queued, in Redis or not yet handed over), by model.",
    ["model"],
    multiprocess_mode="livemax",
)
UNDISPATCHED = Gauge(
    "imgfarm_farm_jobs_undispatched",
    "Queued jobs not yet handed to Redis (the dispatcher's backlog), by model.",
    ["model"],
    multiprocess_mode="livemax",
)
OLDEST_QUEUED_AGE = Gauge(
    "imgfarm_farm_oldest_queued_job_age_seconds",
    "Age of the oldest queued job (0 when none), by model.",
    ["model"],
    multiprocess_mode="livemax",
)
RUNNING = Gauge(
    "imgfarm_farm_jobs_running",
    "Jobs claimed by a worker and rendering, by model.",
    ["model"],
    multiprocess_mode="livemax",
)
EXPIRED_LEASES = Gauge(
    "imgfarm_farm_leases_expired",
    "Running jobs whose lease expired (worker lost; the sweeper will take them back).",
    ["model"],
    multiprocess_mode="livemax",
)
WORKERS_ONLINE = Gauge(
    "imgfarm_farm_workers_online",
    "Render workers with a fresh heartbeat, by model.",
    ["model"],
    multiprocess_mode="livemax",
)
PER_MODEL = (QUEUED, UNDISPATCHED, OLDEST_QUEUED_AGE, RUNNING, EXPIRED_LEASES, WORKERS_ONLINE)

LAST_UPDATE = Gauge(
    "imgfarm_farm_metrics_updated_timestamp_seconds",
    "Unix time of the last successful refresh of the farm gauges.",
    multiprocess_mode="livemax",
)


def _age_seconds(now: datetime, then: datetime | None) -> float:
    if then is None:
        return 0.0
    # SQLite hands back naive datetimes (stored as UTC); Postgres aware ones.
    if then.tzinfo is None:
        then = then.replace(tzinfo=now.tzinfo)
    return max(0.0, (now - then).total_seconds())


@dataclass
class FarmMetrics:
    """Refreshes the farm gauges from the jobs and workers tables.

    ``interval``: minimum seconds between two refreshes (``update`` is cheap to call from a
    tight loop). ``worker_fresh_seconds``: a worker whose heartbeat is older is not online.
    """

    interval: float = 5.0
    worker_fresh_seconds: float = 60.0
    _last: float = field(default=float("-inf"), repr=False)
    # Every model seen so far: one that empties must drop to 0, not keep its last value.
    _models: set[str] = field(default_factory=set, repr=False)

    def update(self, session: Session, *, force: bool = False) -> bool:
        """Refresh the gauges unless done less than ``interval`` ago; True if refreshed.

        Only reads, and never commits or rolls back ``session``: give it a short session of
        its own. A database error is logged and left for the next call (the dispatcher's
        loop must not die for a metric).
        """
        if not force and time.monotonic() - self._last < self.interval:
            return False
        try:
            values = self.read(session, utcnow())
        except Exception as e:  # any DB failure: skip this round, keep the old values
            log.warning("farm metrics refresh failed: %s", e)
            return False
        self._publish(values)
        self._last = time.monotonic()
        return True

    def read(self, session: Session, now: datetime) -> dict[str, dict[Gauge, float]]:
        """Every gauge's value per model, as of ``now`` (three grouped queries)."""
        queued = JobStatus.QUEUED.value
        running = JobStatus.RUNNING.value
        backlog = session.execute(
            select(
                Job.model,
                func.count(),
                func.count().filter(Job.enqueued_at.is_(None)),
                func.min(Job.created_at),
            )
            .where(Job.status == queued)
            .group_by(Job.model)
        ).all()
        active = session.execute(
            select(
                Job.model,
                func.count(),
                func.count().filter(
                    and_(Job.lease_expires_at.is_not(None), Job.lease_expires_at < now)
                ),
            )
            .where(Job.status == running)
            .group_by(Job.model)
        ).all()
        fresh_after = now - timedelta(seconds=self.worker_fresh_seconds)
        workers = session.execute(
            select(Worker.model, func.count())
            .where(Worker.stopped_at.is_(None), Worker.last_seen_at >= fresh_after)
            .group_by(Worker.model)
        ).all()

        values: dict[str, dict[Gauge, float]] = {}

        def of(model: str) -> dict[Gauge, float]:
            return values.setdefault(model, {gauge: 0.0 for gauge in PER_MODEL})

        for model, count, undispatched, oldest in backlog:
            of(model).update(
                {
                    QUEUED: count,
                    UNDISPATCHED: undispatched,
                    OLDEST_QUEUED_AGE: _age_seconds(now, oldest),
                }
            )
        for model, count, expired in active:
            of(model).update({RUNNING: count, EXPIRED_LEASES: expired})
        for model, count in workers:
            of(model)[WORKERS_ONLINE] = count
        return values

    def _publish(self, values: dict[str, dict[Gauge, float]]) -> None:
        # A model seen before and absent now has emptied: publish zeros, not stale values.
        for model in self._models - values.keys():
            values[model] = {gauge: 0.0 for gauge in PER_MODEL}
        self._models |= values.keys()
        for model, gauges in values.items():
            for gauge, value in gauges.items():
                gauge.labels(model).set(value)
        LAST_UPDATE.set(time.time())

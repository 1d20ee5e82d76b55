"""Which render workers are online, from the heartbeats in the ``workers`` table."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.models import Worker, utcnow

# A worker beats three times per lease and at least every 10 s (worker/heartbeat.py), so
# one lease (never under 10 s) without a beat means it is gone. The dispatcher uses the same.
MIN_ONLINE_WINDOW_SECONDS = 10


def online_cutoff(lease_seconds: int, now: datetime | None = None) -> datetime:
    """Workers last seen after this instant (and not stopped) count as online."""
    window = max(MIN_ONLINE_WINDOW_SECONDS, lease_seconds)
    return (now or utcnow()) - timedelta(seconds=window)


def online_workers_by_model(session: Session, lease_seconds: int) -> dict[str, list[str]]:
    """Model alias -> names of the online workers that pin it, sorted."""
    rows = session.execute(
        select(Worker.model, Worker.name)
        .where(Worker.stopped_at.is_(None), Worker.last_seen_at > online_cutoff(lease_seconds))
        .order_by(Worker.model, Worker.name)
    )
    workers: dict[str, list[str]] = defaultdict(list)
    for model, name in rows:
        workers[model].append(name)
    return dict(workers)


def lost_cutoff(lease_seconds: int, now: datetime | None = None) -> datetime:
    """A worker last seen before this instant is gone as far as what it holds goes: one
    lease without a heartbeat, the same rule that takes back its running jobs (their lease
    was last renewed to last beat + lease). No 10 s floor: a reserved job waits no longer
    than a running one."""
    return (now or utcnow()) - timedelta(seconds=lease_seconds)

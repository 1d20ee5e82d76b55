"""Which render workers are online, from the heartbeats in the ``workers`` table."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import BindParameter, ColumnElement, func, select
from sqlalchemy.orm import Session

from shared.models import Worker, utcnow

# A worker beats three times per lease and at least every 10 s (worker/heartbeat.py), so
# one lease (never under 10 s) without a beat means it is gone. The dispatcher uses the same.
MIN_ONLINE_WINDOW_SECONDS = 10


def online_cutoff(lease_seconds: int, now: datetime | None = None) -> datetime:
    """Workers last seen after this instant (and not stopped) count as online."""
    window = max(MIN_ONLINE_WINDOW_SECONDS, lease_seconds)
    return (now or utcnow()) - timedelta(seconds=window)


def is_online(cutoff: datetime | BindParameter[datetime]) -> ColumnElement[bool]:
    """The ``workers`` rows that count as online, given ``online_cutoff`` (or a parameter
    bound to it, in a statement built once)."""
    return Worker.stopped_at.is_(None) & (Worker.last_seen_at > cutoff)


def online_workers_by_model(
    session: Session, lease_seconds: int, models: Collection[str] | None = None
) -> dict[str, list[str]]:
    """Model alias -> names of the online workers that pin it, sorted (all models, or
    ``models``)."""
    query = (
        select(Worker.model, Worker.name)
        .where(is_online(online_cutoff(lease_seconds)))
        .order_by(Worker.model, Worker.name)
    )
    if models is not None:
        query = query.where(Worker.model.in_(models))
    rows = session.execute(query)
    workers: dict[str, list[str]] = defaultdict(list)
    for model, name in rows:
        workers[model].append(name)
    return dict(workers)


@dataclass(frozen=True)
class ModelWorkers:
    """A model's workers as clients are told about them: who is online, when one last beat."""

    model: str
    online: list[str] = field(default_factory=list)
    last_seen_at: datetime | None = None  # of any worker of the model, online or not

    @property
    def warning(self) -> str | None:
        """Why a queued job of this model does not move, or None while a worker is online."""
        if self.online:
            return None
        if self.last_seen_at is None:
            return (
                f"no worker online for model '{self.model}': none has ever started; "
                "its jobs stay queued until one does"
            )
        since = self.last_seen_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        return (
            f"no worker online for model '{self.model}' since {since}; "
            "its jobs stay queued until one starts"
        )

    @property
    def warnings(self) -> list[str]:
        """``warning`` as the answers' ``warnings`` list: empty while a worker is online."""
        return [] if (warning := self.warning) is None else [warning]


def model_workers(
    session: Session, lease_seconds: int, models: Collection[str]
) -> dict[str, ModelWorkers]:
    """Each of ``models`` -> its online workers and latest heartbeat (two small queries on
    the workers' model index): the one answer to "will a job of this model move?".

    max() keeps the column's type, so ``last_seen_at`` is UTC-aware on every backend."""
    online = online_workers_by_model(session, lease_seconds, models)
    rows = session.execute(
        select(Worker.model, func.max(Worker.last_seen_at))
        .where(Worker.model.in_(models))
        .group_by(Worker.model)
    )
    seen: dict[str, datetime] = {model: last for model, last in rows}
    return {m: ModelWorkers(m, online.get(m, []), seen.get(m)) for m in models}


def lost_cutoff(lease_seconds: int, now: datetime | None = None) -> datetime:
    """A worker last seen before this instant is gone as far as what it holds goes: one
    lease without a heartbeat, the same rule that takes back its running jobs (their lease
    was last renewed to last beat + lease). No 10 s floor: a reserved job waits no longer
    than a running one."""
    return (now or utcnow()) - timedelta(seconds=lease_seconds)

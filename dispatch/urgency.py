"""Deadlines raise urgency: which batches' jobs the pick moves one priority class up.

A batch with a deadline is urgent once its ETA (shared/throughput.py: its jobs left behind
the model's queue ahead of it, at the model's observed pace) reaches the deadline, or, with
no pace observed yet, once the deadline is less than ``throughput.WINDOW`` away. Its jobs
then go one class up in their team's line (bulk as standard, standard as interactive: the
fast lane, still bounded), so a late batch overtakes its team's other work first and, as
interactive, others' turns within the lane's bound. Read at most every
``REFRESH_SECONDS`` per model: ETAs move slowly, ticks come with every submission.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.models import Batch, Job
from shared.throughput import ACTIVE, WINDOW, batch_eta

REFRESH_SECONDS = 5.0


class DeadlineWatch:
    """The urgent batches of each model, re-read every ``REFRESH_SECONDS``."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[float, frozenset[uuid.UUID]]] = {}

    def urgent(self, session: Session, model: str, now: datetime) -> frozenset[uuid.UUID]:
        """Ids of ``model``'s open batches whose ETA reaches their deadline."""
        read_at, batches = self._seen.get(model, (-REFRESH_SECONDS, frozenset()))
        if time.monotonic() - read_at < REFRESH_SECONDS:
            return batches
        batches = frozenset(urgent_batches(session, model, now))
        self._seen[model] = (time.monotonic(), batches)
        return batches


def urgent_batches(session: Session, model: str, now: datetime) -> list[uuid.UUID]:
    """``model``'s open batches whose ETA reaches their deadline (ix_batches_open_deadline)."""
    rows = session.execute(
        select(Batch.id, Batch.created_at, Batch.deadline)
        .where(Batch.model == model, Batch.deadline.is_not(None), Batch.completed_at.is_(None))
        .order_by(Batch.deadline)
    ).tuples()
    urgent = []
    for batch_id, created_at, deadline in rows:
        remaining = (
            session.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.batch_id == batch_id, Job.status.in_(ACTIVE))
            )
            or 0
        )
        if not remaining:
            continue
        eta = batch_eta(session, model, batch_id, created_at, remaining, deadline, now)
        late = eta.on_track is False or (
            eta.eta is None and deadline is not None and deadline - now < WINDOW
        )
        if late:
            urgent.append(batch_id)
    return urgent

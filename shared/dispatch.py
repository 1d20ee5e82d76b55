"""How the api and the workers wake the dispatcher. Jobs are committed first; the dispatcher
hands them over.

A nudge is a Postgres NOTIFY on ``CHANNEL`` whose payload names the model whose queue has
new jobs or room: the dispatcher's tick then looks at that model alone, not at every model
with waiting jobs (a query per tick, at every claim). A nudge without a model, a quiet
poll interval and each sweep look at all of them.
"""

from __future__ import annotations

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

CHANNEL = "imgfarm_dispatch"
_NUDGE = select(func.pg_notify(CHANNEL, bindparam("model")))


def nudge(session: Session, model: str) -> None:
    """Ask the dispatcher to hand ``model``'s jobs over now (sent at commit; Postgres folds
    a transaction's identical ones). On SQLite there is no NOTIFY; the dispatcher polls
    often enough there."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_NUDGE, {"model": model})


def nudged_models(payloads: list[str]) -> set[str] | None:
    """The models a burst of nudges named; None (every model) if one named none."""
    return None if not payloads or "" in payloads else set(payloads)

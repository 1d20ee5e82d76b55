"""How the api wakes the dispatcher. Jobs are committed first; the dispatcher hands them over."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

CHANNEL = "imgfarm_dispatch"
_NUDGE = text(f"NOTIFY {CHANNEL}")


def nudge(session: Session) -> None:
    """Ask the dispatcher to look for new jobs now (Postgres NOTIFY, sent at commit).

    On SQLite there is no NOTIFY; the dispatcher polls often enough there.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_NUDGE)

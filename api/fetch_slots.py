"""How many requests may fetch source URLs at once: per team, and in all.

Fetching waits on someone else's server (up to ``fetch_timeout_seconds``) and holds one of
the api's worker threads meanwhile. Without a bound one team's slow image host took every
thread (and, before the intake held no database connection across a fetch, the whole
pool), and other teams' requests waited 25-30 s. A request over its team's bound, or the
process's, is refused at once with 429 and a Retry-After: every fetch ends by its
deadline, so a slot is free by then. Bounds are per api process.
"""

from __future__ import annotations

import math
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from api.errors import TooBusy


class FetchSlots:
    """Counts the requests fetching now; ``hold`` takes one slot for the team or refuses."""

    def __init__(self, *, per_team: int, total: int, retry_after_seconds: float) -> None:
        self.per_team = per_team
        self.total = total
        self.retry_after = max(1, math.ceil(retry_after_seconds))
        self._lock = threading.Lock()
        self._by_team: Counter[uuid.UUID] = Counter()

    def in_use(self, team_id: uuid.UUID | None = None) -> int:
        with self._lock:
            return self._by_team[team_id] if team_id else sum(self._by_team.values())

    @contextmanager
    def hold(self, team_id: uuid.UUID) -> Iterator[None]:
        """One slot for the duration of the block; TooBusy (429) when there is none."""
        with self._lock:
            if self._by_team[team_id] >= self.per_team:
                raise TooBusy(
                    f"this team already has {self.per_team} requests fetching image URLs; "
                    "retry when one has finished, or send the images as uploads",
                    self.retry_after,
                )
            if sum(self._by_team.values()) >= self.total:
                raise TooBusy("the api is fetching as many image URLs as it may", self.retry_after)
            self._by_team[team_id] += 1
        try:
            yield
        finally:
            with self._lock:
                self._by_team[team_id] -= 1
                if not self._by_team[team_id]:
                    del self._by_team[team_id]

"""One wake-up source per api process for every open event stream.

On Postgres one thread holds one ``LISTEN imgfarm_events`` connection (psycopg) and wakes
the streams following the batch or team each notification names; on SQLite, which has no
NOTIFY, one thread reads the log's new rows every ``IMGFARM_SSE_POLL_SECONDS`` and does the
same. Either way the database sees one listener (or one poll) per process, not one per
client: a stream only queries when something it follows changed. A wake-up is a flag, not
a queue of events, so a slow client costs nothing here; each stream reads its own rows from
the log (api/event_stream.py), a page at a time.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.job_events import CHANNEL
from shared.models import JobEvent

log = logging.getLogger(__name__)
# How long the listener waits for a notification before checking it should stop.
LISTEN_TIMEOUT_SECONDS = 1.0
RECONNECT_SECONDS = 1.0


class Subscription:
    """One stream's wake-up flag, set from the listener's thread."""

    def __init__(self, keys: frozenset[str]) -> None:
        self.keys = keys
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()

    def wake(self) -> None:
        self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self, timeout: float) -> None:
        """Until woken or ``timeout``; clears the flag for the next wait."""
        with suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)
        self._event.clear()


class EventHub:
    """Fans the database's change notifications out to the streams of this process."""

    def __init__(
        self, database_url: str, session_factory: sessionmaker[Session], poll_seconds: float
    ) -> None:
        self._url = database_url
        self._sessions = session_factory
        self._poll_seconds = poll_seconds
        self._subs: dict[str, set[Subscription]] = defaultdict(set)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def postgres(self) -> bool:
        return self._url.startswith("postgresql")

    def start(self) -> None:
        """Start the listener (or poller) thread at the first stream; idempotent."""
        with self._lock:
            if self._thread is None:
                target = self._listen if self.postgres else self._poll
                self._thread = threading.Thread(target=target, name="imgfarm-events", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @contextmanager
    def subscribe(self, keys: Iterable[uuid.UUID]) -> Iterator[Subscription]:
        """Wake-ups for changes of these batches, jobs or teams while the block runs."""
        sub = Subscription(frozenset(str(k) for k in keys))
        with self._lock:
            for key in sub.keys:
                self._subs[key].add(sub)
        try:
            yield sub
        finally:
            with self._lock:
                for key in sub.keys:
                    self._subs[key].discard(sub)
                    if not self._subs[key]:
                        del self._subs[key]

    def streams(self) -> int:
        """Open subscriptions (for tests and gauges)."""
        with self._lock:
            return len({s for subs in self._subs.values() for s in subs})

    def _wake(self, keys: Iterable[str] | None) -> None:
        with self._lock:
            if keys is None:  # missed notifications (reconnect): everyone looks again
                subs = {s for group in self._subs.values() for s in group}
            else:
                subs = {s for k in keys for s in self._subs.get(k, ())}
        for sub in subs:
            sub.wake()

    # --- Postgres: one LISTEN connection ---------------------------------------------------

    def _listen(self) -> None:
        import psycopg

        url = self._url.replace("postgresql+psycopg://", "postgresql://", 1)
        while not self._stop.is_set():
            try:
                with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._wake(None)  # whatever happened while not listening
                    while not self._stop.is_set():
                        # The first notification (or a timeout to check for stop), then the
                        # burst behind it: one wake-up per stream for a whole burst.
                        got = conn.notifies(timeout=LISTEN_TIMEOUT_SECONDS, stop_after=1)
                        keys = [n.payload for n in got]
                        keys += [n.payload for n in conn.notifies(timeout=0.005)]
                        if keys:
                            self._wake(keys)
            except Exception as e:  # Postgres restarting: streams wait, then catch up
                log.warning("event LISTEN connection lost (%s); reconnecting", e)
                self._stop.wait(RECONNECT_SECONDS)

    # --- SQLite: one poller -----------------------------------------------------------------

    def _poll(self) -> None:
        last: int | None = None
        while not self._stop.wait(0 if last is None else self._poll_seconds):
            try:
                last = self._poll_once(last)
            except Exception as e:  # the file busy or gone for a moment: next round
                log.warning("event log poll failed (%s)", e)
                last = last or 0

    def _poll_once(self, last: int | None) -> int:
        with self._sessions() as session:
            if last is None:  # start from the end: streams read their own history
                return int(session.scalar(select(func.max(JobEvent.id))) or 0)
            rows = session.execute(
                select(JobEvent.team_id, JobEvent.batch_id, func.max(JobEvent.id))
                .where(JobEvent.id > last)
                .group_by(JobEvent.team_id, JobEvent.batch_id)
            ).all()
        if not rows:
            return last
        # As the NOTIFY payload (shared/job_events.py): the batch, or the team for lone jobs.
        keys = {str(batch or team) for team, batch, _ in rows}
        self._wake(keys)
        return max(last, *(top for _, _, top in rows))

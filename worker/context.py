"""What a worker process holds for its lifetime: settings, the warm model, storage, sessions."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from shared.settings import Settings
from shared.storage import Storage
from worker.pipelines import LoadedModel


@dataclass
class InFlight:
    """Jobs this process is rendering now, and which of them were canceled meanwhile.

    Written by the render task and the heartbeat thread, hence the lock.
    """

    _lock: threading.Lock = field(default_factory=threading.Lock)
    running: set[uuid.UUID] = field(default_factory=set)
    canceled: set[uuid.UUID] = field(default_factory=set)

    def start(self, job_ids: list[uuid.UUID]) -> None:
        with self._lock:
            self.running = set(job_ids)
            self.canceled = set()

    def finish(self) -> None:
        with self._lock:
            self.running = set()
            self.canceled = set()

    def snapshot(self) -> set[uuid.UUID]:
        with self._lock:
            return set(self.running)

    def mark_canceled(self, job_ids: set[uuid.UUID]) -> None:
        with self._lock:
            self.canceled |= job_ids & self.running

    def all_canceled(self, job_ids: list[uuid.UUID]) -> bool:
        with self._lock:
            return bool(job_ids) and set(job_ids) <= self.canceled


@dataclass
class WorkerContext:
    settings: Settings
    model: LoadedModel
    storage: Storage
    session_factory: sessionmaker[Session]
    name: str = "worker"
    in_flight: InFlight = field(default_factory=InFlight)

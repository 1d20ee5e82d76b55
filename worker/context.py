"""What a worker process holds for its lifetime: settings, the warm model, storage, sessions."""

from __future__ import annotations

import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from shared.settings import Settings
from shared.storage import Storage
from worker.content_credentials import ContentCredentials
from worker.device import DeviceLane
from worker.pipelines import LoadedModel
from worker.prepared_cache import PreparedCache


@dataclass
class InFlight:
    """Jobs this process holds now (being claimed, waiting for the device, rendering or
    being stored), and which of them were canceled meanwhile.

    Several render tasks run at once (worker/device.py), each adding its jobs at start and
    removing them at the end; the heartbeat thread marks cancels: hence the lock.
    """

    _lock: threading.Lock = field(default_factory=threading.Lock)
    running: set[uuid.UUID] = field(default_factory=set)
    canceled: set[uuid.UUID] = field(default_factory=set)

    def start(self, job_ids: list[uuid.UUID]) -> None:
        with self._lock:
            self.running |= set(job_ids)

    def finish(self, job_ids: list[uuid.UUID]) -> None:
        with self._lock:
            self.running -= set(job_ids)
            self.canceled -= set(job_ids)

    def not_held(self, job_ids: list[uuid.UUID]) -> list[uuid.UUID]:
        """Those of ``job_ids`` this process does not hold, in order."""
        with self._lock:
            return [j for j in job_ids if j not in self.running]

    def snapshot(self) -> set[uuid.UUID]:
        with self._lock:
            return set(self.running)

    def mark_canceled(self, job_ids: set[uuid.UUID]) -> None:
        with self._lock:
            self.canceled |= job_ids & self.running

    def is_canceled(self, job_id: uuid.UUID) -> bool:
        with self._lock:
            return job_id in self.canceled

    def all_canceled(self, job_ids: list[uuid.UUID]) -> bool:
        with self._lock:
            return bool(job_ids) and set(job_ids) <= self.canceled


def cpu_slots(configured: int | None) -> int:
    """How many io threads may encode and score at once: ``configured``, else one per core
    this process may run on."""
    return configured or len(os.sched_getaffinity(0))


@dataclass
class WorkerContext:
    settings: Settings
    model: LoadedModel
    storage: Storage
    session_factory: sessionmaker[Session]
    name: str = "worker"
    in_flight: InFlight = field(default_factory=InFlight)
    # All pipeline calls go through the device lane; fetches, decodes, encodes and uploads
    # of one task's jobs run side by side on the io pool (they wait on the network or on
    # zlib, which release the GIL).
    device: DeviceLane = field(default_factory=DeviceLane)
    io: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(8, thread_name_prefix="imgfarm-io")
    )
    # Held by an io thread while it encodes and scores (``IMGFARM_WORKER_CPU_THREADS``): that
    # work needs a core, the uploads around it wait on the network.
    cpu: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(cpu_slots(None))
    )
    # Decoded, resized sources by source and size (worker/prepared_cache.py); boot sizes it,
    # the default keeps nothing.
    prepared: PreparedCache = field(default_factory=lambda: PreparedCache(0))
    # Teams whose outputs get a signed C2PA manifest (IMGFARM_C2PA_SIGNERS); empty: none.
    credentials: ContentCredentials = field(default_factory=ContentCredentials)

    def close(self) -> None:
        self.device.shutdown()
        self.io.shutdown(wait=True)

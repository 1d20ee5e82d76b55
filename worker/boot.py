"""Start a render worker: one process pinned to one model (the dispatcher starts from dispatch/)."""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from shared.broker import make_celery, render_queue
from shared.db import make_engine, make_session_factory, session_scope
from shared.errors import ConfigError
from shared.registry import load_registry, upscaler_of
from shared.settings import Settings
from shared.storage import storage_from_settings
from worker.content_credentials import (
    ContentCredentials,
    load_signing_credentials,
    resolve_teams,
)
from worker.context import WorkerContext, cpu_slots
from worker.device import DeviceLane
from worker.heartbeat import Heartbeat
from worker.metrics import (
    device_busy_recorder,
    device_wait_recorder,
    install_worker_metrics,
    prepared_cache_recorder,
    source_cache_recorder,
)
from worker.pipelines import load_model
from worker.prepared_cache import PreparedCache
from worker.source_cache import CachingStorage
from worker.tasks import register_tasks

log = logging.getLogger(__name__)


def worker_name(alias: str) -> str:
    # The pid keeps names unique when several workers share a host (one per GPU).
    return f"{alias}-{os.getpid()}@{socket.gethostname()}"


def build_worker(settings: Settings, alias: str) -> tuple[Celery, WorkerContext]:
    """Load ``alias`` and return a Celery app whose render task uses it."""
    registry = load_registry(settings.models)
    if alias not in registry:
        raise ConfigError(f"unknown model {alias!r}; known: {', '.join(sorted(registry))}")
    device = DeviceLane(on_busy=device_busy_recorder(alias), on_wait=device_wait_recorder(alias))
    # Loaded and warmed on the lane's thread: the thread every render will run on.
    spec = registry[alias]
    model = device.run(load_model, spec, settings, upscaler=upscaler_of(registry, spec))
    session_factory = make_session_factory(make_engine(settings.database_url))
    ctx = WorkerContext(
        settings=settings,
        model=model,
        storage=CachingStorage(
            storage_from_settings(settings),
            settings.worker_source_cache_bytes,
            on_lookup=source_cache_recorder(alias),
        ),
        session_factory=session_factory,
        name=worker_name(alias),
        device=device,
        io=ThreadPoolExecutor(settings.worker_io_threads, thread_name_prefix="imgfarm-io"),
        cpu=threading.BoundedSemaphore(cpu_slots(settings.worker_cpu_threads)),
        prepared=PreparedCache(
            settings.worker_prepared_cache_bytes, on_lookup=prepared_cache_recorder(alias)
        ),
        credentials=content_credentials(settings, session_factory),
    )
    app = make_celery(settings, "imgfarm-worker")
    register_tasks(app, ctx)
    install_worker_metrics(app, settings, alias, load_seconds=model.load_seconds)
    return app, ctx


def content_credentials(
    settings: Settings, session_factory: sessionmaker[Session]
) -> ContentCredentials:
    """The operator's C2PA signers (``IMGFARM_C2PA_SIGNERS``), read once at boot, by team."""
    if settings.c2pa_signers is None:
        return ContentCredentials()
    by_name = load_signing_credentials(settings.c2pa_signers)
    with session_scope(session_factory) as session:
        credentials = resolve_teams(session, by_name)
    log.info("C2PA signing for %d team(s)", len(credentials.by_team))
    return credentials


def run_worker(settings: Settings, alias: str, loglevel: str = "INFO") -> None:
    """Block serving ``alias``'s queue. One process, one model, one GPU."""
    app, ctx = build_worker(settings, alias)
    # What the process holds once loaded (torch, diffusers, the model: 340,000 objects after
    # the imports alone) moves to the permanent generation. A full collection, which a
    # render's garbage triggers now and then, took 177 ms of the GIL over them; 0 frozen.
    gc.freeze()
    heartbeat = Heartbeat(ctx)
    heartbeat.register()
    heartbeat.start()
    try:
        # Thread pool, not prefork: the model lives in this very process (no fork after CUDA
        # init) and every pipeline call goes through its one device lane; the threads only
        # let tasks' CPU stages overlap the GPU's. SIGTERM is Celery's warm shutdown: running
        # tasks finish, the reserved ones go back to the broker.
        app.worker_main(
            [
                "worker",
                "--pool=threads",
                f"--concurrency={settings.worker_pipeline_depth}",
                f"--queues={render_queue(alias)}",
                f"--hostname={ctx.name}",
                "--task-events",
                "--without-gossip",
                "--without-mingle",
                f"--loglevel={loglevel}",
            ]
        )
    finally:
        heartbeat.stop()
        ctx.close()

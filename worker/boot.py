"""Start a GPU worker: load the pinned model once, then consume only its queue."""

from __future__ import annotations

import logging
import os
import socket

from celery import Celery

from shared.broker import make_celery, render_queue
from shared.db import make_engine, make_session_factory
from shared.errors import ConfigError
from shared.registry import load_registry
from shared.settings import Settings
from shared.storage import storage_from_settings
from worker.context import WorkerContext
from worker.pipelines import load_model
from worker.tasks import register_tasks

log = logging.getLogger(__name__)


def build_worker(settings: Settings, alias: str) -> tuple[Celery, WorkerContext]:
    """Load ``alias`` and return a Celery app whose render task uses it."""
    registry = load_registry(settings.models)
    if alias not in registry:
        raise ConfigError(f"unknown model {alias!r}; known: {', '.join(sorted(registry))}")
    model = load_model(registry[alias], settings)
    ctx = WorkerContext(
        settings=settings,
        model=model,
        storage=storage_from_settings(settings),
        session_factory=make_session_factory(make_engine(settings.database_url)),
    )
    app = make_celery(settings, "imgfarm-worker")
    register_tasks(app, ctx)
    return app, ctx


def run_worker(settings: Settings, alias: str, loglevel: str = "INFO") -> None:
    """Block serving ``alias``'s queue. One process, one model, one GPU."""
    app, _ = build_worker(settings, alias)
    # The pid keeps names unique when several workers share a host (one per GPU).
    name = f"{alias}-{os.getpid()}@{socket.gethostname()}"
    # solo pool: the model lives in this very process (no fork after CUDA init), and
    # SIGTERM lets the running task finish before exit (Celery's warm shutdown).
    app.worker_main(
        [
            "worker",
            "--pool=solo",
            "--concurrency=1",
            f"--queues={render_queue(alias)}",
            f"--hostname={name}",
            "--task-events",
            "--without-gossip",
            "--without-mingle",
            f"--loglevel={loglevel}",
        ]
    )

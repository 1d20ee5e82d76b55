"""Prometheus plumbing every process shares: which registry to expose and where.

Each process (api, render worker, dispatcher, webhook worker) serves ``/metrics`` on
``IMGFARM_METRICS_PORT``, an internal port that is never published: metrics name teams,
models and hosts. The metrics themselves live beside the code that updates them
(``api/metrics.py``, ``worker/metrics.py``, ``dispatch/farm_metrics.py``), all named ``imgfarm_*``.

Several processes behind one port (a prefork Celery pool, several web workers) use
prometheus-client's multiprocess mode: set ``PROMETHEUS_MULTIPROC_DIR`` to an empty folder
private to the container *before* the process starts. prometheus-client reads that variable
itself at import time, which is why it is not an ``IMGFARM_*`` setting.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, multiprocess, start_http_server

from shared.settings import Settings

log = logging.getLogger(__name__)


def multiprocess_mode() -> bool:
    """Whether metric values go to shared files (``PROMETHEUS_MULTIPROC_DIR`` is set)."""
    # Read the variable prometheus-client itself decided on at import; not our setting.
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def exposition_registry() -> CollectorRegistry:
    """What ``/metrics`` shows: this process's metrics, or every process's in multiprocess mode."""
    if not multiprocess_mode():
        return REGISTRY
    # A fresh registry that only merges the files: registering the live metrics too would
    # count this process twice.
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


@dataclass
class MetricsServer:
    """The ``/metrics`` listener of this process, stoppable (tests, clean shutdown)."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_metrics_server(settings: Settings) -> MetricsServer | None:
    """Serve ``/metrics`` on ``settings.metrics_port`` in a thread; None when unset.

    A port that cannot be bound is logged, not raised: a render worker must not stop
    rendering for want of metrics (its readiness probe on that port then tells).
    """
    if settings.metrics_port is None:
        return None
    try:
        server, thread = start_http_server(
            settings.metrics_port, settings.metrics_address, registry=exposition_registry()
        )
    except OSError as e:
        log.error(
            "metrics: cannot listen on %s:%s: %s",
            settings.metrics_address,
            settings.metrics_port,
            e,
        )
        return None
    log.info("metrics on http://%s:%s/metrics", settings.metrics_address, settings.metrics_port)
    return MetricsServer(server, thread)


def mark_process_dead(pid: int | None = None) -> None:
    """Drop the live gauges of a finished process (multiprocess mode only)."""
    if multiprocess_mode():
        multiprocess.mark_process_dead(pid or os.getpid())  # type: ignore[no-untyped-call]

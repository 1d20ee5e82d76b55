"""Start the dispatcher process. Imports only ``shared`` and ``dispatch``: no torch, no model,
so it runs in the small api image and starts in a second."""

from __future__ import annotations

import logging
import signal
import threading

from dispatch.dispatcher import Dispatcher
from shared.broker import make_celery
from shared.db import make_engine, make_session_factory
from shared.registry import load_registry
from shared.settings import Settings

log = logging.getLogger(__name__)


def run_dispatcher(settings: Settings) -> None:
    """Block handing queued jobs to Redis until SIGTERM or SIGINT."""
    from dispatch.farm_metrics import FarmMetrics
    from shared.metrics import start_metrics_server

    engine = make_engine(settings.database_url)
    # Farm gauges (backlog per model, oldest queued, expired leases) come from Postgres:
    # Flower has no queue depth, and Redis is kept shallow on purpose.
    start_metrics_server(settings)
    farm = FarmMetrics(worker_fresh_seconds=max(10, settings.lease_seconds))
    dispatcher = Dispatcher(
        settings,
        make_session_factory(engine),
        make_celery(settings, "imgfarm-dispatcher"),
        load_registry(settings.models),
        on_tick=farm.update,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("dispatcher started (poll every %.2fs)", settings.dispatch_poll_seconds)
    dispatcher.run(stop)
    engine.dispose()
    log.info("dispatcher stopped")

"""The FastAPI application factory."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from api.body_limit import BodyLimitMiddleware
from api.errors import register_error_handlers
from api.fetch_slots import FetchSlots
from api.live import EventHub
from api.metrics import install_api_metrics
from api.routes import adapters as adapter_routes
from api.routes import batches, files, health, jobs, models, presets, review, uploads, webhooks
from api.routes import events as event_routes
from api.routes import keys as key_routes
from api.routes import thumbnails as thumbnail_routes
from api.routes import usage as usage_routes
from api.routes.console import install_console
from shared.db import make_engine, make_session_factory
from shared.logs import LogContextMiddleware
from shared.registry import load_registry
from shared.settings import Settings
from shared.storage import LocalStorage, S3Storage, storage_from_settings


def create_app(
    settings: Settings,
    *,
    storage: LocalStorage | S3Storage | None = None,
    listen_host: str | None = None,
) -> FastAPI:
    """Build the app from ``settings``; tests may hand in their own storage.

    No broker: jobs reach Redis through the dispatcher, so the api process runs (and stays
    ready) while Redis is down.
    """
    engine = make_engine(settings.database_url, **_pool_options(settings))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # What the process holds once it serves (modules, registry, routes) moves to the
        # permanent generation: a full collection then scans only what requests made since.
        # Before, one landing in a 10,000-job batch's request added ~90 ms to it.
        gc.freeze()
        yield
        app.state.event_hub.stop()
        engine.dispose()

    # Swagger UI and ReDoc from assets inside the package, not a CDN: /docs works offline
    # and on-prem (fastapi-offline ships the same swagger-ui dist FastAPI would fetch).
    app = FastAPIOffline(
        title="imgfarm",
        version="0.1.0",
        summary="A render farm for diffusion image-to-image.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.session_factory = make_session_factory(engine)
    app.state.storage = storage or storage_from_settings(settings)
    app.state.registry = load_registry(settings.models)
    # Live progress: one LISTEN (or, on SQLite, one poller) for all of this process's streams.
    app.state.event_hub = EventHub(
        settings.database_url, app.state.session_factory, settings.sse_poll_seconds
    )
    app.state.fetch_slots = FetchSlots(
        per_team=settings.fetch_concurrency_per_team,
        total=settings.fetch_concurrency,
        retry_after_seconds=settings.fetch_timeout_seconds,
    )
    register_error_handlers(app)
    # Innermost of ours: a refused body is still logged and counted in the metrics.
    app.add_middleware(
        BodyLimitMiddleware,
        limit=settings.body_limit_bytes,
        multipart_limit=settings.multipart_body_limit_bytes,
        multipart_paths=(uploads.MULTIPART_PATH, adapter_routes.MULTIPART_PATH),
    )
    app.add_middleware(LogContextMiddleware)
    install_api_metrics(app, settings, listen_host)
    app.include_router(health.router)
    app.include_router(key_routes.router)
    app.include_router(usage_routes.router)
    for module in (jobs, batches, review, uploads, models, presets, files, webhooks):
        app.include_router(module.router)  # each router lists its own error answers
    app.include_router(event_routes.router)
    app.include_router(adapter_routes.router)
    app.include_router(thumbnail_routes.router)
    install_console(app, app.state.storage)  # last: its routes are the catch-all views
    return app


def _pool_options(settings: Settings) -> dict[str, int]:
    if settings.database_url.startswith("sqlite"):
        return {}  # one file, one writer: SQLAlchemy's defaults suit it
    return {"pool_size": settings.api_db_pool_size, "max_overflow": settings.api_db_max_overflow}

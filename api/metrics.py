"""The API's Prometheus metrics: requests by route template, jobs submitted by model and team.

Where ``/metrics`` is served, and why it has no API key: with ``IMGFARM_METRICS_PORT`` set
(every deployment) it is served on that internal port only, like the workers' and the
dispatcher's, and the public port has no ``/metrics`` at all. Prometheus scrapes the
internal port; nothing routes it from outside, so no key is needed and none can leak into
a scrape config. Without the setting it is served on the API's own port only when that
listens on loopback (embedded / dev, 127.0.0.1) or ``IMGFARM_METRICS_ON_API_PORT=true``
asks for it; ``imgfarm api --host 0.0.0.0`` serves none. Either way it is unauthenticated
and internal-only: the labels name teams and models.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from sqlalchemy import event, inspect
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker
from starlette.requests import Request
from starlette.responses import Response

from shared.metrics import exposition_registry, start_metrics_server
from shared.models import Job, Team
from shared.settings import Settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# A path that matched no route is labelled with this, never with the path itself: scanners
# probing /wp-admin/... must not create a time series each.
UNMATCHED = "<unmatched>"

REQUESTS = Counter(
    "imgfarm_http_requests_total",
    "HTTP requests answered by the API, by method, route template and status code.",
    ["method", "route", "status"],
)
REQUEST_SECONDS = Histogram(
    "imgfarm_http_request_duration_seconds",
    "Time to answer an HTTP request, by method and route template.",
    ["method", "route"],
    # Submits fetch and check a source image (up to the fetch timeout): reach 30 s.
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
IN_PROGRESS = Gauge(
    "imgfarm_http_requests_in_progress",
    "HTTP requests being answered now.",
    ["method"],
    multiprocess_mode="livesum",
)
JOBS_SUBMITTED = Counter(
    "imgfarm_jobs_submitted_total",
    "Jobs committed by the API (single jobs and batch members), by model and team.",
    ["model", "team"],
)


def route_template(scope: Scope) -> str:
    """The route's path template (``/v1/jobs/{job_id}``), set by the router once it matched."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class MetricsMiddleware:
    """Counts and times every HTTP request by route template (pure ASGI: no body buffering)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        status = 500  # what the client gets if the app raises before answering

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        started = time.perf_counter()
        IN_PROGRESS.labels(method).inc()
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            IN_PROGRESS.labels(method).dec()
            route = route_template(scope)
            REQUEST_SECONDS.labels(method, route).observe(time.perf_counter() - started)
            REQUESTS.labels(method, route, str(status)).inc()


def metrics_response(_: Request) -> Response:
    """``GET /metrics`` in Prometheus' text format."""
    return Response(generate_latest(exposition_registry()), media_type=CONTENT_TYPE_LATEST)


# --- jobs submitted ---------------------------------------------------------------------
# Counted from the session, at commit: a job counts once it is promised to the client,
# whichever route created it (POST /v1/jobs, batches), and never when the request failed
# and rolled back.

_PENDING = "imgfarm_metrics_new_jobs"


def _team_label(session: Session, team_id: Any) -> str:
    # The authenticated team is in this session's identity map: read its name without SQL.
    team = session.identity_map.get(inspect(Team).identity_key_from_primary_key((team_id,)))
    name = inspect(team).dict.get("name") if team is not None else None
    return str(name) if name else str(team_id)


def _pending(session: Session) -> list[tuple[str, str, int]]:
    return session.info.setdefault(_PENDING, [])  # type: ignore[no-any-return]


def count_inserted_jobs(session: Session, model: str, team_id: Any, count: int) -> None:
    """Count ``count`` jobs of ``model`` for the team at this session's commit: for rows the
    ORM never sees (a batch's COPY, shared/bulk.py)."""
    _pending(session).append((model, _team_label(session, team_id), count))


def _collect_flushed_jobs(session: Session, _flush_context: Any) -> None:
    # after_flush still shows the flushed objects in session.new.
    for obj in session.new:
        if isinstance(obj, Job):
            _pending(session).append((obj.model, _team_label(session, obj.team_id), 1))


def _collect_bulk_inserted_jobs(state: ORMExecuteState) -> None:
    # session.execute(insert(Job), [rows...]): the ORM's bulk path bypasses session.new.
    if not state.is_insert or state.bind_mapper is not inspect(Job):
        return
    params = state.parameters
    rows = params if isinstance(params, list) else [params] if params else []
    for row in rows:
        if isinstance(row, dict) and "model" in row:
            team = _team_label(state.session, row.get("team_id"))
            _pending(state.session).append((str(row["model"]), team, 1))


def _count_committed_jobs(session: Session) -> None:
    for model, team, count in session.info.pop(_PENDING, []):
        JOBS_SUBMITTED.labels(model, team).inc(count)


def _forget_rolled_back_jobs(session: Session, _previous_transaction: Any = None) -> None:
    session.info.pop(_PENDING, None)


def track_submitted_jobs(session_factory: sessionmaker[Session]) -> None:
    """Count jobs committed through sessions of ``session_factory`` in JOBS_SUBMITTED."""
    event.listen(session_factory, "after_flush", _collect_flushed_jobs)
    event.listen(session_factory, "do_orm_execute", _collect_bulk_inserted_jobs)
    event.listen(session_factory, "after_commit", _count_committed_jobs)
    event.listen(session_factory, "after_soft_rollback", _forget_rolled_back_jobs)


# --- wiring ---------------------------------------------------------------------------


def serves_on_api_port(settings: Settings, listen_host: str | None) -> bool:
    """Whether ``/metrics`` shares the api's listener: never with a metrics port; else as
    ``metrics_on_api_port`` says, or, unset, only when the api listens on loopback (an app
    that does not say where it listens gets none)."""
    if settings.metrics_port is not None:
        return False
    if settings.metrics_on_api_port is not None:
        return settings.metrics_on_api_port
    if listen_host is None:
        return False
    if listen_host == "localhost":
        return True
    try:
        return ipaddress.ip_address(listen_host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def install_api_metrics(app: FastAPI, settings: Settings, listen_host: str | None = None) -> None:
    """Request metrics, job counts and ``/metrics`` (on the internal port when configured)."""
    app.add_middleware(MetricsMiddleware)
    track_submitted_jobs(app.state.session_factory)
    if serves_on_api_port(settings, listen_host):
        app.add_route("/metrics", metrics_response, methods=["GET"], include_in_schema=False)
        return
    if settings.metrics_port is None:
        return  # none at all: set IMGFARM_METRICS_PORT (or IMGFARM_METRICS_ON_API_PORT)
    # Own port: start the listener with the app and stop it with the app.
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan_with_metrics(app_: Any) -> AsyncIterator[Any]:
        server = start_metrics_server(settings)
        app.state.metrics_server = server
        try:
            async with inner(app_) as state:
                yield state
        finally:
            if server is not None:
                server.close()

    app.router.lifespan_context = lifespan_with_metrics

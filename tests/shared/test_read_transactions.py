"""Reads end their transactions with COMMIT, never the ROLLBACK of a bare session's close
(shared/db.py session_scope says why: psycopg deallocates every prepared statement of the
connection on a ROLLBACK). A pooled connection keeps its prepared statements across reads,
and a healthy api read, dispatcher tick and worker task send no ROLLBACK at all."""

from __future__ import annotations

import dataclasses
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg.pq import TransactionStatus
from sqlalchemy import Engine, event, select, text
from sqlalchemy.pool import Pool

from dispatch.dispatcher import Dispatcher
from dispatch.farm_metrics import FarmMetrics
from shared.broker import make_celery
from shared.db import make_engine, make_session_factory, session_scope
from shared.models import Job
from shared.registry import BUILTINS
from shared.storage import LocalStorage
from shared.teams import ensure_team
from tests.factories import QUICK_PARAMS, batch_body, png_bytes, queued_job
from worker.context import WorkerContext
from worker.pipelines import load_model
from worker.tasks import run_render

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _caller() -> str:
    """The first frame of this repository's code (not a test's, not a library's)."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(str(ROOT)) and "/.venv/" not in name and "/tests/" not in name:
            return f"{Path(name).relative_to(ROOT)}:{frame.f_lineno} {frame.f_code.co_name}"
        frame = frame.f_back
    return "?"


@pytest.fixture
def rollbacks() -> Iterator[list[str]]:
    """Where each ROLLBACK came from while installed: a Connection's (a session closed or
    rolled back with its transaction open) or the pool's (a connection given back inside a
    transaction)."""
    seen: list[str] = []

    def on_rollback(conn: Any) -> None:
        seen.append(_caller())

    def on_reset(dbapi_conn: Any, record: Any, state: Any) -> None:
        # The pool rolls back every returned connection; psycopg skips it when idle.
        info = getattr(dbapi_conn, "info", None)
        if info is not None and info.transaction_status != TransactionStatus.IDLE:
            seen.append(f"pool reset: {_caller()}")

    event.listen(Engine, "rollback", on_rollback)
    event.listen(Pool, "reset", on_reset)
    try:
        yield seen
    finally:
        event.remove(Engine, "rollback", on_rollback)
        event.remove(Pool, "reset", on_reset)


def prepared(factory: Any) -> list[str]:
    with session_scope(factory) as s:
        return list(s.scalars(text("SELECT statement FROM pg_prepared_statements")))


def test_a_pooled_connection_keeps_its_prepared_statements_across_reads(settings):
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("prepared statements are Postgres's")
    engine = make_engine(settings.database_url, pool_size=1, max_overflow=0)
    factory = make_session_factory(engine)
    probe = select(Job.id).where(Job.id == uuid.uuid4())
    try:
        for _ in range(8):  # psycopg prepares a query from its 5th run on a connection
            with session_scope(factory) as s:
                s.execute(probe).all()
        assert any("FROM jobs" in q for q in prepared(factory))
        # The cause, checked: the bare close's ROLLBACK drops them all (if psycopg stops
        # doing so, session_scope's note can go).
        with factory() as s:
            s.execute(probe).all()
        assert prepared(factory) == []
    finally:
        engine.dispose()


def test_a_healthy_read_tick_and_task_send_no_rollback(
    rollbacks, client, new_key, settings, session_factory, tmp_path
):
    # The api: a submit, then the reads a client polls with.
    headers = {"Authorization": f"Bearer {new_key()}"}
    batch = client.post("/v1/batches", json=batch_body(), headers=headers).json()["id"]
    for path in (f"/v1/batches/{batch}", f"/v1/batches/{batch}/jobs", "/v1/jobs", "/v1/usage"):
        assert client.get(path, headers=headers).status_code == 200, path

    # The dispatcher (with the farm gauges it reads each tick) and an echo worker, on a
    # model of their own so no other test's worker takes these messages.
    spec = dataclasses.replace(BUILTINS["echo"], alias=f"echo-{uuid.uuid4().hex[:6]}")
    storage = LocalStorage(tmp_path / "objects", "http://test", "secret")
    storage.put("sources/s", png_bytes(40, 40), "image/png")
    with session_scope(session_factory) as s:
        team = ensure_team(s, f"reads-{uuid.uuid4().hex[:6]}")
        jobs = [
            queued_job(spec.alias, "sources/s", {**QUICK_PARAMS, "seed": n}, team=team.id)
            for n in range(4)
        ]
        s.add_all(jobs)
    ids = [j.id for j in jobs]
    dispatcher = Dispatcher(
        settings,
        session_factory,
        make_celery(settings),
        {spec.alias: spec},
        on_tick=FarmMetrics().update,
        storage=storage,
    )
    assert dispatcher.tick().sent_jobs == len(ids)
    ctx = WorkerContext(
        settings=settings,
        model=load_model(spec, settings),
        storage=storage,
        session_factory=session_factory,
        name=f"reads-{uuid.uuid4().hex[:6]}",
    )
    try:
        assert run_render(ctx, ids).outcomes["succeeded"] == len(ids)
    finally:
        ctx.close()
    dispatcher.tick()
    with session_scope(session_factory) as s:
        assert set(s.scalars(select(Job.status).where(Job.id.in_(ids)))) == {"succeeded"}
    assert rollbacks == [], "\n".join(rollbacks)

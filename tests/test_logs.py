"""Structured logs: JSON lines carrying job/batch/team/worker context, in the API's thread pool
and in Celery tasks, never leaking from one request or task into the next."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from contextvars import copy_context
from types import SimpleNamespace

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from shared.logs import (
    LogContextMiddleware,
    bind_log_context,
    clear_log_context,
    configure_logging,
    current_log_context,
    log_context,
    task_log_fields,
)
from shared.settings import Settings


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """Root logging configured as JSON into a buffer; the previous handlers come back after."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    stream = io.StringIO()
    configure_logging(Settings(log_format="json", log_level="DEBUG"), stream=stream)
    yield stream
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    clear_log_context()


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_line_carries_bound_context_and_extras(log_stream):
    log = logging.getLogger("imgfarm.test")
    job_id = uuid.uuid4()
    with log_context(job_id=job_id, batch_id=None, team="acme"):
        log.info("rendered %d image(s)", 4, extra={"render_seconds": 1.5})
    log.info("outside")
    first, second = lines(log_stream)
    assert first["message"] == "rendered 4 image(s)"
    assert first["level"] == "INFO" and first["logger"] == "imgfarm.test"
    assert first["job_id"] == str(job_id) and first["team"] == "acme"
    assert first["render_seconds"] == 1.5
    assert "batch_id" not in first, "None means unknown: the field is left out"
    assert "job_id" not in second and "team" not in second


def test_exception_is_one_json_line_with_traceback(log_stream):
    try:
        raise ValueError("bad strength 7")
    except ValueError:
        logging.getLogger("imgfarm.test").exception("render failed")
    (entry,) = lines(log_stream)
    assert entry["exc_type"] == "ValueError"
    assert "bad strength 7" in str(entry["exc"]) and "Traceback" in str(entry["exc"])


def test_text_format_appends_context():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:]
    try:
        configure_logging(Settings(log_format="text"), stream=stream)
        with log_context(job_id="j-1", worker="tiny-1@host"):
            logging.getLogger("imgfarm.test").warning("slow render")
    finally:
        root.handlers[:] = saved
    assert stream.getvalue().rstrip().endswith("slow render [job_id=j-1 worker=tiny-1@host]")


def test_configure_logging_twice_keeps_one_handler(log_stream):
    configure_logging(Settings(log_format="json"), stream=log_stream)
    logging.getLogger("imgfarm.test").warning("once")
    assert len(lines(log_stream)) == 1


def test_binding_in_a_copied_context_reaches_the_request_scope():
    # FastAPI runs sync dependencies and endpoints each in a *copy* of the request's
    # context: a team bound by the auth dependency must still be seen by the endpoint.
    with log_context(job_id="j-2"):
        copy_context().run(bind_log_context, team="acme")
        assert current_log_context() == {"job_id": "j-2", "team": "acme"}
    assert current_log_context() == {}


def test_api_lines_name_the_team_of_their_request_only(log_stream):
    app = FastAPI()
    app.add_middleware(LogContextMiddleware)
    log = logging.getLogger("imgfarm.test.api")

    def team_dep(team: str | None = None) -> str | None:
        if team:
            bind_log_context(team=team)
        return team

    @app.get("/work")
    def work(team: str | None = Depends(team_dep)) -> dict[str, str]:
        log.info("handling")
        return {"ok": "yes"}

    with TestClient(app) as client:
        assert client.get("/work", params={"team": "acme"}).status_code == 200
        assert client.get("/work").status_code == 200
    handled = [e for e in lines(log_stream) if e["message"] == "handling"]
    assert [e.get("team") for e in handled] == ["acme", None]


def test_task_fields_name_the_jobs_worker_and_model():
    request = SimpleNamespace(
        id="task-1", hostname="tiny-42@host", delivery_info={"routing_key": "render.tiny"}
    )
    task = SimpleNamespace(request=request)
    single = task_log_fields(task, (["job-a"],))
    assert single == {
        "task_id": "task-1",
        "worker": "tiny-42@host",
        "model": "tiny",
        "job_id": "job-a",
    }
    batch = task_log_fields(task, (["job-a", "job-b"],))
    assert batch["job_ids"] == "job-a,job-b" and "job_id" not in batch
    webhook = task_log_fields(
        SimpleNamespace(
            request=SimpleNamespace(id="t", hostname="w", delivery_info={"routing_key": "webhooks"})
        ),
        (),
    )
    assert webhook["model"] is None


def test_celery_task_signals_bind_then_clear_the_job_context(log_stream):
    from celery import signals

    class FakeTask:  # signal senders must be hashable
        request = SimpleNamespace(id="task-9", hostname="tiny-1@h", delivery_info={})

    task = FakeTask()
    signals.task_prerun.send(sender=task, task_id="task-9", task=task, args=(["job-z"],), kwargs={})
    logging.getLogger("imgfarm.test.task").info("claimed")
    signals.task_postrun.send(
        sender=task,
        task_id="task-9",
        task=task,
        args=(["job-z"],),
        kwargs={},
        retval="succeeded",
        state="SUCCESS",
    )
    logging.getLogger("imgfarm.test.task").info("idle")
    claimed, idle = lines(log_stream)
    assert claimed["job_id"] == "job-z" and claimed["worker"] == "tiny-1@h"
    assert "job_id" not in idle and "worker" not in idle


# --- OpenTelemetry (optional) ----------------------------------------------------------


def test_tracing_is_off_unless_enabled():
    from shared.tracing import configure_tracing

    assert configure_tracing(Settings(), "imgfarm-test") is False


def test_tracing_names_the_missing_package(monkeypatch):
    import shared.tracing as tracing
    from shared.errors import ConfigError

    def missing(name: str):
        raise ImportError(f"No module named {name!r}", name=name)

    monkeypatch.setattr(tracing.importlib, "import_module", missing)
    expected = r"opentelemetry\.instrumentation\.fastapi.*imgfarm\[otel\]"
    with pytest.raises(ConfigError, match=expected):
        tracing.configure_tracing(Settings(otel_enabled=True), "imgfarm-test")


def test_enabled_tracing_turns_an_api_request_into_a_span():
    # A process of its own: the instrumentations patch FastAPI, Celery, SQLAlchemy and
    # botocore for the whole process.
    script = textwrap.dedent("""
        from fastapi import FastAPI
        from fastapi.testclient import TestClient
        from opentelemetry import trace
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        from shared.settings import Settings
        from shared.tracing import configure_tracing

        assert configure_tracing(Settings(otel_enabled=True), "imgfarm-api")
        provider = trace.get_tracer_provider()
        memory = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(memory))
        app = FastAPI()

        @app.get("/v1/things/{thing_id}")
        def thing(thing_id: str) -> dict:
            return {"id": thing_id}

        assert TestClient(app).get("/v1/things/42").status_code == 200
        spans = memory.get_finished_spans()
        names = {s.name for s in spans}
        assert any(n.startswith("GET /v1/things/{thing_id}") for n in names), names
        service = spans[0].resource.attributes["service.name"]
        assert service == "imgfarm-api", service
        print("ok")
    """)
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
        "OTEL_BSP_SCHEDULE_DELAY": "600000",
    }
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]

"""Live progress over Server-Sent Events against a real ``imgfarm api`` process, dispatcher and
``echo`` worker (PostgreSQL LISTEN/NOTIFY), and on SQLite in process (the shared poller)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests.factories import batch_body, data_url, job_body, png_bytes
from tests.services import free_port, launch_dispatcher, launch_worker, wait_answers

pytestmark = pytest.mark.integration
PING_SECONDS = 0.3
TRANSITIONS = ("job.queued", "job.running", "job.succeeded")


@pytest.fixture(scope="module")
def farm(module_spawn) -> str:
    port = free_port()
    module_spawn(
        "api",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        env={"IMGFARM_SSE_PING_SECONDS": str(PING_SECONDS)},
    )
    url = f"http://127.0.0.1:{port}"
    wait_answers(f"{url}/healthz", 60, "imgfarm api")
    launch_dispatcher(module_spawn)
    launch_worker(module_spawn, "echo")
    return url


@dataclass
class Sse:
    """One parsed event; a ``: comment`` line (keep-alive) comes back as event ``comment``."""

    event: str
    data: dict[str, object] = field(default_factory=dict)
    id: str | None = None


def parse(lines: Iterator[str]) -> Iterator[Sse]:
    """The text/event-stream format, as a browser's EventSource reads it."""
    fields: dict[str, str] = {}
    for raw in lines:
        line = raw.rstrip("\r")
        if line.startswith(":"):
            yield Sse("comment")
        elif line == "":
            if fields:
                yield Sse(
                    fields.get("event", "message"), json.loads(fields["data"]), fields.get("id")
                )
            fields = {}
        else:
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


def stream(
    url: str, key: str, *, last_event_id: str | None = None, until: int | None = None
) -> list[Sse]:
    """Read a stream until it ends, or until ``until`` job events came (then hang up)."""
    headers = {"Authorization": f"Bearer {key}"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    seen: list[Sse] = []
    with httpx.stream("GET", url, headers=headers, timeout=30) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for event in parse(r.iter_lines()):
            if event.event != "comment":
                seen.append(event)
            if until is not None and sum(e.event.startswith("job.") for e in seen) >= until:
                break
    return seen


def test_a_client_sees_every_transition_once_across_a_reconnect(farm, new_key):
    key = new_key()
    body = batch_body(model="echo", variants=1)  # 2 images x 3 prompts = 6 jobs
    r = httpx.post(f"{farm}/v1/batches", json=body, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 202, r.text
    batch_id = r.json()["id"]
    url = f"{farm}/v1/batches/{batch_id}/events"

    # From the start of the log, hanging up part-way as a dropped connection would ...
    first = stream(url, key, last_event_id="0", until=8)
    assert first[0].event == "snapshot" and first[0].data["job_count"] == 6
    last_id = [e.id for e in first if e.id is not None][-1]
    # ... then resuming where it stopped, as EventSource does.
    second = stream(url, key, last_event_id=last_id)
    assert second[0].event == "snapshot"
    assert second[-1].event == "end"
    assert second[-1].data["status"] == "succeeded"
    assert second[-1].data["counts"]["succeeded"] == 6  # type: ignore[index]

    transitions = [e for e in first + second if e.event in TRANSITIONS]
    per_job = Counter((e.data["job_id"], e.event) for e in transitions)
    assert len({job for job, _ in per_job}) == 6
    assert set(per_job.values()) == {1}, "a transition was missed or repeated"
    assert len(per_job) == 6 * len(TRANSITIONS)
    ids = [e.id for e in transitions]
    assert len(set(ids)) == len(ids)
    # In each job's own order: queued, running, succeeded.
    for job in {job for job, _ in per_job}:
        order = [e.event for e in transitions if e.data["job_id"] == job]
        assert order == list(TRANSITIONS)


def test_a_job_stream_ends_with_the_job_and_pings_while_following(farm, new_key):
    key = new_key()
    auth = {"Authorization": f"Bearer {key}"}
    r = httpx.post(f"{farm}/v1/jobs", json=job_body(model="echo"), headers=auth)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    events = stream(f"{farm}/v1/jobs/{job_id}/events", key)
    assert events[0].event == "snapshot" and events[0].data["job_id"] == job_id
    assert events[-1].event == "end" and events[-1].data["status"] == "succeeded"

    # ?follow=true keeps a finished job's stream open: keep-alive comments arrive.
    started = time.monotonic()
    pings = 0
    url = f"{farm}/v1/jobs/{job_id}/events?follow=true"
    with httpx.stream("GET", url, headers=auth, timeout=10) as r:
        for event in parse(r.iter_lines()):
            assert event.event != "end"
            pings += event.event == "comment"
            if pings == 2:
                break
    assert time.monotonic() - started < 5


def test_streams_need_a_key_and_hide_other_teams(farm, new_key):
    owner, other = new_key(), new_key()
    r = httpx.post(
        f"{farm}/v1/jobs", json=job_body(model="echo"), headers={"Authorization": f"Bearer {owner}"}
    )
    job_id = r.json()["id"]
    batch = httpx.post(
        f"{farm}/v1/batches",
        json=batch_body(model="echo", variants=1, prompts=["a"], images=[data_url(png_bytes())]),
        headers={"Authorization": f"Bearer {owner}"},
    ).json()["id"]
    for path in (f"/v1/jobs/{job_id}/events", f"/v1/batches/{batch}/events"):
        assert httpx.get(f"{farm}{path}").status_code == 401
        foreign = httpx.get(f"{farm}{path}", headers={"Authorization": f"Bearer {other}"})
        assert foreign.status_code == 404, foreign.text
    unknown = f"{farm}/v1/batches/{uuid.uuid4()}/events"
    assert httpx.get(unknown, headers={"Authorization": f"Bearer {owner}"}).status_code == 404


# --- SQLite: no NOTIFY, one poller per api process -----------------------------------------


def test_on_sqlite_the_shared_poller_wakes_a_waiting_stream(tmp_path):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from shared.db import session_scope
    from shared.jobs import claim_jobs_bulk, mark_succeeded_bulk
    from shared.migrate import upgrade
    from shared.settings import Settings
    from shared.teams import create_api_key, ensure_team

    settings = Settings(data_dir=tmp_path, sse_poll_seconds=0.1)
    upgrade(settings.database_url)
    app = create_app(settings)
    with TestClient(app) as client:
        with session_scope(app.state.session_factory) as session:
            key = create_api_key(session, ensure_team(session, "solo"))
        auth = {"Authorization": f"Bearer {key}"}
        r = client.post("/v1/jobs", json=job_body(model="echo"), headers=auth)
        assert r.status_code == 202, r.text
        job_id = uuid.UUID(r.json()["id"])

        def finish_once_streaming() -> None:
            deadline = time.monotonic() + 10
            while app.state.event_hub.streams() == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            with session_scope(app.state.session_factory) as session:
                claim_jobs_bulk(session, [job_id], "w", 60)
            with session_scope(app.state.session_factory) as session:
                mark_succeeded_bulk(session, [(job_id, [], {})])

        worker = threading.Thread(target=finish_once_streaming)
        worker.start()
        started = time.monotonic()
        r = client.get(f"/v1/jobs/{job_id}/events", headers=auth)
        waited = time.monotonic() - started
        worker.join()
    events = list(parse(iter(r.text.split("\n"))))
    names = [e.event for e in events if e.event != "comment"]
    assert names == ["snapshot", "job.running", "job.succeeded", "end"]
    # Woken by the poller, not by a stream's own idle check (30 s).
    assert waited < 5

"""Live progress on SQLite (the embedded stack): no NOTIFY there, so one poller per api
process wakes the streams. The Postgres path (LISTEN/NOTIFY, a real api process, worker and
resume with Last-Event-ID) is tested with the Python client in tests/test_client.py."""

from __future__ import annotations

import threading
import time
import uuid

from fastapi.testclient import TestClient

from api.app import create_app
from shared.db import session_scope
from shared.jobs import claim_jobs_bulk, mark_succeeded_bulk
from shared.migrate import upgrade
from shared.settings import Settings
from shared.teams import create_api_key, ensure_team
from tests.factories import job_body
from tests.sse import parse


def test_on_sqlite_the_shared_poller_wakes_a_waiting_stream(tmp_path):
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
        # A Last-Event-ID that is not a number is refused, naming it.
        bad = client.get(f"/v1/jobs/{job_id}/events", headers={**auth, "Last-Event-ID": "x"})
    events = list(parse(iter(r.text.split("\n"))))
    names = [e.event for e in events if e.event != "comment"]
    assert names == ["snapshot", "job.running", "job.succeeded", "end"]
    # Woken by the poller, not by a stream's own idle check (30 s).
    assert waited < 5
    assert bad.status_code == 422 and "Last-Event-ID" in bad.text, bad.text

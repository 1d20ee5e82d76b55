"""A live progress stream opened with a key that is then revoked ends within one keep-alive
interval (the reconnect gets 401), instead of following the team's jobs for as long as it
stays open. In process on SQLite: no farm needed, the job just stays queued."""

from __future__ import annotations

import threading
import time
import uuid

from fastapi.testclient import TestClient

from api.app import create_app
from shared.db import session_scope
from shared.migrate import upgrade
from shared.settings import Settings
from shared.teams import create_api_key, ensure_team
from tests.factories import job_body

PING_SECONDS = 0.3


def test_a_revoked_keys_open_stream_ends_within_a_keep_alive(tmp_path):
    settings = Settings(data_dir=tmp_path, sse_poll_seconds=0.1, sse_ping_seconds=PING_SECONDS)
    upgrade(settings.database_url)
    app = create_app(settings)
    with TestClient(app) as client:
        with session_scope(app.state.session_factory) as session:
            admin = {
                "Authorization": f"Bearer {create_api_key(session, ensure_team(session, 'solo'))}"
            }
        member = client.post("/v1/keys", json={}, headers=admin).json()
        auth = {"Authorization": f"Bearer {member['key']}"}
        r = client.post("/v1/jobs", json=job_body(model="echo"), headers=auth)
        assert r.status_code == 202, r.text
        job_id = uuid.UUID(r.json()["id"])
        revoked_at: list[float] = []

        def revoke_once_streaming() -> None:
            deadline = time.monotonic() + 10
            while app.state.event_hub.streams() == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert client.delete(f"/v1/keys/{member['id']}", headers=admin).status_code == 204
            revoked_at.append(time.monotonic())

        revoker = threading.Thread(target=revoke_once_streaming)
        revoker.start()
        ended = False
        give_up = time.monotonic() + 10
        # follow=true: without the key check this stream never ends (the job stays queued).
        with client.stream("GET", f"/v1/jobs/{job_id}/events?follow=true", headers=auth) as s:
            assert s.status_code == 200
            for _ in s.iter_lines():  # keep-alive comments come every PING_SECONDS
                if time.monotonic() > give_up:
                    break
            else:
                ended = True
        closed_at = time.monotonic()
        revoker.join()
        again = client.get(f"/v1/jobs/{job_id}/events", headers=auth)
    assert ended, "the stream was still open 10 s after its key was revoked"
    assert closed_at - revoked_at[0] < 3 * PING_SECONDS + 1, closed_at - revoked_at[0]
    assert again.status_code == 401, again.text

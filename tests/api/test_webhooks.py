"""``/v1/webhooks`` and the transactional outbox, on the real app and PostgreSQL.

No webhook worker runs here: these tests look at the delivery rows the api and the state
transitions write (tests/worker/test_webhook_delivery.py sends them for real).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from standardwebhooks import Webhook

from api.app import create_app
from shared.jobs import claim_jobs_bulk, expire_leases, mark_failed_bulk, mark_succeeded_bulk
from shared.models import Batch, Job, WebhookDelivery, utcnow
from shared.webhooks import active_secrets, sign
from tests.factories import batch_body, job_body
from tests.shared.test_ssrf import HOSTILE, NOT_HTTP, WITH_CREDENTIALS

# Nothing listens on port 9 (discard): rows pointing there are never delivered by accident.
HOOK = "http://127.0.0.1:9/hook"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def loopback_app(settings):
    """The app of an on-prem farm that allows loopback receivers (the tests' receiver)."""
    return create_app(settings.model_copy(update={"allow_private_networks": "127.0.0.0/8"}))


@pytest.fixture
def api(loopback_app) -> Iterator[TestClient]:
    with TestClient(loopback_app) as c:
        yield c


def deliveries(session_factory, **where) -> list[WebhookDelivery]:
    with session_factory() as s:
        query = select(WebhookDelivery).order_by(WebhookDelivery.created_at)
        for name, value in where.items():
            query = query.where(getattr(WebhookDelivery, name) == value)
        return list(s.scalars(query))


def claim(s, job_id: uuid.UUID, worker: str = "fake-worker") -> None:
    assert claim_jobs_bulk(s, [job_id], worker, 300) == [job_id]


def succeed(s, job_id: uuid.UUID) -> bool:
    """running -> succeeded, which writes its job.succeeded rows in the same session."""
    return mark_succeeded_bulk(s, [(job_id, [], {"fake": True})]) == [job_id]


def finish(session_factory, job_id: uuid.UUID, status: str = "succeeded") -> None:
    """Play the worker: claim, then succeed or fail (with its event) in one transaction."""
    with session_factory() as s:
        claim(s, job_id)
        s.commit()
        if status == "succeeded":
            assert succeed(s, job_id)
        else:
            assert mark_failed_bulk(s, [job_id], "PermanentRenderError: simulated") == [job_id]
        s.commit()


# --- endpoints ------------------------------------------------------------------------------


def test_endpoint_secret_is_shown_once_and_endpoints_are_team_scoped(api, new_key):
    key, other = new_key(), new_key()
    created = api.post(
        "/v1/webhooks", json={"url": HOOK, "events": ["job.succeeded"]}, headers=auth(key)
    )
    assert created.status_code == 201, created.text
    endpoint = created.json()
    assert endpoint["secret"].startswith("whsec_")
    Webhook(endpoint["secret"])  # the reference library accepts it
    listed = api.get("/v1/webhooks", headers=auth(key)).json()["endpoints"]
    assert [e["id"] for e in listed] == [endpoint["id"]]
    assert "secret" not in listed[0]
    assert api.get("/v1/webhooks", headers=auth(other)).json()["endpoints"] == []
    for method, path in [
        ("delete", f"/v1/webhooks/{endpoint['id']}"),
        ("post", f"/v1/webhooks/{endpoint['id']}/rotate"),
    ]:
        assert api.request(method, path, headers=auth(other)).status_code == 404
    assert api.delete(f"/v1/webhooks/{endpoint['id']}", headers=auth(key)).status_code == 204
    assert api.get("/v1/webhooks", headers=auth(key)).json()["endpoints"] == []


def test_unknown_event_type_is_refused_naming_the_field(api, new_key):
    answer = api.post(
        "/v1/webhooks", json={"url": HOOK, "events": ["job.exploded"]}, headers=auth(new_key())
    )
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["field"] == "events"


@pytest.mark.parametrize("url", HOSTILE + NOT_HTTP + WITH_CREDENTIALS)
def test_hostile_receiver_urls_are_refused_at_submit(client, new_key, url):
    """The default farm (no private range allowed): endpoints, jobs and batches alike."""
    key = new_key()
    answer = client.post(
        "/v1/webhooks", json={"url": url, "events": ["job.failed"]}, headers=auth(key)
    )
    assert answer.status_code == 422 and answer.json()["errors"][0]["field"] == "url"
    answer = client.post("/v1/jobs", json=job_body(webhook_url=url), headers=auth(key))
    assert answer.status_code == 422 and answer.json()["errors"][0]["field"] == "webhook_url"
    answer = client.post("/v1/batches", json=batch_body(webhook_url=url), headers=auth(key))
    assert answer.status_code == 422 and answer.json()["errors"][0]["field"] == "webhook_url"


def test_rotation_keeps_the_old_secret_signing_for_the_overlap(api, new_key, session_factory):
    key = new_key()
    endpoint = api.post(
        "/v1/webhooks", json={"url": HOOK, "events": ["job.failed"]}, headers=auth(key)
    ).json()
    rotated = api.post(
        f"/v1/webhooks/{endpoint['id']}/rotate", json={"overlap_seconds": 600}, headers=auth(key)
    )
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["secret"]
    assert new != endpoint["secret"] and rotated.json()["previous_secret_expires_at"]
    from shared.models import WebhookEndpoint

    with session_factory() as s:
        row = s.get(WebhookEndpoint, uuid.UUID(endpoint["id"]))
        keys = active_secrets(
            row.secret, row.previous_secret, row.previous_secret_expires_at, utcnow()
        )
    body = '{"type":"job.failed"}'
    headers = sign("evt_x", body, keys, utcnow())
    Webhook(endpoint["secret"]).verify(body, headers)
    Webhook(new).verify(body, headers)


def test_team_secret_is_created_once_and_rotates(api, new_key):
    key = new_key()
    first = api.get("/v1/webhooks/secret", headers=auth(key)).json()
    assert first["secret"].startswith("whsec_") and first["previous_secret_expires_at"] is None
    assert api.get("/v1/webhooks/secret", headers=auth(key)).json() == first
    rotated = api.post("/v1/webhooks/secret/rotate", headers=auth(key)).json()
    assert rotated["secret"] != first["secret"] and rotated["previous_secret_expires_at"]
    assert api.get("/v1/webhooks/secret", headers=auth(new_key())).json() != first


# --- the outbox -----------------------------------------------------------------------------


def test_event_rows_commit_with_the_state_change_and_never_without(api, new_key, session_factory):
    key = new_key()
    api.post("/v1/webhooks", json={"url": HOOK, "events": ["job.succeeded"]}, headers=auth(key))
    job_id = uuid.UUID(
        api.post("/v1/jobs", json=job_body(webhook_url=HOOK + "/job"), headers=auth(key)).json()[
            "id"
        ]
    )
    # A transition that rolls back leaves no event behind.
    with session_factory() as s:
        claim(s, job_id, "w")
        s.commit()
        assert succeed(s, job_id)
        in_transaction = select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)
        assert len(s.scalars(in_transaction).all()) == 2, "written by the transition itself"
        s.rollback()
    assert deliveries(session_factory, job_id=job_id) == []
    with session_factory() as s:
        assert succeed(s, job_id)
        s.commit()
    rows = deliveries(session_factory, job_id=job_id)
    # One event, one id, one body, two receivers: the job's URL and the team endpoint.
    assert sorted(r.url for r in rows) == [HOOK, HOOK + "/job"]
    assert len({r.event_id for r in rows}) == 1 and len({r.body for r in rows}) == 1
    event = json.loads(rows[0].body)
    assert event["type"] == "job.succeeded" and event["id"] == rows[0].event_id
    assert event["data"]["id"] == str(job_id) and event["data"]["status"] == "succeeded"
    assert all(r.status == "pending" and r.attempts == 0 for r in rows)


def test_only_subscribed_events_reach_an_endpoint(api, new_key, session_factory):
    key = new_key()
    api.post("/v1/webhooks", json={"url": HOOK, "events": ["job.failed"]}, headers=auth(key))
    ok, bad = (
        uuid.UUID(api.post("/v1/jobs", json=job_body(), headers=auth(key)).json()["id"])
        for _ in range(2)
    )
    finish(session_factory, ok, "succeeded")
    finish(session_factory, bad, "failed")
    assert deliveries(session_factory, job_id=ok) == []
    assert [r.event_type for r in deliveries(session_factory, job_id=bad)] == ["job.failed"]


def test_cancel_and_lease_sweep_emit_their_events(api, new_key, session_factory):
    key = new_key()
    api.post(
        "/v1/webhooks",
        json={"url": HOOK, "events": ["job.canceled", "job.failed"]},
        headers=auth(key),
    )
    canceled, lost = (
        uuid.UUID(api.post("/v1/jobs", json=job_body(), headers=auth(key)).json()["id"])
        for _ in range(2)
    )
    assert api.post(f"/v1/jobs/{canceled}/cancel", headers=auth(key)).json()["status"] == "canceled"
    with session_factory() as s:
        claim(s, lost, "gone-worker")
        s.execute(
            update(Job)
            .where(Job.id == lost)
            .values(attempts=99, lease_expires_at=utcnow() - timedelta(seconds=1))
        )
        s.commit()
        requeued, failed = expire_leases(s, max_attempts=3)
        s.commit()
    assert failed >= 1
    assert [r.event_type for r in deliveries(session_factory, job_id=canceled)] == ["job.canceled"]
    (row,) = deliveries(session_factory, job_id=lost)
    assert (
        row.event_type == "job.failed" and "lease expired" in json.loads(row.body)["data"]["error"]
    )


def test_batch_cancel_sends_job_events_and_one_batch_completed(api, new_key, session_factory):
    key = new_key()
    body = batch_body(webhook_url=HOOK + "/batch")
    batch_id = api.post("/v1/batches", json=body, headers=auth(key)).json()["id"]
    with session_factory() as s:
        job_ids = list(s.scalars(select(Job.id).where(Job.batch_id == uuid.UUID(batch_id))))
    finish(session_factory, job_ids[0], "succeeded")
    finish(session_factory, job_ids[1], "failed")
    assert api.post(f"/v1/batches/{batch_id}/cancel", headers=auth(key)).status_code == 200
    api.post(f"/v1/batches/{batch_id}/cancel", headers=auth(key))  # twice: nothing new
    rows = deliveries(session_factory, batch_id=uuid.UUID(batch_id))
    by_type: dict[str, list[WebhookDelivery]] = {}
    for r in rows:
        by_type.setdefault(r.event_type, []).append(r)
    assert len(by_type["job.canceled"]) == len(job_ids) - 2
    assert len(by_type["job.succeeded"]) == 1 and len(by_type["job.failed"]) == 1
    (completed,) = by_type["batch.completed"]
    data = json.loads(completed.body)["data"]
    assert data["id"] == batch_id and data["status"] == "failed"
    assert data["counts"] == {
        "queued": 0,
        "running": 0,
        "succeeded": 1,
        "failed": 1,
        "canceled": len(job_ids) - 2,
    }
    assert data["failed_job_ids"] == [str(job_ids[1])]


def test_batch_completed_is_emitted_once_when_the_last_jobs_finish_concurrently(
    api, new_key, session_factory
):
    """Twelve workers finish the twelve jobs of a batch at the same instant, each in its own
    transaction: exactly one of them sends batch.completed."""
    key = new_key()
    batch_id = uuid.UUID(
        api.post(
            "/v1/batches", json=batch_body(webhook_url=HOOK + "/race"), headers=auth(key)
        ).json()["id"]
    )
    with session_factory() as s:
        job_ids = list(s.scalars(select(Job.id).where(Job.batch_id == batch_id)))
        assert claim_jobs_bulk(s, job_ids, "w", 300) == job_ids
        s.commit()
    barrier = threading.Barrier(len(job_ids))
    errors: list[BaseException] = []

    def finish_one(job_id: uuid.UUID) -> None:
        try:
            with session_factory() as s:
                barrier.wait(timeout=30)
                assert succeed(s, job_id)
                s.commit()
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=finish_one, args=(j,)) for j in job_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with session_factory() as s:
        completed = s.scalar(
            select(func.count())
            .select_from(WebhookDelivery)
            .where(
                WebhookDelivery.batch_id == batch_id,
                WebhookDelivery.event_type == "batch.completed",
            )
        )
        assert s.get(Batch, batch_id).completed_at is not None
    assert completed == 1


def test_retry_reopens_a_completed_batch(api, new_key, session_factory):
    key = new_key()
    body = batch_body(webhook_url=HOOK + "/retry", images=batch_body()["images"][:1], variants=1)
    batch_id = uuid.UUID(api.post("/v1/batches", json=body, headers=auth(key)).json()["id"])
    with session_factory() as s:
        job_ids = list(s.scalars(select(Job.id).where(Job.batch_id == batch_id)))
    for job_id in job_ids:
        finish(session_factory, job_id, "failed")
    assert api.post(f"/v1/batches/{batch_id}/retry", headers=auth(key)).status_code == 200
    for job_id in job_ids:
        finish(session_factory, job_id, "succeeded")
    events = [
        json.loads(r.body)["data"]["status"]
        for r in deliveries(session_factory, batch_id=batch_id, event_type="batch.completed")
    ]
    assert events == ["failed", "succeeded"]


# --- the delivery log -----------------------------------------------------------------------


def test_deliveries_are_listed_per_team_and_replayable(api, new_key, session_factory):
    key, other = new_key(), new_key()
    job_id = api.post("/v1/jobs", json=job_body(webhook_url=HOOK), headers=auth(key)).json()["id"]
    finish(session_factory, uuid.UUID(job_id), "failed")
    listed = api.get("/v1/webhooks/deliveries", headers=auth(key)).json()
    (delivery,) = listed["deliveries"]
    assert delivery["job_id"] == job_id and delivery["status"] == "pending"
    assert delivery["attempts"] == 0 and delivery["next_attempt_at"]
    assert api.get("/v1/webhooks/deliveries", headers=auth(other)).json()["deliveries"] == []
    path = f"/v1/webhooks/deliveries/{delivery['id']}"
    assert api.get(path, headers=auth(other)).status_code == 404
    assert api.post(f"{path}/redeliver", headers=auth(other)).status_code == 404
    detail = api.get(path, headers=auth(key)).json()
    assert detail["payload"]["type"] == "job.failed" and detail["attempt_log"] == []
    # A dead-lettered delivery goes back to pending with a fresh round, same event id.
    with session_factory() as s:
        s.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == uuid.UUID(delivery["id"]))
            .values(status="dead", attempts=10, next_attempt_at=None)
        )
        s.commit()
    dead = api.get("/v1/webhooks/deliveries?status=dead", headers=auth(key)).json()
    assert [d["id"] for d in dead["deliveries"]] == [delivery["id"]]
    replay = api.post(f"{path}/redeliver", headers=auth(key))
    assert replay.status_code == 202, replay.text
    assert replay.json()["status"] == "pending" and replay.json()["attempts"] == 0
    assert replay.json()["event_id"] == delivery["event_id"]
    bad = api.get("/v1/webhooks/deliveries?status=lost", headers=auth(key))
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "status"


def test_deliveries_page_with_a_cursor(api, new_key, session_factory):
    key = new_key()
    for _ in range(3):
        job_id = api.post("/v1/jobs", json=job_body(webhook_url=HOOK), headers=auth(key)).json()
        finish(session_factory, uuid.UUID(job_id["id"]), "failed")
    first = api.get("/v1/webhooks/deliveries?limit=2", headers=auth(key)).json()
    assert len(first["deliveries"]) == 2 and first["next_cursor"]
    rest = api.get(
        f"/v1/webhooks/deliveries?limit=2&cursor={first['next_cursor']}", headers=auth(key)
    ).json()
    assert len(rest["deliveries"]) == 1 and rest["next_cursor"] is None
    ids = {d["id"] for d in first["deliveries"] + rest["deliveries"]}
    assert len(ids) == 3

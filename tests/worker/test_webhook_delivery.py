"""Webhook delivery end to end: a real ``imgfarm worker --webhooks`` process, PostgreSQL,
Redis, and a real HTTP receiver on loopback that verifies our signatures with the reference
``standardwebhooks`` library. The retry schedule is compressed to seconds."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.app import create_app
from shared.jobs import claim_jobs_bulk, mark_failed_bulk, mark_succeeded_bulk
from shared.models import Job, WebhookAttempt, WebhookDelivery, utcnow
from tests.factories import batch_body, job_body
from tests.receiver import Receiver
from tests.services import ImgfarmProcess, wait_for

pytestmark = pytest.mark.integration

# Ten attempts within about seven seconds (jittered): the Standard Webhooks shape, compressed.
SCHEDULE = "0,0.3,0.3,0.5,0.5,1,1,1,1,1"
ATTEMPTS = len(SCHEDULE.split(","))
# Only the webhook worker may reach the loopback receiver.
WEBHOOK_ENV = {
    "IMGFARM_ALLOW_PRIVATE_NETWORKS": "127.0.0.0/8",
    "IMGFARM_WEBHOOK_RETRY_SCHEDULE": SCHEDULE,
    "IMGFARM_WEBHOOK_POLL_SECONDS": "0.1",
    "IMGFARM_WEBHOOK_TIMEOUT_SECONDS": "5",
}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def webhook_worker(settings_env, session_dir, settings) -> Iterator[ImgfarmProcess]:
    """One webhook worker for the module (it needs no model: it is up in a few seconds)."""
    log = session_dir / f"webhooks-{uuid.uuid4().hex[:6]}.log"
    proc = ImgfarmProcess(
        ["worker", "--webhooks"], {**os.environ, **settings_env, **WEBHOOK_ENV}, log
    ).start()
    try:
        proc.wait_log(" ready.", timeout=120)
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def api(settings) -> Iterator[TestClient]:
    """The api of an on-prem farm whose receivers may live on loopback."""
    app = create_app(settings.model_copy(update={"allow_private_networks": "127.0.0.0/8"}))
    with TestClient(app) as c:
        yield c


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def finish(session_factory, job_id: uuid.UUID, status: str = "succeeded") -> None:
    """Play the render worker: claim, then the final state (which writes its event) in one
    commit."""
    with session_factory() as s:
        assert claim_jobs_bulk(s, [job_id], "fake-worker", 300) == [job_id]
        s.commit()
        if status == "succeeded":
            assert mark_succeeded_bulk(s, [(job_id, [], {"fake": True})]) == [job_id]
        else:
            assert mark_failed_bulk(s, [job_id], "PermanentRenderError: simulated") == [job_id]
        s.commit()


def rows(session_factory, **where) -> list[WebhookDelivery]:
    with session_factory() as s:
        query = select(WebhookDelivery)
        for name, value in where.items():
            query = query.where(getattr(WebhookDelivery, name) == value)
        return list(s.scalars(query))


def failed_attempts(session_factory, delivery_id: uuid.UUID) -> int:
    """Attempts logged as failed (an attempt under way counts in ``attempts`` already)."""
    with session_factory() as s:
        return s.scalar(
            select(func.count())
            .select_from(WebhookAttempt)
            .where(WebhookAttempt.delivery_id == delivery_id, WebhookAttempt.outcome == "retry")
        )


def new_job(api: TestClient, key: str, **fields: object) -> uuid.UUID:
    answer = api.post("/v1/jobs", json=job_body(**fields), headers=auth(key))
    assert answer.status_code == 202, answer.text
    return uuid.UUID(answer.json()["id"])


def endpoint(api: TestClient, key: str, url: str, events: list[str]) -> dict:
    answer = api.post("/v1/webhooks", json={"url": url, "events": events}, headers=auth(key))
    assert answer.status_code == 201, answer.text
    return answer.json()


def test_receiver_down_then_up_gets_each_event_once_signed(
    webhook_worker, api, receiver, new_key, session_factory
):
    key = new_key()
    hook = endpoint(api, key, receiver.url("/endpoint"), ["job.succeeded"])
    team_secret = api.get("/v1/webhooks/secret", headers=auth(key)).json()["secret"]
    job_id = new_job(api, key, webhook_url=receiver.url("/job"))
    finish(session_factory, job_id)
    # The receiver is down: connection refused, retried on the schedule.
    wait_for(
        lambda: all(
            failed_attempts(session_factory, r.id) >= 2
            for r in rows(session_factory, job_id=job_id)
        ),
        60,
        "two failed attempts per delivery",
    )
    receiver.start()
    wait_for(
        lambda: {r.status for r in rows(session_factory, job_id=job_id)} == {"delivered"},
        60,
        "both deliveries delivered",
    )
    (to_endpoint,) = receiver.requests("/endpoint")
    (to_job_url,) = receiver.requests("/job")
    # One event, one id, whatever the receiver; each signed with its own secret.
    assert to_endpoint.webhook_id == to_job_url.webhook_id
    event = to_endpoint.verify(hook["secret"])
    assert to_job_url.verify(team_secret) == event
    assert event["type"] == "job.succeeded" and event["data"]["id"] == str(job_id)
    assert event["id"] == to_endpoint.webhook_id
    assert to_endpoint.headers["content-type"] == "application/json"
    # The attempts are logged: refused ones with their error, then the delivery.
    for row in rows(session_factory, job_id=job_id):
        detail = api.get(f"/v1/webhooks/deliveries/{row.id}", headers=auth(key)).json()
        log = detail["attempt_log"]
        assert len(log) == detail["attempts"] >= 3
        assert all(a["outcome"] == "retry" and a["status_code"] is None for a in log[:-1])
        assert all("ConnectError" in a["error"] for a in log[:-1])
        assert log[-1]["outcome"] == "delivered" and log[-1]["status_code"] == 200
        assert detail["last_status_code"] == 200 and detail["last_latency_ms"] is not None
        assert detail["next_attempt_at"] is None


def test_gone_disables_the_endpoint(webhook_worker, api, receiver, new_key, session_factory):
    receiver.on("/gone", 410)
    receiver.start()
    key = new_key()
    hook = endpoint(api, key, receiver.url("/gone"), ["job.failed"])
    first = new_job(api, key)
    finish(session_factory, first, "failed")
    wait_for(
        lambda: api.get("/v1/webhooks", headers=auth(key)).json()["endpoints"][0]["disabled_at"],
        60,
        "the endpoint disabled",
    )
    (row,) = rows(session_factory, job_id=first)
    assert row.status == "failed" and row.attempts == 1 and row.last_status_code == 410
    assert len(receiver.requests("/gone")) == 1
    # Later events are not even queued for it; redelivery needs it enabled again.
    second = new_job(api, key)
    finish(session_factory, second, "failed")
    assert rows(session_factory, job_id=second) == []
    redeliver = api.post(f"/v1/webhooks/deliveries/{row.id}/redeliver", headers=auth(key))
    assert redeliver.status_code == 409
    enabled = api.post(f"/v1/webhooks/{hook['id']}/enable", headers=auth(key)).json()
    assert enabled["disabled_at"] is None


def test_redirect_is_a_failure_and_is_not_followed(
    webhook_worker, api, receiver, new_key, session_factory
):
    receiver.on("/moved", 302, {"location": receiver.url("/elsewhere")})
    receiver.start()
    key = new_key()
    job_id = new_job(api, key, webhook_url=receiver.url("/moved"))
    finish(session_factory, job_id, "failed")
    wait_for(lambda: rows(session_factory, job_id=job_id)[0].status == "failed", 60, "the failure")
    (row,) = rows(session_factory, job_id=job_id)
    assert row.attempts == 1 and row.last_status_code == 302 and "not followed" in row.last_error
    assert receiver.requests("/elsewhere") == []


def test_dead_letter_then_redeliver_with_the_same_event_id(
    webhook_worker, api, receiver, new_key, session_factory
):
    receiver.on("/flaky", 503)
    receiver.start()
    key = new_key()
    job_id = new_job(api, key, webhook_url=receiver.url("/flaky"))
    finish(session_factory, job_id, "succeeded")
    wait_for(lambda: rows(session_factory, job_id=job_id)[0].status == "dead", 90, "dead-lettered")
    dead = api.get("/v1/webhooks/deliveries?status=dead", headers=auth(key)).json()
    (listed,) = dead["deliveries"]
    assert listed["attempts"] == ATTEMPTS and listed["last_status_code"] == 503
    assert listed["next_attempt_at"] is None
    assert len(receiver.requests("/flaky")) == ATTEMPTS
    # The receiver is fixed; the customer replays the event.
    receiver.on("/flaky", 200)
    replay = api.post(f"/v1/webhooks/deliveries/{listed['id']}/redeliver", headers=auth(key))
    assert replay.status_code == 202
    wait_for(
        lambda: rows(session_factory, job_id=job_id)[0].status == "delivered", 60, "redelivered"
    )
    requests = receiver.requests("/flaky")
    assert len(requests) == ATTEMPTS + 1
    assert {r.webhook_id for r in requests} == {listed["event_id"]}
    secret = api.get("/v1/webhooks/secret", headers=auth(key)).json()["secret"]
    assert requests[-1].verify(secret)["type"] == "job.succeeded"
    detail = api.get(f"/v1/webhooks/deliveries/{listed['id']}", headers=auth(key)).json()
    outcomes = [a["outcome"] for a in detail["attempt_log"]]
    assert outcomes == ["retry"] * (ATTEMPTS - 1) + ["dead", "delivered"]


def test_retry_after_is_honoured(webhook_worker, api, receiver, new_key, session_factory):
    answers = iter([(429, {"retry-after": "2"})])
    receiver.answers["/busy"] = lambda: next(answers, (200, {}))
    receiver.start()
    key = new_key()
    job_id = new_job(api, key, webhook_url=receiver.url("/busy"))
    finish(session_factory, job_id, "failed")
    wait_for(lambda: rows(session_factory, job_id=job_id)[0].status == "delivered", 60, "delivery")
    first, second = receiver.requests("/busy")
    (row,) = rows(session_factory, job_id=job_id)
    assert row.attempts == 2
    # The schedule says 0.3 s; the receiver asked for 2 s, and got at least that.
    assert second.at - first.at >= 1.9
    assert second.webhook_id == first.webhook_id


def test_batch_completed_arrives_once_with_the_right_counts(
    webhook_worker, api, receiver, new_key, session_factory, start_dispatcher, start_worker
):
    """A real batch on a real tiny worker: one job fails, three render; the batch's URL gets
    four job events (and a job.needs_review for each noise render: its fidelity scores miss
    the model's thresholds) and exactly one batch.completed naming the failed job."""
    receiver.start()
    key = new_key()
    body = batch_body(
        images=batch_body()["images"],
        prompts=batch_body()["prompts"][:2],
        variants=1,
        webhook_url=receiver.url("/batch"),
        width=64,
        height=64,
        steps=2,
    )
    answer = api.post("/v1/batches", json=body, headers=auth(key))
    assert answer.status_code == 202, answer.text
    batch_id = answer.json()["id"]
    with session_factory() as s:
        job_ids = list(s.scalars(select(Job.id).where(Job.batch_id == uuid.UUID(batch_id))))
    assert len(job_ids) == 4
    # One job fails before any worker starts (as a permanent render error would).
    failed = job_ids[0]
    finish(session_factory, failed, "failed")
    start_dispatcher()
    start_worker("tiny")

    def completed():
        return [r for r in receiver.requests("/batch") if r.event["type"] == "batch.completed"]

    wait_for(completed, 180, "batch.completed at the receiver")
    secret = api.get("/v1/webhooks/secret", headers=auth(key)).json()["secret"]
    (done,) = completed()
    event = done.verify(secret)
    assert event["data"]["id"] == batch_id and event["data"]["status"] == "failed"
    assert event["data"]["job_count"] == 4
    assert event["data"]["counts"] == {
        "queued": 0,
        "running": 0,
        "succeeded": 3,
        "failed": 1,
        "canceled": 0,
    }
    assert event["data"]["failed_job_ids"] == [str(failed)]
    wait_for(lambda: len(receiver.requests("/batch")) >= 9, 60, "the job events and the batch's")
    types = sorted(json.loads(r.body)["type"] for r in receiver.requests("/batch"))
    # batch.progress went out when the first job finished (then not again within a minute).
    renders = ["job.needs_review"] * 3 + ["job.succeeded"] * 3
    assert types == ["batch.completed", "batch.progress", "job.failed", *renders]
    (progress,) = [
        r.event for r in receiver.requests("/batch") if r.event["type"] == "batch.progress"
    ]
    assert progress["data"]["counts"]["failed"] == 1 and progress["data"]["progress"] == 0.25
    # Exactly once in the outbox too, not only at the receiver.
    assert (
        len(rows(session_factory, event_type="batch.completed", batch_id=uuid.UUID(batch_id))) == 1
    )


def test_in_flight_delivery_to_an_endpoint_disabled_by_410_is_dropped_unsent(
    api, receiver, new_key, session_factory, settings
):
    """Two attempts to one endpoint claimed at once; the first answers 410: the second,
    claimed before the endpoint was disabled, must not reach the receiver. In process, so
    the order is exact (a webhook worker would make it a race)."""
    from shared.netguard import parse_networks
    from shared.webhooks import claim
    from worker.webhooks import WebhookContext, send_claimed

    receiver.on("/gone", 410)
    receiver.start()
    key = new_key()
    endpoint(api, key, receiver.url("/gone"), ["job.failed"])
    jobs = [new_job(api, key), new_job(api, key)]
    with session_factory() as s:
        assert claim_jobs_bulk(s, jobs, "fake-worker", 300) == jobs
        for job_id in jobs:
            failed = mark_failed_bulk(s, [job_id], "PermanentRenderError: simulated")
            assert failed == [job_id]
        # Handed over in the same commit, as the scheduler would: the module's webhook
        # worker (if running) skips rows already handed over.
        tokens = {}
        for row in s.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id.in_(jobs))):
            row.token, row.dispatched_at = uuid.uuid4().hex, utcnow()
            tokens[row.job_id] = (row.id, row.token)
        s.commit()
    with session_factory() as s:
        first, second = (claim(s, *tokens[j], 60) for j in jobs)
        s.commit()
    assert not isinstance(first, str) and not isinstance(second, str)
    ctx = WebhookContext(settings, session_factory, allowed=parse_networks(["127.0.0.0/8"]))
    assert send_claimed(ctx, first) == "disable"
    assert send_claimed(ctx, second) == "dropped"
    assert len(receiver.requests("/gone")) == 1
    with session_factory() as s:
        statuses = set(
            s.scalars(select(WebhookDelivery.status).where(WebhookDelivery.job_id.in_(jobs)))
        )
    assert statuses == {"failed"}

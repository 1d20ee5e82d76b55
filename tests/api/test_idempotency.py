"""``Idempotency-Key`` expiry over the real app on PostgreSQL: a key replays for
``IDEMPOTENCY_TTL_SECONDS`` (24 h), after which the same key is a new request."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel
from sqlalchemy import func, select, update

from api import idempotency
from shared.keys import hash_api_key
from shared.models import ApiKey, Batch, IdempotencyKey, Job, utcnow
from shared.teams import ensure_team
from tests.factories import batch_body, data_url, job_body, png_bytes


@pytest.fixture(autouse=True)
def leave_no_work_behind(session_factory):
    """Cancel the jobs a test left queued, so later tests' workers do not render them."""
    started = utcnow()
    yield
    with session_factory() as s:
        s.execute(
            update(Job)
            .where(Job.created_at >= started, Job.status == "queued")
            .values(status="canceled", finished_at=utcnow())
        )
        s.commit()


@pytest.fixture
def key(new_key) -> str:
    return new_key()


def headers(key: str, idempotency_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Idempotency-Key": idempotency_key}


def age_key(session_factory, api_key: str, idempotency_key: str, age: timedelta) -> None:
    """Pretend ``idempotency_key`` was first used ``age`` ago."""
    with session_factory() as s:
        team_id = s.scalar(select(ApiKey.team_id).where(ApiKey.key_hash == hash_api_key(api_key)))
        aged = s.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.team_id == team_id, IdempotencyKey.key == idempotency_key)
            .values(created_at=utcnow() - age)
        ).rowcount
        s.commit()
    assert aged == 1


def rows_for(session_factory, idempotency_key: str) -> list[IdempotencyKey]:
    with session_factory() as s:
        return list(s.scalars(select(IdempotencyKey).where(IdempotencyKey.key == idempotency_key)))


def jobs_of(session_factory, job_ids: list[str]) -> int:
    with session_factory() as s:
        wanted = [uuid.UUID(j) for j in job_ids]
        return s.scalar(select(func.count()).select_from(Job).where(Job.id.in_(wanted)))


def test_key_used_23_hours_ago_still_replays(client, key, session_factory):
    name = f"fresh-{uuid.uuid4().hex}"
    first = client.post("/v1/jobs", json=job_body(), headers=headers(key, name))
    assert first.status_code == 202
    age_key(session_factory, key, name, timedelta(hours=23))
    again = client.post("/v1/jobs", json=job_body(), headers=headers(key, name))
    assert (again.status_code, again.json()) == (202, first.json())
    assert again.headers["Idempotent-Replayed"] == "true"


def test_key_used_25_hours_ago_is_a_new_request(client, key, session_factory):
    name = f"stale-{uuid.uuid4().hex}"
    first = client.post("/v1/jobs", json=job_body(), headers=headers(key, name))
    assert first.status_code == 202
    age_key(session_factory, key, name, timedelta(hours=25))
    before = utcnow()
    again = client.post("/v1/jobs", json=job_body(), headers=headers(key, name))
    assert again.status_code == 202, again.text
    assert "Idempotent-Replayed" not in again.headers
    assert again.json()["id"] != first.json()["id"]
    assert jobs_of(session_factory, [first.json()["id"], again.json()["id"]]) == 2
    # The old row was replaced, not joined by a second one: it now holds the new answer.
    (row,) = rows_for(session_factory, name)
    assert row.created_at >= before
    assert row.response == again.json()
    # ...and the new answer is what a retry within the window replays.
    third = client.post("/v1/jobs", json=job_body(), headers=headers(key, name))
    assert third.headers["Idempotent-Replayed"] == "true"
    assert third.json() == again.json()


def test_expired_key_may_come_with_another_body(client, key, session_factory):
    name = f"reused-{uuid.uuid4().hex}"
    assert client.post("/v1/jobs", json=job_body(), headers=headers(key, name)).status_code == 202
    # Within the window another body is a client bug (409); after it, the key is free again.
    conflict = client.post("/v1/jobs", json=job_body(seed=8), headers=headers(key, name))
    assert conflict.status_code == 409
    age_key(session_factory, key, name, timedelta(hours=25))
    other = client.post("/v1/jobs", json=job_body(seed=8), headers=headers(key, name))
    assert other.status_code == 202, other.text
    assert "Idempotent-Replayed" not in other.headers


def test_concurrent_requests_with_one_expired_key_create_one_batch(app, key, session_factory):
    """Replacing an expired row keeps the race safety: one wins, the others replay it."""
    name = f"race-{uuid.uuid4().hex}"
    body = batch_body(images=[data_url(png_bytes(300 + i, 200)) for i in range(6)], variants=1)
    answers: list[httpx.Response] = []
    barrier = threading.Barrier(4)
    with TestClient(app) as clients:
        old = clients.post("/v1/batches", json=body, headers=headers(key, name))
        assert old.status_code == 202
        age_key(session_factory, key, name, timedelta(hours=25))

        def post() -> None:
            barrier.wait()
            answers.append(clients.post("/v1/batches", json=body, headers=headers(key, name)))

        threads = [threading.Thread(target=post) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [a.status_code for a in answers] == [202] * 4, [a.text for a in answers]
    ids = {a.json()["id"] for a in answers}
    assert len(ids) == 1 and old.json()["id"] not in ids
    assert sum("Idempotent-Replayed" not in a.headers for a in answers) == 1
    assert len(rows_for(session_factory, name)) == 1
    with session_factory() as s:
        team_id = s.get(Batch, uuid.UUID(old.json()["id"])).team_id
        assert s.scalar(select(func.count()).where(Batch.team_id == team_id)) == 2


class Body(BaseModel):
    value: int


@pytest.mark.parametrize(("ttl_seconds", "replays"), [(3600, True), (60, False)])
def test_the_window_is_the_ttl_given(session_factory, ttl_seconds, replays):
    """``begin(ttl_seconds=...)`` is what the ``idempotency_ttl_seconds`` setting feeds."""
    name = f"ttl-{uuid.uuid4().hex}"
    with session_factory() as s:
        team_id = ensure_team(s, f"ttl-{uuid.uuid4().hex[:8]}").id
        claim = idempotency.begin(s, team_id, name, "test", Body(value=1))
        assert isinstance(claim, IdempotencyKey)
        idempotency.remember(claim, 202, Body(value=2))
        claim.created_at = utcnow() - timedelta(minutes=2)
        s.commit()
    with session_factory() as s:
        again = idempotency.begin(s, team_id, name, "test", Body(value=1), ttl_seconds=ttl_seconds)
        if replays:
            assert isinstance(again, idempotency.Replay) and again.body == {"value": 2}
        else:
            assert isinstance(again, IdempotencyKey) and again.status_code is None
        s.rollback()


def expired_key(session_factory) -> tuple[uuid.UUID, str]:
    """A team and a key it used 25 hours ago (answered, committed)."""
    name = f"expired-{uuid.uuid4().hex}"
    with session_factory() as s:
        team_id = ensure_team(s, f"exp-{uuid.uuid4().hex[:8]}").id
        claim = idempotency.begin(s, team_id, name, "test", Body(value=1))
        assert isinstance(claim, IdempotencyKey)
        idempotency.remember(claim, 202, Body(value=0))
        claim.created_at = utcnow() - timedelta(hours=25)
        s.commit()
    return team_id, name


@pytest.mark.parametrize("first_commits", [True, False])
def test_second_claim_of_an_expired_key_waits_for_the_first_replacement(
    session_factory, first_commits
):
    """Step by step, the race the threads above leave to chance: B sees the same expired row
    as A, which has replaced it but not committed. B waits; then replays A's answer if A
    commits, or claims the key itself if A rolls back."""
    team_id, name = expired_key(session_factory)
    outcome: dict[str, object] = {}

    def second() -> None:
        with session_factory() as b:
            outcome["claim"] = idempotency.begin(b, team_id, name, "test", Body(value=1))
            b.rollback()

    with session_factory() as a:
        first = idempotency.begin(a, team_id, name, "test", Body(value=1))
        assert isinstance(first, IdempotencyKey)
        idempotency.remember(first, 202, Body(value=3))
        waiter = threading.Thread(target=second)
        waiter.start()
        waiter.join(1.0)
        assert waiter.is_alive(), "B must wait for A's transaction"
        if first_commits:
            a.commit()
        else:
            a.rollback()
    waiter.join(10)
    claim = outcome["claim"]
    if first_commits:
        assert isinstance(claim, idempotency.Replay) and claim.body == {"value": 3}
    else:
        assert isinstance(claim, IdempotencyKey) and claim.status_code is None

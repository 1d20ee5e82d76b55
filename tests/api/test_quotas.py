"""A team's limits at intake (api/quotas.py), through the in-process api on the session's
Postgres and S3: each breach answers as documented, names the limit and the current use,
and writes nothing (no job, batch or idempotency-key row, no source object)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import pytest
from sqlalchemy import func, select

from api.errors import TooBusy
from api.quotas import take_tokens
from shared.db import session_scope
from shared.models import Batch, IdempotencyKey, Job, UsageMonthly
from shared.storage import SOURCES_PREFIX
from shared.teams import create_api_key, ensure_team, set_team_limits
from shared.usage import month_of
from tests.factories import batch_body, data_url, job_body, png_bytes

TIMEOUT = 30.0


class Team:
    """A team of its own with the given limits, its key, and what it has written."""

    def __init__(self, session_factory, storage, **limits: object) -> None:
        self.session_factory, self.storage = session_factory, storage
        with session_scope(session_factory) as s:
            team = ensure_team(s, f"quota-{uuid.uuid4().hex[:8]}")
            set_team_limits(s, team.id, **limits)
            self.id, self.key = team.id, create_api_key(s, team)

    def headers(self, idempotency_key: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.key}"}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        return headers

    def written(self) -> tuple[int, int, int, int]:
        """(jobs, batches, idempotency keys, source objects) of this team."""
        with self.session_factory() as s:
            rows = [
                s.scalar(select(func.count()).select_from(t).where(t.team_id == self.id))
                for t in (Job, Batch, IdempotencyKey)
            ]
        objects = list(self.storage.list_objects(f"{SOURCES_PREFIX}{self.id}/"))
        return (*rows, len(objects))


@pytest.fixture
def make_team(session_factory, app) -> Callable[..., Team]:
    return lambda **limits: Team(session_factory, app.state.storage, **limits)


def fresh_job() -> dict[str, object]:
    # A source never sent before: a refused request must not leave its object behind.
    return job_body(image=data_url(png_bytes(color=(uuid.uuid4().int % 256, 9, 9))))


def refused(client, team: Team, path: str, body: dict, status: int) -> dict:
    """Send ``body`` (with an Idempotency-Key) and check it is refused with ``status`` and
    wrote nothing; returns the error body."""
    before = team.written()
    response = client.post(path, json=body, headers=team.headers(f"idem-{uuid.uuid4()}"))
    assert response.status_code == status, response.text
    assert team.written() == before, "a refused request wrote nothing"
    return response.json() | {"headers": dict(response.headers)}


def test_a_batch_over_the_teams_max_batch_is_422_naming_its_size(client, make_team):
    team = make_team(max_batch=10)
    error = refused(client, team, "/v1/batches", batch_body(), 422)  # 2 x 3 x 2 = 12 jobs
    assert error["errors"][0]["field"] == "images x prompts x variants"
    assert "this batch has 12 jobs; your team's limit is 10 per batch" in error["detail"]
    assert team.written() == (0, 0, 0, 0)


def test_a_request_past_max_queued_is_403_naming_the_limit_and_the_queue(client, make_team):
    team = make_team(max_queued=13)
    assert client.post("/v1/batches", json=batch_body(), headers=team.headers()).status_code == 202
    assert client.post("/v1/jobs", json=fresh_job(), headers=team.headers()).status_code == 202
    error = refused(client, team, "/v1/jobs", fresh_job(), 403)
    assert "13 jobs queued or running" in error["detail"]
    assert "limit is 13 queued (max_queued)" in error["detail"]
    refused(client, team, "/v1/batches", batch_body(), 403)


def test_the_monthly_quota_counts_rendered_and_queued_images(client, make_team, session_factory):
    team = make_team(monthly_images=7)
    with session_scope(session_factory) as s:
        s.add(UsageMonthly(team_id=team.id, month=month_of(), model="tiny", images=5))
        # Last month's images do not count against this one.
        s.add(UsageMonthly(team_id=team.id, month="1999-12", model="tiny", images=900))
    assert client.post("/v1/jobs", json=fresh_job(), headers=team.headers()).status_code == 202
    assert client.post("/v1/jobs", json=fresh_job(), headers=team.headers()).status_code == 202
    error = refused(client, team, "/v1/jobs", fresh_job(), 403)
    assert f"rendered 5 images in {month_of()} and has 2 queued" in error["detail"]
    assert "limit is 7 images a month (monthly_images)" in error["detail"]


def test_over_the_rate_is_429_with_retry_after_and_honouring_it_is_accepted(client, make_team):
    team = make_team(rate_per_second=2.0)  # a full bucket holds 2 jobs
    for _ in range(2):
        assert client.post("/v1/jobs", json=fresh_job(), headers=team.headers()).status_code == 202
    error = refused(client, team, "/v1/jobs", fresh_job(), 429)
    assert "submission rate is 2 jobs a second (rate_per_second)" in error["detail"]
    retry_after = int(error["headers"]["retry-after"])
    assert retry_after == 1
    time.sleep(retry_after)  # what the answer asked: the bucket refills meanwhile
    assert client.post("/v1/jobs", json=fresh_job(), headers=team.headers()).status_code == 202


def test_a_batch_larger_than_the_bucket_passes_when_full_then_the_team_waits_it_off(
    client, make_team
):
    team = make_team(rate_per_second=4.0)
    assert client.post("/v1/batches", json=batch_body(), headers=team.headers()).status_code == 202
    error = refused(client, team, "/v1/jobs", fresh_job(), 429)
    # 12 jobs from a bucket of 4 leave it 8 short: one more job waits (8 + 1) / 4 s.
    assert int(error["headers"]["retry-after"]) == 3


def test_concurrent_takes_never_spend_the_same_tokens(session_factory, make_team):
    team = make_team(rate_per_second=0.001)  # a bucket of one job, refilled every 1,000 s
    outcomes: list[str] = []
    start = threading.Barrier(8)

    def take() -> None:
        with session_factory() as s:
            start.wait(TIMEOUT)
            try:
                take_tokens(s, team.id, 1)
                outcomes.append("taken")
            except TooBusy:
                outcomes.append("refused")

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert sorted(outcomes) == ["refused"] * 7 + ["taken"]

"""Scheduling on a real farm: the api, a dispatcher process and an ``echo`` worker process
on a database of the module's own (issue 17).

The dispatcher keeps two batches per worker in Redis (``IMGFARM_DISPATCH_DEPTH_PER_WORKER=2``,
16 echo jobs each), so every 16 renders it decides again who goes next: the order in which jobs
were handed over (``enqueued_at``) and finished is the schedule, read back from the rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from shared.db import session_scope
from shared.models import Batch, Job, Team
from shared.teams import set_team_limits
from shared.throughput import observed
from tests.conftest import PrivateDatabase
from tests.factories import data_url, png_bytes
from tests.services import launch_dispatcher, launch_worker, wait_for

pytestmark = pytest.mark.integration

IMAGE = data_url(png_bytes(32, 32))
SIZE = {"width": 8, "height": 8}  # echo renders are a resize: the farm's cost is the control plane
RENDER = {"width": 256, "height": 256}


@dataclass
class Farm:
    api: TestClient
    session_factory: sessionmaker[Session]
    db: PrivateDatabase

    def team(self, weight: float = 1.0) -> tuple[str, uuid.UUID]:
        """A new team's API key and id."""
        name = f"sched-{uuid.uuid4().hex[:8]}"
        key = self.db.new_key(name)
        with session_scope(self.session_factory) as s:
            team = s.scalar(select(Team).where(Team.name == name))
            assert team is not None
            set_team_limits(s, team.id, weight=weight)
            return key, team.id

    def batch(self, key: str, jobs: int, **fields: object) -> dict:
        body = {"model": "echo", "images": [IMAGE], "prompts": ["p"], "variants": jobs}
        answer = self.api.post("/v1/batches", json={**body, **SIZE, **fields}, headers=_auth(key))
        assert answer.status_code == 202, answer.text
        return answer.json()

    def started(self, team: uuid.UUID) -> bool:
        """Whether a worker has claimed one of the team's jobs yet (one index probe)."""
        with self.session_factory() as s:
            query = select(Job.id).where(Job.team_id == team, Job.started_at.is_not(None))
            return s.scalar(query.limit(1)) is not None

    def rows(self, team: uuid.UUID) -> list[Job]:
        with self.session_factory() as s:
            return list(s.scalars(select(Job).where(Job.team_id == team)))


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def farm(private_db: PrivateDatabase, module_spawn) -> Iterator[Farm]:
    env = {
        "IMGFARM_DATABASE_URL": private_db.settings.database_url,
        "IMGFARM_DISPATCH_DEPTH_PER_WORKER": "2",
        "IMGFARM_DISPATCH_POLL_SECONDS": "0.05",
    }
    launch_worker(module_spawn, "echo", env=env)
    launch_dispatcher(module_spawn, env=env)
    with TestClient(create_app(private_db.settings)) as api:
        yield Farm(api, private_db.session_factory, private_db)


def shares_while_both_have_work(jobs_a: list[Job], jobs_b: list[Job]) -> tuple[float, int]:
    """A's share of the jobs handed over in the ticks where both teams had work: from the
    first tick that gave the later team any, to before the tick that gave one team its last
    (that one fills up with the other team's)."""
    ticks = [[j.enqueued_at for j in js if j.enqueued_at] for js in (jobs_a, jobs_b)]
    start, end = max(min(t) for t in ticks), min(max(t) for t in ticks)
    a, b = (sum(1 for t in team if start <= t < end) for team in ticks)
    return a / (a + b), a + b


def finish(farm: Farm, *teams: uuid.UUID, timeout: float = 60) -> None:
    def done() -> bool:
        with farm.session_factory() as s:
            left = s.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.team_id.in_(teams), Job.status.in_(("queued", "running")))
            )
            return left == 0

    wait_for(done, timeout, "every job of the teams rendered")


@pytest.mark.parametrize("weights, expected", [((1.0, 1.0), 0.5), ((2.0, 1.0), 2 / 3)])
def test_teams_share_the_renders_by_weight_while_both_have_work(
    farm, fault_report, weights, expected
):
    (key_a, a), (key_b, b) = farm.team(weights[0]), farm.team(weights[1])
    farm.batch(key_a, 160)
    farm.batch(key_b, 160)
    finish(farm, a, b)

    share, seen = shares_while_both_have_work(farm.rows(a), farm.rows(b))

    fault_report(f"scheduling: weights {weights}: A's share {share:.1%} of {seen} renders")
    assert seen >= 64, "both teams had work for several ticks"
    assert abs(share - expected) <= 0.10, share


def test_ten_interactive_jobs_finish_before_a_bulk_batch_is_ten_percent_done(farm, fault_report):
    (key_a, a), (key_b, b) = farm.team(weight=9.0), farm.team()  # A: a big customer
    # Bigger renders than the other tests': A's pace, not the control plane's, sets its progress.
    farm.batch(key_a, 2000, priority="bulk", **RENDER)
    wait_for(lambda: farm.started(a), 30, "A rendering")
    submitted = datetime.now(UTC)
    farm.batch(key_b, 10, priority="interactive", **RENDER)
    finish(farm, b, timeout=60)
    jobs_a, jobs_b = farm.rows(a), farm.rows(b)
    (batch_id,) = {j.batch_id for j in jobs_a}
    farm.api.post(f"/v1/batches/{batch_id}/cancel", headers=_auth(key_a))

    b_done = max(j.finished_at for j in jobs_b if j.finished_at)
    a_done = sum(1 for j in jobs_a if j.finished_at and j.finished_at <= b_done)
    first, last = (f(j.enqueued_at for j in jobs_b if j.enqueued_at) for f in (min, max))
    a_between = sum(1 for j in jobs_a if j.enqueued_at and first <= j.enqueued_at <= last)
    fault_report(
        f"scheduling: B's 10 interactive done {(b_done - submitted).total_seconds():.2f} s after"
        f" submitting, A then {a_done}/2000 done; {a_between} of A's handed over alongside B's"
    )
    assert all(j.status == "succeeded" for j in jobs_b)
    assert a_done < 200, "B finished before A was 10% done"
    # By weight alone (9:1) B would get one slot in ten: ~90 of A's alongside its 10. The
    # lane gives it 3 of every 4 slots, so they go within the next ticks' 32 slots or so.
    assert a_between <= 32, a_between


def rendered_lately(farm: Farm) -> None:
    """Give echo a recent pace (16 renders of a team of their own) unless it has one."""
    with farm.session_factory() as s:
        if observed(s, "echo") is not None:
            return
    key, team = farm.team()
    farm.batch(key, 16)
    finish(farm, team)


def test_dry_run_estimates_from_observed_throughput_and_creates_nothing(farm, s3_client):
    rendered_lately(farm)
    key, team = farm.team()

    def written() -> tuple[int, int, int]:
        with farm.session_factory() as s:
            jobs = s.scalar(select(func.count()).select_from(Job).where(Job.team_id == team))
            batches = s.scalar(select(func.count()).select_from(Batch).where(Batch.team_id == team))
        objects = s3_client.list_objects_v2(
            Bucket="imgfarm-test", Prefix=f"objects/sources/{team}/"
        ).get("KeyCount", 0)
        return jobs or 0, batches or 0, objects

    before = written()
    fresh = data_url(png_bytes(40, 40, color=(10, 200, 90)))  # never stored before
    body = {"model": "echo", "images": [fresh], "prompts": ["a", "b"], "variants": 30, **SIZE}
    answer = farm.api.post("/v1/batches?dry_run=true", json=body, headers=_auth(key))

    assert answer.status_code == 200, answer.text
    estimate = answer.json()
    assert estimate["job_count"] == 60
    assert estimate["estimated_gpu_seconds"] > 0 and estimate["eta_seconds"] > 0, estimate
    assert written() == before == (0, 0, 0), "no rows, no stored sources"


def test_priority_and_deadline_are_checked_and_answered_with_eta_and_on_track(farm):
    key, team = farm.team()
    job = {"model": "echo", "prompt": "p", "image": IMAGE, **SIZE}
    answer = farm.api.post("/v1/jobs", json={**job, "priority": "urgent"}, headers=_auth(key))
    assert answer.status_code == 422 and "priority" in answer.json()["detail"], answer.text
    answer = farm.api.post("/v1/jobs", json={**job, "priority": "bulk"}, headers=_auth(key))
    assert answer.status_code == 202, answer.text
    assert [j.priority for j in farm.rows(team)] == ["bulk"]
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    naive = (datetime.now(UTC) + timedelta(hours=1)).replace(tzinfo=None).isoformat()
    for bad in (past, naive, "tomorrow"):
        body = {"model": "echo", "images": [IMAGE], "prompts": ["p"], "deadline": bad}
        answer = farm.api.post("/v1/batches", json=body, headers=_auth(key))
        assert answer.status_code == 422, answer.text
        assert [e["field"] for e in answer.json()["errors"]] == ["deadline"], answer.text

    rendered_lately(farm)  # a pace to go by
    relaxed = farm.batch(key, 4, deadline=(datetime.now(UTC) + timedelta(hours=1)).isoformat())
    tight = farm.batch(key, 2000, deadline=(datetime.now(UTC) + timedelta(seconds=2)).isoformat())
    views = {
        name: farm.api.get(f"/v1/batches/{b['id']}", headers=_auth(key)).json()
        for name, b in (("relaxed", relaxed), ("tight", tight))
    }
    farm.api.post(f"/v1/batches/{tight['id']}/cancel", headers=_auth(key))

    assert views["relaxed"]["on_track"] is True, views["relaxed"]
    assert views["tight"]["on_track"] is False, views["tight"]
    assert views["tight"]["eta"] > views["tight"]["deadline"]
    plain = farm.batch(key, 1)
    assert farm.api.get(f"/v1/batches/{plain['id']}", headers=_auth(key)).json()["on_track"] is None

"""Usage is counted with each success (shared/usage.py, from worker/tasks.py): real ``echo``
render tasks in process on the session's Postgres, then ``GET /v1/usage`` and the upsert on
SQLite, where the embedded farm keeps it."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from shared.db import make_engine, make_session_factory, session_scope
from shared.migrate import upgrade
from shared.models import Job, UsageMonthly
from shared.registry import BUILTINS
from shared.settings import Settings
from shared.storage import LocalStorage
from shared.teams import create_api_key, ensure_team
from shared.usage import add_usage, gpu_seconds_of, month_of
from tests.worker.test_kinds import cutout, make_job, png
from worker.context import WorkerContext
from worker.device import DeviceLane
from worker.pipelines import load_model
from worker.tasks import run_render


@pytest.fixture(scope="module")
def echo(tmp_path_factory):
    return load_model(BUILTINS["echo"], Settings(data_dir=tmp_path_factory.mktemp("d")))


def test_a_render_adds_its_images_and_gpu_seconds_to_the_teams_month(
    tmp_path, echo, settings, session_factory, client
):
    storage = LocalStorage(tmp_path / "objects", "http://test", "secret")
    with session_scope(session_factory) as s:
        team = ensure_team(s, f"usage-{uuid.uuid4().hex[:8]}")
        key = create_api_key(s, team)
        jobs = [make_job(storage, "echo", png(cutout(64, 64)), seed=i) for i in range(5)]
        for job in jobs:
            job.team_id = team.id
            s.add(job)
        ids = [job.id for job in jobs]
    ctx = WorkerContext(
        settings=settings,
        model=echo,
        storage=storage,
        session_factory=session_factory,
        name=f"usage-{uuid.uuid4().hex[:6]}",
        device=DeviceLane(),
    )
    try:
        # Two tasks: the second adds to the row the first made (the upsert's update path).
        assert run_render(ctx, ids[:3]).outcomes["succeeded"] == 3
        assert run_render(ctx, ids[3:]).outcomes["succeeded"] == 2
    finally:
        ctx.close()
    with session_factory() as s:
        provenances = s.scalars(select(Job.provenance).where(Job.id.in_(ids))).all()
    expected_seconds = sum(gpu_seconds_of(p) for p in provenances)
    usage = client.get("/v1/usage", headers={"Authorization": f"Bearer {key}"})
    assert usage.status_code == 200, usage.text
    body = usage.json()
    assert body["month"] == month_of()
    assert body["images"] == {"used": 5, "limit": None}
    assert body["queued"] == {"used": 0, "limit": None}
    (model,) = body["models"]
    assert model["model"] == "echo" and model["images"] == 5
    assert model["gpu_seconds"] == pytest.approx(expected_seconds, abs=2e-3)
    assert body["gpu_seconds"] == model["gpu_seconds"]


def test_add_usage_upserts_on_sqlite_too(tmp_path):
    url = f"sqlite:///{tmp_path / 'usage.db'}"
    upgrade(url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    try:
        with session_scope(factory) as s:
            team = ensure_team(s, "local")
            jobs = [Job(team_id=team.id, model="echo", prompt="p", params={}, source_key="k")]
            s.add_all(jobs)
            s.flush()
            done = [
                SimpleNamespace(
                    job_id=jobs[0].id,
                    team_id=team.id,
                    provenance={"model": "echo", "render_seconds": 0.5, "batch_size": 2},
                )
            ]
        for _ in range(2):
            with session_scope(factory) as s:
                add_usage(s, done)
        with factory() as s:
            (row,) = s.scalars(select(UsageMonthly)).all()
        assert (row.month, row.model, row.images, row.gpu_seconds) == (month_of(), "echo", 2, 0.5)
    finally:
        engine.dispose()

"""PostgreSQL restarts while workers render: every job ends in a final state, none lost."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from shared.db import make_engine, make_session_factory, session_scope
from shared.migrate import upgrade
from shared.models import Job
from shared.settings import Settings
from shared.teams import create_api_key, ensure_team
from tests.factories import job_body
from tests.services import PostgresCluster, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster():
    # Not under pytest's tmp_path: the postgres user cannot enter root's 0700 folders.
    root = Path(tempfile.mkdtemp(prefix="imgfarm-pg-"))
    pg = PostgresCluster(root)
    pg.init()
    pg.start()
    yield pg
    with contextlib.suppress(subprocess.CalledProcessError):  # already stopped by the test
        pg.stop("immediate")
    shutil.rmtree(root, ignore_errors=True)


def test_postgres_restart_mid_render_loses_no_job(
    cluster, settings, start_worker, start_dispatcher, s3_client, fault_report
):
    env = {"IMGFARM_DATABASE_URL": cluster.url, "IMGFARM_LEASE_SECONDS": "10"}
    own = Settings(**{**settings.model_dump(), "database_url": cluster.url})
    upgrade(own.database_url)
    engine = make_engine(own.database_url)
    factory = make_session_factory(engine)
    with session_scope(factory) as s:
        key = create_api_key(s, ensure_team(s, "restart"))
    start_dispatcher(env=env)
    start_worker("tiny", env=env)
    ids: list[uuid.UUID] = []
    with TestClient(create_app(own)) as client:
        for seed in range(12):
            body = job_body(seed=seed, steps=8, width=64, height=64)
            headers = {"Authorization": f"Bearer {key}"}
            response = client.post("/v1/jobs", json=body, headers=headers)
            assert response.status_code == 202, response.text
            ids.append(uuid.UUID(response.json()["id"]))

    def counts() -> Counter[str]:
        with factory() as s:
            return Counter(s.scalars(select(Job.status).where(Job.id.in_(ids))))

    wait_for(lambda: counts()["running"] >= 1, 120, "a job running")
    cluster.stop("fast")  # drops every connection, mid-render
    started = time.monotonic()
    cluster.start()
    engine.dispose()
    final = wait_for(
        lambda: (
            (c := counts()) and sum(c[s] for s in ("succeeded", "failed", "canceled")) == 12 and c
        ),
        240,
        "all 12 jobs final after the restart",
        interval=0.5,
    )
    fault_report(
        f"Postgres restart mid-render, 12 jobs: {dict(final)}, lost "
        f"{12 - sum(final.values())}, all final {time.monotonic() - started:.1f}s after restart"
    )
    assert final["succeeded"] == 12
    engine.dispose()

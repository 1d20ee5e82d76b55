"""The event log's read order on Postgres: a row whose transaction commits late is not
skipped by a reader that already saw a later id (api/event_stream.py, shared/job_events.py)."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import insert, select

from api.event_stream import Cursor, Follow, read_page
from shared.db import make_engine, make_session_factory, session_scope
from shared.job_events import (
    CHANNEL,
    MAX_NOTIFY_KEYS,
    log_batch_created,
    log_events,
    prune_job_events,
)
from shared.migrate import upgrade
from shared.models import Batch, Job, JobEvent, utcnow
from shared.teams import ensure_team


def _job(session_factory) -> tuple[uuid.UUID, uuid.UUID]:
    with session_scope(session_factory) as session:
        team = ensure_team(session, f"team-{uuid.uuid4().hex[:8]}")
        job_id = uuid.uuid4()
        session.execute(
            insert(Job).values(
                id=job_id,
                team_id=team.id,
                model="echo",
                status="queued",
                prompt="p",
                params={},
                source_key="k",
            )
        )
        return team.id, job_id


def _read_until_settled(session_factory, follow: Follow, cursor: Cursor) -> list[str]:
    """Pages until nothing is held back. The horizon is the oldest open transaction of the
    whole server: another test's may hold it for a while, so past 5 s read as streams then
    do (``force``), which still gives the rows in (txid, id) order."""
    deadline = time.monotonic() + 5
    while True:
        force = time.monotonic() > deadline
        with session_factory() as session:
            page = read_page(session, follow, cursor, force=force)
        if not page.held_back:
            return [e.type for e in page.events]
        time.sleep(0.05)


def test_an_event_committed_late_is_read_after_a_later_id(session_factory):
    team_id, job_id = _job(session_factory)
    follow = Follow(team_id, None, job_id)
    early, late = session_factory(), session_factory()
    try:
        log_events(early, [job_id], "job.running")  # takes the lower id, commits last
        log_events(late, [job_id], "job.succeeded")
        late.commit()
        cursor = Cursor()
        with session_factory() as session:
            page = read_page(session, follow, cursor)
        # The later id is visible, but an older transaction may still add rows before it.
        assert page.events == [] and page.held_back
        early.commit()
    finally:
        early.close()
        late.close()
    assert _read_until_settled(session_factory, follow, cursor) == ["job.running", "job.succeeded"]


def test_retention_deletes_the_oldest_events_in_bounded_chunks(session_factory):
    team_id, job_id = _job(session_factory)
    now = utcnow()
    ages = [timedelta(days=3), timedelta(days=2, hours=1), timedelta(days=2), timedelta(0)]
    with session_scope(session_factory) as session:
        ids = [
            session.execute(
                insert(JobEvent)
                .values(team_id=team_id, job_id=job_id, type="job.queued", created_at=now - age)
                .returning(JobEvent.id)
            ).scalar_one()
            for age in ages
        ]
    cutoff = now - timedelta(days=1)
    chunks = []
    for _ in range(3):
        with session_scope(session_factory) as session:
            chunks.append(prune_job_events(session, cutoff, limit=2))
    assert chunks == [2, 1, 0]
    with session_factory() as session:
        left = session.scalars(select(JobEvent.id).where(JobEvent.job_id == job_id)).all()
    assert left == [ids[-1]]


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_a_batchs_creation_events_read_as_each_job_was_created(backend, session_factory, tmp_path):
    # Logged with no data (log_batch_created): the reader builds it from the job, as created,
    # whatever the job has done since.
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'log.db'}"
        upgrade(url)
        session_factory = make_session_factory(make_engine(url))
    with session_scope(session_factory) as session:
        team = ensure_team(session, f"team-{uuid.uuid4().hex[:8]}")
        batch = Batch(team_id=team.id, model="echo", seed=1, params={}, image_count=1,
                      prompt_count=1, variants=2, job_count=2)  # fmt: skip
        session.add(batch)
        session.flush()
        for variant in (1, 2):
            session.add(Job(team_id=team.id, batch_id=batch.id, model="echo", prompt="p",
                            params={}, source_key="k", sku="SKU-1", prompt_name="snow",
                            variant=variant))  # fmt: skip
        session.flush()
        assert log_batch_created(session, batch.id) == 2
        team_id, batch_id = team.id, batch.id
    with session_scope(session_factory) as session:
        first = session.scalars(select(Job).where(Job.variant == 1, Job.batch_id == batch_id)).one()
        first.status, first.attempts, first.review = "succeeded", 1, "passed"
        log_events(session, [first.id], "job.succeeded")
    with session_factory() as session:
        page = read_page(session, Follow(team_id, batch_id), Cursor(), force=True)
    fields = ("status", "attempts", "review", "sku", "prompt_name", "variant")
    queued = sorted(tuple(e.data[f] for f in fields) for e in page.events if e.type == "job.queued")
    assert queued == [
        ("queued", 0, None, "SKU-1", "snow", 1),
        ("queued", 0, None, "SKU-1", "snow", 2),
    ]
    succeeded = next(e.data for e in page.events if e.type == "job.succeeded")
    assert (succeeded["status"], succeeded["attempts"], succeeded["review"]) == (
        "succeeded", 1, "passed")  # fmt: skip


def _listen(settings):
    import psycopg

    url = settings.database_url.replace("postgresql+psycopg://", "postgresql://")
    conn = psycopg.connect(url, autocommit=True)
    conn.execute(f"LISTEN {CHANNEL}")
    return conn


def _heard(conn, expected: set[str]) -> set[str]:
    """What the listener heard once ``expected`` came (or 10 s passed), and whatever else
    came with it: a transaction's notifications are delivered together at its commit."""
    heard: set[str] = set()
    deadline = time.monotonic() + 10
    while not expected <= heard and time.monotonic() < deadline:
        heard |= {
            n.payload for n in conn.notifies(timeout=deadline - time.monotonic(), stop_after=1)
        }
    return heard | {n.payload for n in conn.notifies(timeout=0)}


def _batch_jobs(session, team_id: uuid.UUID, batches: int) -> list[uuid.UUID]:
    ids = []
    for _ in range(batches):
        batch_id = uuid.uuid4()
        session.execute(
            insert(Batch).values(
                id=batch_id, team_id=team_id, model="echo", seed=1, params={}, job_count=1,
                image_count=1, prompt_count=1, variants=1,
            )
        )  # fmt: skip
        ids.append(uuid.uuid4())
        session.execute(
            insert(Job).values(
                id=ids[-1], team_id=team_id, batch_id=batch_id, model="echo", status="queued",
                prompt="p", params={}, source_key="k",
            )
        )  # fmt: skip
    return ids


def test_the_change_wakes_each_batchs_streams_and_the_teams_for_its_single_jobs(
    settings, session_factory
):
    team_id, single = _job(session_factory)
    with session_scope(session_factory) as session:
        in_batches = _batch_jobs(session, team_id, 2)
    batch_ids = {str(b) for b in _batches_of(session_factory, in_batches)}
    conn = _listen(settings)
    try:
        with session_scope(session_factory) as session:
            assert log_events(session, [single, *in_batches], "job.running") == 3
        assert _heard(conn, {str(team_id), *batch_ids}) == {str(team_id), *batch_ids}
    finally:
        conn.close()


def test_a_change_across_more_batches_than_the_limit_wakes_their_teams_instead(
    settings, session_factory
):
    team_id, _ = _job(session_factory)
    with session_scope(session_factory) as session:
        ids = _batch_jobs(session, team_id, MAX_NOTIFY_KEYS + 1)
    conn = _listen(settings)
    try:
        with session_scope(session_factory) as session:
            assert log_events(session, ids, "job.running") == MAX_NOTIFY_KEYS + 1
        assert _heard(conn, {str(team_id)}) == {str(team_id)}
    finally:
        conn.close()


def _batches_of(session_factory, job_ids: list[uuid.UUID]) -> list[uuid.UUID]:
    with session_factory() as session:
        return list(session.scalars(select(Job.batch_id).where(Job.id.in_(job_ids))))

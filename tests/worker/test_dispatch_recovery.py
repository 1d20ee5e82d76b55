"""The dispatcher's sweeps, in process against the session's Postgres: what it takes back
(jobs reserved by a worker that died), what it cleans (outputs of canceled jobs), and
which errors it waits out (the broker's) or lets surface (ours)."""

from __future__ import annotations

import uuid

import pytest
from kombu.exceptions import OperationalError
from sqlalchemy import insert, select

from shared.db import make_engine, make_session_factory, session_scope
from shared.models import Job
from shared.registry import ModelSpec
from shared.settings import Settings
from shared.teams import ensure_team

pytestmark = pytest.mark.integration

PARAMS = {
    "strength": 0.5,
    "steps": 2,
    "guidance_scale": 7.5,
    "seed": 1,
    "width": 64,
    "height": 64,
    "output_format": "png",
}


def add_jobs(session_factory, model: str, n: int, **values) -> list[uuid.UUID]:
    """Insert ``n`` jobs of ``model`` for a fresh team straight into the table."""
    with session_scope(session_factory) as s:
        team = ensure_team(s, f"sweep-{uuid.uuid4().hex[:6]}")
        rows = [
            {
                "id": uuid.uuid4(),
                "team_id": team.id,
                "model": model,
                "prompt": "p",
                "params": PARAMS,
                "source_key": "k",
                **values,
            }
            for _ in range(n)
        ]
        s.execute(insert(Job), rows)
    return [r["id"] for r in rows]


def dispatcher_for(settings: Settings, session_factory, model: str, storage=None):
    from dispatch.dispatcher import Dispatcher
    from shared.broker import make_celery

    registry = {model: ModelSpec(alias=model, source="builtin:tiny", max_batch=8)}
    return Dispatcher(settings, session_factory, make_celery(settings), registry, storage=storage)


def test_broker_outage_waits_but_a_bug_in_sending_surfaces(settings, session_factory, monkeypatch):
    import dispatch.dispatcher

    model = f"errs-{uuid.uuid4().hex[:6]}"
    ids = add_jobs(session_factory, model, 3)
    dispatcher = dispatcher_for(settings, session_factory, model)

    def broker_down(*_args: object) -> None:
        raise OperationalError("Error 111 connecting to redis: Connection refused")

    monkeypatch.setattr(dispatch.dispatcher, "send_render", broker_down)
    stats = dispatcher.tick()
    assert stats.sent_jobs == 0 and stats.errors and "Connection refused" in stats.errors[0]

    def bug(*_args: object) -> None:
        raise TypeError("send_render() got an unexpected keyword argument")

    monkeypatch.setattr(dispatch.dispatcher, "send_render", bug)
    with pytest.raises(TypeError):
        dispatcher.tick()
    with session_factory() as s:
        waiting = s.scalars(select(Job.enqueued_at).where(Job.id.in_(ids))).all()
    assert waiting == [None] * 3, "nothing unsent may be marked handed over"


def add_worker(session_factory, model: str, seen_ago: float, stopped: bool = False) -> str:
    from datetime import timedelta

    from shared.models import Worker, utcnow

    name = f"{model}-{uuid.uuid4().hex[:6]}@test"
    seen = utcnow() - timedelta(seconds=seen_ago)
    with session_scope(session_factory) as s:
        s.add(
            Worker(
                name=name,
                model=model,
                device="cpu",
                last_seen_at=seen,
                stopped_at=seen if stopped else None,
            )
        )
    return name


def test_jobs_reserved_by_a_dead_or_stopped_worker_are_rearmed_at_once(settings, session_factory):
    from shared.jobs import reserve_jobs
    from shared.models import utcnow

    model = f"held-{uuid.uuid4().hex[:6]}"
    lease = settings.lease_seconds
    live = add_worker(session_factory, model, seen_ago=0)
    dead = add_worker(session_factory, model, seen_ago=lease + 1)
    stopped = add_worker(session_factory, model, seen_ago=0, stopped=True)
    # Handed over a second ago: far inside the redispatch window, so only the holder counts.
    held = {
        w: add_jobs(session_factory, model, 2, enqueued_at=utcnow()) for w in (live, dead, stopped)
    }
    with session_scope(session_factory) as s:
        for worker, ids in held.items():
            assert reserve_jobs(s, ids, worker) == 2
    stats = dispatcher_for(settings, session_factory, model).tick()
    assert stats.rearmed == 4
    # Re-armed jobs are handed over again in the same tick; the live worker's are untouched.
    with session_factory() as s:
        holders = dict(s.execute(select(Job.id, Job.worker).where(Job.model == model)).all())
    assert {holders[j] for j in held[live]} == {live}
    assert {holders[j] for j in held[dead] + held[stopped]} == {None}
    assert stats.sent_jobs == 4


def test_the_reservation_note_leaves_jobs_its_task_is_claiming(settings, session_factory):
    # A message's note and its task's claim race for the same rows when the task starts at
    # once: the note skips jobs the task already holds, and rows another transaction has
    # locked (that claim), rather than wait on them or write a row version for nothing.
    from types import SimpleNamespace

    from shared.jobs import claim_jobs_bulk
    from shared.models import utcnow
    from worker.context import InFlight
    from worker.heartbeat import Reservations

    model = f"note-{uuid.uuid4().hex[:6]}"
    started, claiming, waiting = (
        add_jobs(session_factory, model, 1, enqueued_at=utcnow()) for _ in range(3)
    )
    # Waiting on the open claim below would wait on this very thread: give up after 2 s.
    engine = make_engine(settings.database_url, connect_args={"options": "-c lock_timeout=2s"})
    ctx = SimpleNamespace(
        in_flight=InFlight(), session_factory=make_session_factory(engine), name="w-note"
    )
    ctx.in_flight.start(started)
    with session_scope(session_factory) as claim:
        assert claim_jobs_bulk(claim, claiming, "w-other", 300) == claiming  # not committed
        Reservations(ctx).record(started + claiming + waiting)  # type: ignore[arg-type]
    engine.dispose()
    with session_factory() as s:
        holders = dict(s.execute(select(Job.id, Job.worker).where(Job.model == model)).all())
    assert holders == {started[0]: None, claiming[0]: "w-other", waiting[0]: "w-note"}


def test_a_restarted_worker_of_the_same_name_gives_back_what_its_predecessor_held(
    settings, session_factory
):
    from shared.jobs import claim_jobs_bulk, release_previous_life, reserve_jobs
    from shared.models import utcnow

    model = f"again-{uuid.uuid4().hex[:6]}"
    name = add_worker(session_factory, model, seen_ago=0)
    reserved = add_jobs(session_factory, model, 2, enqueued_at=utcnow())
    (running,) = add_jobs(session_factory, model, 1, enqueued_at=utcnow())
    with session_scope(session_factory) as s:
        reserve_jobs(s, reserved, name)
        assert claim_jobs_bulk(s, [running], name, 300) == [running]
    with session_scope(session_factory) as s:
        assert release_previous_life(s, name) == (2, 1)
    with session_factory() as s:
        rows = {j.id: j for j in s.scalars(select(Job).where(Job.model == model))}
    assert all(rows[j].enqueued_at is None and rows[j].worker is None for j in reserved)
    assert rows[running].lease_expires_at <= utcnow(), "the sweep takes it back next tick"


def test_outputs_a_dead_worker_left_for_a_canceled_job_are_removed_once_its_lease_ends(
    tmp_path, settings, session_factory
):
    """The worker uploaded, the job was canceled, the worker died before deleting: the
    dispatcher removes the object once the lease the worker held has run out."""
    from datetime import timedelta

    from shared.models import utcnow
    from shared.storage import LocalStorage, output_key

    storage = LocalStorage(tmp_path / "objects", "http://test", "secret")
    model = f"leftover-{uuid.uuid4().hex[:6]}"
    now = utcnow()
    # canceled while running, lease over / canceled while running, lease still held /
    # succeeded (its output is the result)
    over, held = (
        add_jobs(session_factory, model, 1, status="canceled", lease_expires_at=now + d)[0]
        for d in (timedelta(seconds=-1), timedelta(seconds=60))
    )
    (done,) = add_jobs(session_factory, model, 1, status="succeeded")
    with session_factory() as s:
        teams = dict(s.execute(select(Job.id, Job.team_id).where(Job.model == model)).all())
    keys = {j: output_key(teams[j], j, 0, "png") for j in (over, held, done)}
    for key in keys.values():
        storage.put(key, b"png", "image/png")
    stats = dispatcher_for(settings, session_factory, model, storage=storage).tick()
    assert stats.outputs_removed >= 1
    assert not storage.exists(keys[over])
    assert storage.exists(keys[held]), "its worker may still be finishing: not yet"
    assert storage.exists(keys[done])
    with session_factory() as s:
        assert s.get(Job, over).lease_expires_at is None, "swept once, not every tick"

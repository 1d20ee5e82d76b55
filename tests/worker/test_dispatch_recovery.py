"""The dispatcher's sweeps, in process against the session's Postgres: what it takes back
(jobs reserved by a worker that died), what it cleans (outputs of canceled jobs), and
which errors it waits out (the broker's) or lets surface (ours)."""

from __future__ import annotations

import uuid

import pytest
from kombu.exceptions import OperationalError
from sqlalchemy import insert, select

from shared.db import session_scope
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


def dispatcher_for(settings: Settings, session_factory, model: str):
    from shared.broker import make_celery
    from worker.dispatcher import Dispatcher

    registry = {model: ModelSpec(alias=model, source="builtin:tiny", max_batch=8)}
    return Dispatcher(settings, session_factory, make_celery(settings), registry)


def test_broker_outage_waits_but_a_bug_in_sending_surfaces(settings, session_factory, monkeypatch):
    import worker.dispatcher

    model = f"errs-{uuid.uuid4().hex[:6]}"
    ids = add_jobs(session_factory, model, 3)
    dispatcher = dispatcher_for(settings, session_factory, model)

    def broker_down(*_args: object) -> None:
        raise OperationalError("Error 111 connecting to redis: Connection refused")

    monkeypatch.setattr(worker.dispatcher, "send_render", broker_down)
    stats = dispatcher.tick()
    assert stats.sent_jobs == 0 and stats.errors and "Connection refused" in stats.errors[0]

    def bug(*_args: object) -> None:
        raise TypeError("send_render() got an unexpected keyword argument")

    monkeypatch.setattr(worker.dispatcher, "send_render", bug)
    with pytest.raises(TypeError):
        dispatcher.tick()
    with session_factory() as s:
        waiting = s.scalars(select(Job.enqueued_at).where(Job.id.in_(ids))).all()
    assert waiting == [None] * 3, "nothing unsent may be marked handed over"

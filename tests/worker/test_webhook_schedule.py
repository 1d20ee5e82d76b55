"""The durable delivery schedule in process, on the embedded SQLite database: hand-over
tokens make duplicate and stale messages harmless, and a lost message is handed over again."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from shared.db import make_engine, make_session_factory, session_scope
from shared.jobs import claim_jobs_bulk, mark_succeeded_bulk
from shared.migrate import upgrade
from shared.models import Job, WebhookDelivery
from shared.netguard import parse_networks
from shared.settings import Settings
from shared.teams import ensure_team
from shared.webhooks import pick_due, team_secret
from tests.receiver import Receiver
from worker.webhooks import WebhookContext, deliver


@pytest.fixture
def ctx(tmp_path) -> Iterator[WebhookContext]:
    url = f"sqlite:///{tmp_path / 'hooks.db'}"
    upgrade(url)
    engine = make_engine(url)
    settings = Settings(data_dir=tmp_path, database_url=url, webhook_retry_schedule="0,0")
    yield WebhookContext(
        settings=settings,
        session_factory=make_session_factory(engine),
        allowed=parse_networks(["127.0.0.0/8"]),
    )
    engine.dispose()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def succeeded_job(ctx: WebhookContext, webhook_url: str) -> uuid.UUID:
    with session_scope(ctx.session_factory) as s:
        team = ensure_team(s, f"t-{uuid.uuid4().hex[:6]}")
        job = Job(
            team_id=team.id,
            model="tiny",
            prompt="p",
            params={},
            source_key="k",
            webhook_url=webhook_url,
        )
        s.add(job)
        s.flush()
        assert claim_jobs_bulk(s, [job.id], "w", 300) == [job.id]
        assert mark_succeeded_bulk(s, [(job.id, [], {})]) == [job.id]
        # The transition wrote its one delivery row (the job's own URL).
        delivered_to = select(WebhookDelivery.url).where(WebhookDelivery.job_id == job.id)
        assert s.scalars(delivered_to).all() == [webhook_url]
        return job.id


def delivery_of(ctx: WebhookContext, job_id: uuid.UUID) -> WebhookDelivery:
    with ctx.session_factory() as s:
        return s.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)).one()


def test_duplicate_message_is_skipped_and_the_event_sent_once(ctx, receiver):
    job_id = succeeded_job(ctx, receiver.url("/once"))
    with session_scope(ctx.session_factory) as s:
        ((delivery_id, token),) = pick_due(s, 10, redispatch_seconds=600)
        # Handed over: not picked again while its message may still be in the queue.
        assert pick_due(s, 10, redispatch_seconds=600) == []
    assert deliver(ctx, uuid.UUID(delivery_id), token) == "delivered"
    assert deliver(ctx, uuid.UUID(delivery_id), token) == "skipped"
    (request,) = receiver.requests("/once")
    with ctx.session_factory() as s:
        secret = team_secret(s, delivery_of(ctx, job_id).team_id).secret
    assert request.verify(secret)["data"]["id"] == str(job_id)


def test_lost_message_is_handed_over_again_and_the_stale_one_skipped(ctx, receiver):
    job_id = succeeded_job(ctx, receiver.url("/lost"))
    with session_scope(ctx.session_factory) as s:
        ((delivery_id, stale),) = pick_due(s, 10, redispatch_seconds=600)
    # Redis restarted and lost the message: once counted lost, the row is handed over anew.
    with session_scope(ctx.session_factory) as s:
        ((again, fresh),) = pick_due(s, 10, redispatch_seconds=0)
    assert again == delivery_id and fresh != stale
    assert deliver(ctx, uuid.UUID(delivery_id), stale) == "skipped"
    assert deliver(ctx, uuid.UUID(delivery_id), fresh) == "delivered"
    assert len(receiver.requests("/lost")) == 1
    row = delivery_of(ctx, job_id)
    assert row.status == "delivered" and row.attempts == 1 and row.token is None


def test_connection_refused_by_the_guard_fails_without_retry(ctx, receiver):
    ctx.allowed = []  # a farm that allows no private range: loopback is refused at connect
    job_id = succeeded_job(ctx, receiver.url("/inside"))
    with session_scope(ctx.session_factory) as s:
        ((delivery_id, token),) = pick_due(s, 10, redispatch_seconds=600)
    assert deliver(ctx, uuid.UUID(delivery_id), token) == "failed"
    row = delivery_of(ctx, job_id)
    assert row.status == "failed" and "non-public" in row.last_error
    assert receiver.requests() == []

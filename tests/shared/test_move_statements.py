"""On Postgres a move and its log are one statement, built once (shared/jobs.py ``_logged``):
a task's claim sends one statement for its jobs, their ``job.running`` rows and the NOTIFY,
the same text whatever the number of jobs; a group's success sends one for the UPDATE, its
``job.succeeded`` rows and the data of its webhook events, and reads no job again; a lease
sweep's two moves (failed on the last attempt, queued again otherwise) are one each."""

from __future__ import annotations

import json
import re
import uuid
from datetime import timedelta

import psycopg
from sqlalchemy import select

from shared.db import session_scope
from shared.dispatch import CHANNEL as DISPATCH_CHANNEL
from shared.jobs import Success, claim_jobs_loaded, expire_leases, mark_succeeded_bulk
from shared.models import Batch, Job, JobEvent, WebhookDelivery, WebhookEndpoint, utcnow
from shared.teams import ensure_team
from tests.statements import statements_sent

HOOK = "http://127.0.0.1:9/hook"  # nothing listens on port 9: rows are checked, not sent
OUTPUT = {"key": "k", "width": 64, "height": 48, "content_type": "image/png"}
GROUP = 16


def queued(factory, count: int, *, batch: bool = False) -> list[uuid.UUID]:
    """``count`` queued jobs of a new team with an endpoint for job.succeeded (and a batch)."""
    with session_scope(factory) as s:
        team = ensure_team(s, f"t-{uuid.uuid4().hex[:6]}")
        s.add(WebhookEndpoint(team_id=team.id, url=HOOK, events=["job.succeeded"], secret="s"))
        batch_id = None
        if batch:
            row = Batch(team_id=team.id, model="echo", seed=1, params={}, image_count=count,
                        prompt_count=1, variants=1, job_count=count)  # fmt: skip
            s.add(row)
            s.flush()
            batch_id = row.id
        jobs = [
            Job(
                team_id=team.id,
                model="echo",
                prompt="p",
                params={},
                source_key="k",
                batch_id=batch_id,
                sku=f"sku-{n}",
                variant=n,
            )  # fmt: skip
            for n in range(count)
        ]
        s.add_all(jobs)
        s.flush()
        return [j.id for j in jobs]


def events_of(factory, ids: list[uuid.UUID], type_: str) -> dict[uuid.UUID, dict]:
    with factory() as s:
        rows = s.execute(
            select(JobEvent.job_id, JobEvent.data).where(
                JobEvent.job_id.in_(ids), JobEvent.type == type_
            )
        ).all()
    return {job_id: data for job_id, data in rows}


def dispatch_nudges(postgres_url: str) -> psycopg.Connection:
    """A connection listening on the dispatcher's channel, as the dispatcher does."""
    listener = psycopg.connect(postgres_url.replace("+psycopg", ""), autocommit=True)
    listener.execute(f"LISTEN {DISPATCH_CHANNEL}")
    return listener


def test_a_claim_is_one_statement_with_its_log_the_same_for_any_number_of_jobs(
    factory, postgres_url
):
    small, full = queued(factory, 3), queued(factory, GROUP)
    texts = []
    for ids in (small, full):
        with dispatch_nudges(postgres_url) as listener:
            with session_scope(factory) as s, statements_sent(s.get_bind()) as statements:
                jobs = claim_jobs_loaded(s, ids, "w1", 60)
            # Room opened in the model's queue: the dispatcher is woken for it, in the statement.
            nudges = list(listener.notifies(timeout=5, stop_after=1))
        assert [(n.channel, n.payload) for n in nudges] == [(DISPATCH_CHANNEL, "echo")]
        assert len(statements) == 1, statements
        texts.append(statements[0])
        assert [j.id for j in jobs] == ids
        assert {(j.status, j.attempts, j.worker) for j in jobs} == {("running", 1, "w1")}
        assert all(j.lease_expires_at is not None and j.started_at is not None for j in jobs)
        logged = events_of(factory, ids, "job.running")
        assert set(logged) == set(ids)
        assert {(d["status"], d["attempts"]) for d in logged.values()} == {("running", 1)}
    assert texts[0] == texts[1], "one statement text: one prepared statement per connection"
    # Claimed already: nothing moves, nothing is logged twice.
    with session_scope(factory) as s:
        assert claim_jobs_loaded(s, full, "w2", 60) == []
    assert len(events_of(factory, full, "job.running")) == GROUP


def test_a_success_reads_no_job_again_and_its_events_carry_the_moved_rows(factory):
    *ids, _left = queued(factory, GROUP + 1, batch=True)  # one left: the batch goes on
    with session_scope(factory) as s:
        claim_jobs_loaded(s, ids, "w1", 60)
    successes = [Success(j, [OUTPUT], {"model": "echo"}, None, "passed") for j in ids]
    with session_scope(factory) as s, statements_sent(s.get_bind()) as statements:
        assert mark_succeeded_bulk(s, successes) == ids
    on_jobs = [q for q in statements if re.search(r"\bjobs\b", q)]
    # The move (its log and its events' data in it) and the batch's "any job left?" probe.
    assert len(on_jobs) == 2, on_jobs
    assert "UPDATE jobs" in on_jobs[0] and "INSERT INTO job_events" in on_jobs[0]
    assert "jobs.batch_id" in on_jobs[1] and "FOR UPDATE" not in on_jobs[1]
    logged = events_of(factory, ids, "job.succeeded")
    assert set(logged) == set(ids)
    assert {(d["status"], d["review"]) for d in logged.values()} == {("succeeded", "passed")}
    with factory() as s:
        bodies = s.scalars(select(WebhookDelivery.body).where(WebhookDelivery.job_id.in_(ids)))
        data = {uuid.UUID(b["data"]["id"]): b["data"] for b in map(json.loads, bodies)}
        batch_id = s.scalar(select(Job.batch_id).where(Job.id == ids[0]))
    assert set(data) == set(ids)
    one = data[ids[5]]
    assert (one["status"], one["sku"], one["variant"], one["attempts"]) == (
        "succeeded",
        "sku-5",
        5,
        1,
    )
    assert one["batch_id"] == str(batch_id) and one["review"] == "passed"
    assert one["outputs"] == [{"width": 64, "height": 48, "content_type": "image/png"}]
    assert one["finished_at"] is not None and one["started_at"] is not None


def test_a_claim_returns_the_jobs_as_it_left_them_where_the_session_held_them_before(factory):
    ids = queued(factory, 2)
    with session_scope(factory) as s:
        held = [s.get(Job, j) for j in ids]  # loaded queued, before the claim
        jobs = claim_jobs_loaded(s, ids, "w1", 60)
        assert [j.id for j in jobs] == ids
        assert {(j.status, j.attempts, j.worker) for j in jobs} == {("running", 1, "w1")}
        assert all(h.status == "running" for h in held), "one identity, refreshed"


def test_a_lease_sweep_fails_the_last_attempt_and_requeues_the_others(factory):
    last, again = queued(factory, 2)
    with session_scope(factory) as s:
        claim_jobs_loaded(s, [last, again], "w1", 60)
        expired = utcnow() - timedelta(seconds=1)
        attempts = {last: 3, again: 1}
        for job in s.scalars(select(Job).where(Job.id.in_([last, again]))):
            job.lease_expires_at, job.attempts = expired, attempts[job.id]
    texts = []
    for _ in range(2):
        with session_scope(factory) as s, statements_sent(s.get_bind()) as statements:
            moved = expire_leases(s, 3)
        texts.append([q for q in statements if "UPDATE jobs" in q])
        if moved != (0, 0):
            assert moved == (1, 1)  # (requeued, failed)
    assert [len(t) for t in texts] == [2, 2], "a statement per kind of move, each sweep"
    with factory() as s:
        rows = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_([last, again])))}
    assert (rows[last].status, rows[again].status) == ("failed", "queued")
    assert "on each of 3 attempts" in rows[last].error and rows[again].worker is None
    assert set(events_of(factory, [last], "job.failed")) == {last}
    assert set(events_of(factory, [again], "job.queued")) == {again}

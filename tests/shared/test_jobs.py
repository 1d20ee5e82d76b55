"""The job state machine: allowed transitions, and conditional updates that settle races."""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import select

from shared.db import make_engine, make_session_factory, session_scope
from shared.jobs import (
    FINAL_STATES,
    TRANSITIONS,
    IllegalTransition,
    JobStatus,
    cancel,
    check_transition,
    claim_job,
    claim_jobs_bulk,
    mark_failed,
    mark_succeeded,
    mark_succeeded_bulk,
    requeue,
)
from shared.migrate import upgrade
from shared.models import Job
from shared.teams import ensure_team


@pytest.fixture(params=["sqlite", "postgres"])
def factory(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    upgrade(url)
    engine = make_engine(url)
    yield make_session_factory(engine)
    engine.dispose()


def new_job(factory) -> uuid.UUID:
    with session_scope(factory) as s:
        team = ensure_team(s, f"t-{uuid.uuid4().hex[:6]}")
        # Not "tiny": these rows share the session database with the integration tests, and
        # a leftover running one (params={}) requeued by a dispatcher's lease sweep a minute
        # later would be handed to tiny workers and stall the dispatcher (KeyError 'steps').
        job = Job(team_id=team.id, model="test-jobs", prompt="p", params={}, source_key="k")
        s.add(job)
        s.flush()
        return job.id


def status_of(factory, job_id: uuid.UUID) -> str:
    with factory() as s:
        return s.scalar(select(Job.status).where(Job.id == job_id))


def test_final_states_have_no_way_out():
    for state in FINAL_STATES:
        # Only a client's explicit retry re-opens a failed job; nothing renders it directly.
        assert TRANSITIONS[state] <= {JobStatus.QUEUED}
        with pytest.raises(IllegalTransition):
            check_transition(state, JobStatus.RUNNING)
    assert TRANSITIONS[JobStatus.SUCCEEDED] == frozenset()
    assert TRANSITIONS[JobStatus.CANCELED] == frozenset()


def test_queued_cannot_jump_to_succeeded():
    with pytest.raises(IllegalTransition):
        check_transition(JobStatus.QUEUED, JobStatus.SUCCEEDED)


def test_claim_counts_attempts_and_only_once(factory):
    job_id = new_job(factory)
    with session_scope(factory) as s:
        assert claim_job(s, job_id, "w1", 60)
    with session_scope(factory) as s:
        assert not claim_job(s, job_id, "w2", 60), "a running job must not be claimed again"
    with factory() as s:
        job = s.get(Job, job_id)
        assert (job.status, job.attempts, job.worker) == ("running", 1, "w1")
        assert job.lease_expires_at is not None


def test_two_workers_cannot_both_finish_a_job(factory):
    job_id = new_job(factory)
    with session_scope(factory) as s:
        claim_job(s, job_id, "w1", 60)
    with session_scope(factory) as s:
        first = mark_succeeded(s, job_id, [{"key": "a"}], {})
    with session_scope(factory) as s:
        second = mark_succeeded(s, job_id, [{"key": "b"}], {})
    with session_scope(factory) as s:
        late_fail = mark_failed(s, job_id, "boom")
    assert (first, second, late_fail) == (True, False, False)
    with factory() as s:
        assert s.get(Job, job_id).outputs == [{"key": "a"}]


def test_concurrent_claims_have_one_winner(factory):
    job_id = new_job(factory)
    wins: list[bool] = []
    barrier = threading.Barrier(8)

    def claim(i: int) -> None:
        barrier.wait()
        with session_scope(factory) as s:
            wins.append(claim_job(s, job_id, f"w{i}", 60))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 7 + [True]


def test_requeue_then_claim_again_counts_second_attempt(factory):
    job_id = new_job(factory)
    with session_scope(factory) as s:
        claim_job(s, job_id, "w1", 60)
    with session_scope(factory) as s:
        assert requeue(s, job_id, "S3 down")
    with session_scope(factory) as s:
        assert claim_job(s, job_id, "w2", 60)
    with factory() as s:
        job = s.get(Job, job_id)
        assert (job.status, job.attempts, job.worker) == ("running", 2, "w2")


def test_cancel_queued_job_prevents_claim(factory):
    job_id = new_job(factory)
    with session_scope(factory) as s:
        assert cancel(s, job_id)
    with session_scope(factory) as s:
        assert not claim_job(s, job_id, "w1", 60)
    assert status_of(factory, job_id) == "canceled"


def test_bulk_claim_takes_only_queued_jobs_in_one_update(factory):
    """What a render task claims at once: queued ones go running (attempt counted, lease
    taken, error cleared); running, canceled and unknown ones are left alone."""
    queued, retried, running, canceled = (new_job(factory) for _ in range(4))
    with session_scope(factory) as s:
        claim_job(s, retried, "w0", 60)
        requeue(s, retried, "S3 down")
        claim_job(s, running, "other", 60)
        cancel(s, canceled)
    ids = [canceled, queued, uuid.uuid4(), running, retried]
    with session_scope(factory) as s:
        assert claim_jobs_bulk(s, ids, "w1", 60) == [queued, retried], "in the order given"
    with session_scope(factory) as s:
        assert claim_jobs_bulk(s, ids, "w2", 60) == [], "a message delivered twice claims none"
        assert claim_jobs_bulk(s, [], "w2", 60) == []
    with factory() as s:
        rows = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(ids)))}
    assert [(rows[j].status, rows[j].attempts, rows[j].worker) for j in (queued, retried)] == [
        ("running", 1, "w1"),
        ("running", 2, "w1"),
    ]
    assert rows[retried].error is None and rows[retried].lease_expires_at is not None
    assert rows[queued].started_at is not None
    assert (rows[running].worker, rows[running].attempts) == ("other", 1)
    assert rows[canceled].status == "canceled"


def test_bulk_success_gives_each_job_its_outputs_and_only_once(factory):
    """A rendered group recorded in one UPDATE: each running job gets its own outputs and
    provenance; a job that is not running (here: never claimed) is left alone."""
    first, second, unclaimed = (new_job(factory) for _ in range(3))
    with session_scope(factory) as s:
        claim_job(s, first, "w1", 60)
        claim_job(s, second, "w1", 60)
    successes = [
        (unclaimed, [{"key": "u"}], {"n": 0}),
        (second, [{"key": "b", "width": 8}], {"n": 2, "params": {"seed": 1}}),
        (first, [{"key": "a"}], {"n": 1}),
    ]
    with session_scope(factory) as s:
        assert mark_succeeded_bulk(s, successes) == [second, first]
    with session_scope(factory) as s:
        assert mark_succeeded_bulk(s, successes) == [], "two workers cannot both finish a job"
        assert mark_succeeded_bulk(s, []) == []
    with factory() as s:
        rows = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_([first, second])))}
    assert (rows[first].outputs, rows[first].provenance) == ([{"key": "a"}], {"n": 1})
    assert rows[second].outputs == [{"key": "b", "width": 8}]
    assert rows[second].provenance == {"n": 2, "params": {"seed": 1}}
    assert all(j.status == "succeeded" and j.lease_expires_at is None for j in rows.values())
    assert all(j.finished_at is not None for j in rows.values())
    assert status_of(factory, unclaimed) == "queued"

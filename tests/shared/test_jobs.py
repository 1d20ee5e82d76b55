"""The job state machine: allowed transitions, conditional updates that settle races, and
the outbox event each final transition writes in its own transaction."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from shared.db import make_engine, make_session_factory, session_scope
from shared.jobs import (
    FINAL_STATES,
    TRANSITIONS,
    IllegalTransition,
    JobStatus,
    cancel,
    cancel_queued_of_batch,
    check_transition,
    claim_jobs_bulk,
    expire_leases,
    fail_queued_of_model,
    mark_failed_bulk,
    mark_succeeded_bulk,
    requeue,
    retry_failed_of_batch,
)
from shared.migrate import upgrade
from shared.models import Batch, Job, WebhookDelivery, utcnow
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


def new_job(factory, **values) -> uuid.UUID:
    with session_scope(factory) as s:
        team = ensure_team(s, f"t-{uuid.uuid4().hex[:6]}")
        # Not "tiny": these rows share the session database with the integration tests, and
        # a leftover running one (params={}) requeued by a dispatcher's lease sweep a minute
        # later would be handed to tiny workers and stall the dispatcher (KeyError 'steps').
        values.setdefault("model", "test-jobs")
        job = Job(team_id=team.id, prompt="p", params={}, source_key="k", **values)
        s.add(job)
        s.flush()
        return job.id


def claim_job(session, job_id: uuid.UUID, worker: str, lease_seconds: int) -> bool:
    return claim_jobs_bulk(session, [job_id], worker, lease_seconds) == [job_id]


def mark_succeeded(session, job_id: uuid.UUID, outputs: list, provenance: dict) -> bool:
    return mark_succeeded_bulk(session, [(job_id, outputs, provenance)]) == [job_id]


def mark_failed(session, job_id: uuid.UUID, error: str) -> bool:
    return mark_failed_bulk(session, [job_id], error) == [job_id]


def output(key: str, width: int = 64) -> dict:
    """An output as a worker records it (events describe its size and type)."""
    return {"key": key, "width": width, "height": 64, "content_type": "image/png"}


def status_of(factory, job_id: uuid.UUID) -> str:
    with factory() as s:
        return s.scalar(select(Job.status).where(Job.id == job_id))


def test_final_states_have_no_way_out():
    for state in FINAL_STATES:
        # Only a client's explicit retry re-opens a failed job; nothing renders it directly.
        assert TRANSITIONS[state] <= {JobStatus.QUEUED}
        with pytest.raises(IllegalTransition):
            check_transition(state, JobStatus.RUNNING)
    # A succeeded job reopens only as a rerender of its rejected output (a new attempt).
    assert TRANSITIONS[JobStatus.SUCCEEDED] == frozenset({JobStatus.QUEUED})
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
        first = mark_succeeded(s, job_id, [output("a")], {})
    with session_scope(factory) as s:
        second = mark_succeeded(s, job_id, [output("b")], {})
    with session_scope(factory) as s:
        late_fail = mark_failed(s, job_id, "boom")
    assert (first, second, late_fail) == (True, False, False)
    with factory() as s:
        assert s.get(Job, job_id).outputs == [output("a")]


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
        (unclaimed, [output("u")], {"n": 0}),
        (second, [output("b", 8)], {"n": 2, "params": {"seed": 1}}),
        (first, [output("a")], {"n": 1}),
    ]
    with session_scope(factory) as s:
        assert mark_succeeded_bulk(s, successes) == [second, first]
    with session_scope(factory) as s:
        assert mark_succeeded_bulk(s, successes) == [], "two workers cannot both finish a job"
        assert mark_succeeded_bulk(s, []) == []
    with factory() as s:
        rows = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_([first, second])))}
    assert (rows[first].outputs, rows[first].provenance) == ([output("a")], {"n": 1})
    assert rows[second].outputs == [output("b", 8)]
    assert rows[second].provenance == {"n": 2, "params": {"seed": 1}}
    assert all(j.status == "succeeded" and j.lease_expires_at is None for j in rows.values())
    assert all(j.finished_at is not None for j in rows.values())
    assert status_of(factory, unclaimed) == "queued"


# --- every final transition writes its own event ---------------------------------------------
# Each case runs in one transaction that is rolled back at the end: the rows it wrote are
# seen inside it, and nothing is left for a later test's webhook worker to send.

HOOK = "https://hooks.invalid/jobs"


def claimed(s, job_id: uuid.UUID) -> None:
    assert claim_jobs_bulk(s, [job_id], "w1", 60) == [job_id]


def claimed_and_lost(s, job_id: uuid.UUID) -> None:
    claimed(s, job_id)
    s.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(attempts=3, lease_expires_at=utcnow() - timedelta(seconds=1))
    )


def left_queued(s, job_id: uuid.UUID) -> None:
    pass


def events_of(s, job_ids: list[uuid.UUID]) -> list[str]:
    query = select(WebhookDelivery.event_type).where(WebhookDelivery.job_id.in_(job_ids))
    return sorted(s.scalars(query))


FINAL_MOVES = {
    "worker success": (
        claimed,
        lambda s, j, model: mark_succeeded_bulk(s, [(j, [], {})]) == [j],
        "succeeded",
    ),
    "worker failure": (
        claimed,
        lambda s, j, model: mark_failed_bulk(s, [j], "boom") == [j],
        "failed",
    ),
    "unrenderable params": (
        left_queued,
        lambda s, j, model: mark_failed_bulk(s, [j], "bad", JobStatus.QUEUED) == [j],
        "failed",
    ),
    "model left the registry": (
        left_queued,
        lambda s, j, model: fail_queued_of_model(s, model, "gone") == 1,
        "failed",
    ),
    "lease sweep": (claimed_and_lost, lambda s, j, model: expire_leases(s, 3)[1] >= 1, "failed"),
    "cancel queued": (left_queued, lambda s, j, model: cancel(s, j), "canceled"),
    "cancel running": (claimed, lambda s, j, model: cancel(s, j), "canceled"),
}


@pytest.mark.parametrize("case", FINAL_MOVES, ids=list(FINAL_MOVES))
def test_each_final_transition_writes_its_event_itself_and_only_once(factory, case):
    """The transition, not its caller, writes the job.<status> outbox row in the same
    transaction; losing the race (the job already final) writes none."""
    start, move, status = FINAL_MOVES[case]
    model = f"test-jobs-{uuid.uuid4().hex[:6]}"
    job_id = new_job(factory, model=model, webhook_url=HOOK)
    with factory() as s:
        start(s, job_id)
        assert move(s, job_id, model)
        assert s.scalar(select(Job.status).where(Job.id == job_id)) == status
        assert events_of(s, [job_id]) == [f"job.{status}"]
        assert not move(s, job_id, model), "a final job does not move again"
        assert events_of(s, [job_id]) == [f"job.{status}"]
        s.rollback()
    with factory() as s:
        assert events_of(s, [job_id]) == [], "the event rolls back with the change"
    assert status_of(factory, job_id) == "queued"


def test_batch_cancel_and_retry_move_the_whole_batch_with_its_events(factory):
    """Batch cancel: queued → canceled with job.canceled each and, once nothing is left,
    batch.completed. Batch retry: failed → queued (the state machine's retry edge) with a
    clean round, the batch reopened so the round's end completes it again."""
    with factory() as s:
        team = ensure_team(s, f"t-{uuid.uuid4().hex[:6]}")
        batch = Batch(
            team_id=team.id,
            model="test-jobs",
            seed=1,
            params={},
            image_count=1,
            prompt_count=1,
            variants=3,
            job_count=3,
            webhook_url=HOOK,
        )
        s.add(batch)
        s.flush()
        jobs = [
            Job(team_id=team.id, batch_id=batch.id, model="test-jobs", prompt="p", params={})
            for _ in range(3)
        ]
        for job in jobs:
            job.source_key = "k"
        s.add_all(jobs)
        s.flush()
        failed, waiting, other = (j.id for j in jobs)
        claimed(s, failed)
        assert mark_failed_bulk(s, [failed], "boom") == [failed]
        assert cancel_queued_of_batch(s, batch.id) == 2
        assert cancel_queued_of_batch(s, batch.id) == 0, "nothing queued is left"
        batch_rows = select(WebhookDelivery.event_type).where(WebhookDelivery.batch_id == batch.id)
        assert sorted(s.scalars(batch_rows)) == [
            "batch.completed",
            "batch.progress",  # the first job to finish
            "job.canceled",
            "job.canceled",
            "job.failed",
        ]
        assert s.scalar(select(Batch.completed_at).where(Batch.id == batch.id)) is not None

        check_transition(JobStatus.FAILED, JobStatus.QUEUED)
        assert retry_failed_of_batch(s, batch.id) == 1
        assert retry_failed_of_batch(s, batch.id) == 0, "a job is retried once per failure"
        row = s.execute(
            select(Job.status, Job.attempts, Job.error, Job.finished_at).where(Job.id == failed)
        ).one()
        assert tuple(row) == ("queued", 0, None, None)
        assert s.scalar(select(Batch.completed_at).where(Batch.id == batch.id)) is None
        assert {s.scalar(select(Job.status).where(Job.id == j)) for j in (waiting, other)} == {
            "canceled"
        }
        s.rollback()

"""A rendered group's scores and review states are stored by the one UPDATE that marks it
succeeded, and the jobs that need review get a job.needs_review event in that transaction."""

from __future__ import annotations

import json
import uuid

from sqlalchemy import select

from shared.db import session_scope
from shared.jobs import Success, claim_jobs_bulk, mark_succeeded_bulk
from shared.models import Job, WebhookDelivery, WebhookEndpoint
from shared.teams import ensure_team
from tests.statements import statements_sent

HOOK = "http://127.0.0.1:9/hook"  # nothing listens on port 9: rows are checked, not sent
OUTPUT = {"key": "k", "width": 64, "height": 64, "content_type": "image/png"}
GOOD = {"structure": 1.0, "ssim": 1.0, "colour_drift": 0.0, "kept_pixels_changed": None}
BAD = {"structure": 0.1, "ssim": 0.02, "colour_drift": 41.5, "kept_pixels_changed": None}


def running_jobs(factory, count: int) -> tuple[uuid.UUID, list[uuid.UUID]]:
    with session_scope(factory) as s:
        team = ensure_team(s, f"t-{uuid.uuid4().hex[:6]}")
        events = ["job.succeeded", "job.needs_review"]
        s.add(WebhookEndpoint(team_id=team.id, url=HOOK, events=events, secret="s"))
        jobs = [
            Job(team_id=team.id, model="test-review", prompt="p", params={}, source_key="k")
            for _ in range(count)
        ]
        s.add_all(jobs)
        s.flush()
        ids = [j.id for j in jobs]
        assert claim_jobs_bulk(s, ids, "w1", 60) == ids
        return team.id, ids


def test_scores_and_review_ride_the_success_update_and_flag_needs_review(factory):
    _, (passed, flagged, unscored) = running_jobs(factory, 3)
    successes = [
        Success(passed, [OUTPUT], {}, GOOD, "passed"),
        Success(flagged, [OUTPUT], {}, BAD, "needs_review"),
        (unscored, [OUTPUT], {}),  # a caller that scores nothing: columns left alone
    ]
    with session_scope(factory) as s, statements_sent(s.get_bind()) as statements:
        assert mark_succeeded_bulk(s, successes) == [passed, flagged, unscored]
    # On Postgres the UPDATE is a CTE of the statement that logs it too.
    updates = [q for q in statements if "UPDATE JOBS" in q.upper()]
    assert len(updates) == 1, "one statement for the group, scores and review included"
    with factory() as s:
        rows = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_([passed, flagged])))}
        unscored_row = s.get(Job, unscored)
        sent = s.scalars(select(WebhookDelivery).order_by(WebhookDelivery.created_at)).all()
    assert (rows[passed].fidelity, rows[passed].review) == (GOOD, "passed")
    assert (rows[flagged].fidelity, rows[flagged].review) == (BAD, "needs_review")
    assert unscored_row is not None and unscored_row.review is None
    mine = [d for d in sent if d.job_id in (passed, flagged, unscored)]
    assert sorted((d.event_type, d.job_id == flagged) for d in mine) == [
        ("job.needs_review", True),
        ("job.succeeded", False),
        ("job.succeeded", False),
        ("job.succeeded", True),
    ]
    (needs,) = [d for d in mine if d.event_type == "job.needs_review"]
    data = json.loads(needs.body)["data"]
    assert (data["review"], data["fidelity"]) == ("needs_review", BAD)


def test_a_lost_race_writes_neither_scores_nor_needs_review(factory):
    _, (job,) = running_jobs(factory, 1)
    with session_scope(factory) as s:
        assert mark_succeeded_bulk(s, [Success(job, [OUTPUT], {}, GOOD, "passed")]) == [job]
    with session_scope(factory) as s:  # a second worker finishing it too loses
        assert mark_succeeded_bulk(s, [Success(job, [OUTPUT], {}, BAD, "needs_review")]) == []
    with factory() as s:
        assert s.get(Job, job).review == "passed"  # type: ignore[union-attr]
        kinds = s.scalars(select(WebhookDelivery.event_type).where(WebhookDelivery.job_id == job))
        assert list(kinds) == ["job.succeeded"]

"""Review by a person: decisions on one job and on many, review counts and filters, the
archive of publishable outputs, batch.reviewed, and rerendering rejected outputs.

On the real app and PostgreSQL. Outcomes, and the review state the worker's scores decide,
are played by the state machine's own functions (tests/factories.py finish_jobs). A real
worker renders and rerenders in tests/test_client.py (its module already runs one).
"""

from __future__ import annotations

import io
import uuid
import zipfile
from collections.abc import Iterator
from datetime import datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from api.app import create_app
from shared.db import session_scope
from shared.jobs import cancel, claim_jobs_bulk
from shared.keys import hash_api_key
from shared.models import ApiKey, Batch, Job, JobEvent, WebhookDelivery
from shared.review import rerender_seed
from shared.storage import output_key, storage_from_settings
from shared.teams import create_api_key, ensure_team
from tests.factories import batch_body, finish_jobs
from tests.services import wait_for

# Nothing listens on port 9 (discard): the delivery rows are looked at, never sent.
HOOK = "http://127.0.0.1:9/hook"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def api(settings) -> Iterator[TestClient]:
    """The app of a farm that allows loopback webhook receivers (HOOK), for the module."""
    app = create_app(settings.model_copy(update={"allow_private_networks": "127.0.0.0/8"}))
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def storage(settings):
    return storage_from_settings(settings)


def cancel_leftovers(session_factory, since: datetime) -> None:
    """Cancel what this module's tests left queued, so no worker renders jobs nobody waits
    for (this module's own dispatcher included)."""
    with session_factory() as s:
        s.execute(
            update(Job)
            .where(Job.created_at >= since, Job.status.in_(["queued", "running"]))
            .values(status="canceled", finished_at=func.now(), lease_expires_at=None)
        )
        s.commit()


@pytest.fixture(scope="module", autouse=True)
def module_started(session_factory) -> Iterator[datetime]:
    with session_factory() as s:
        started = s.scalar(select(func.now()))
    yield started
    cancel_leftovers(session_factory, started)


def jobs_of(session_factory, batch_id: str) -> list[Job]:
    with session_factory() as s:
        return list(
            s.scalars(
                select(Job)
                .where(Job.batch_id == uuid.UUID(batch_id))
                .order_by(Job.sku, Job.prompt_name, Job.variant)
            )
        )


def reviewed_rows(session_factory, batch_id: str) -> list[WebhookDelivery]:
    with session_factory() as s:
        return list(
            s.scalars(
                select(WebhookDelivery).where(
                    WebhookDelivery.batch_id == uuid.UUID(batch_id),
                    WebhookDelivery.event_type == "batch.reviewed",
                )
            )
        )


def make_scored_batch(api, session_factory, storage) -> tuple[str, str, list[uuid.UUID]]:
    """A 12-job batch: 8 succeeded (4 passed, 4 needing review), 1 failed, 3 queued."""
    with session_scope(session_factory) as s:
        key = create_api_key(s, ensure_team(s, f"review-{uuid.uuid4().hex[:8]}"))
    answer = api.post("/v1/batches", json=batch_body(webhook_url=HOOK), headers=auth(key))
    assert answer.status_code == 202, answer.text
    batch_id = answer.json()["id"]
    jobs = [j.id for j in jobs_of(session_factory, batch_id)]
    finish_jobs(session_factory, storage, jobs[:4], review="passed")
    finish_jobs(session_factory, storage, jobs[4:8], review="needs_review")
    finish_jobs(session_factory, storage, jobs[8:9], "failed")
    return key, batch_id, jobs


@pytest.fixture
def scored_batch(api, session_factory, storage):
    """A batch of the test's own, for tests that decide."""
    return make_scored_batch(api, session_factory, storage)


@pytest.fixture(scope="module")
def unchanged_batch(api, session_factory, storage):
    """One batch for the tests that are refused (they change nothing: checked by each)."""
    return make_scored_batch(api, session_factory, storage)


INITIAL = ["passed"] * 4 + ["needs_review"] * 4 + [None] * 4


def reviews(session_factory, jobs: list[uuid.UUID]) -> list[str | None]:
    with session_factory() as s:
        found = {i: r for i, r in s.execute(select(Job.id, Job.review).where(Job.id.in_(jobs)))}
    return [found[j] for j in jobs]


def key_id(session_factory, key: str) -> str:
    with session_factory() as s:
        return str(s.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_api_key(key))))


def test_needs_review_flows_through_counts_listing_and_decisions(
    api, scored_batch, session_factory
):
    key, batch_id, jobs = scored_batch
    batch = api.get(f"/v1/batches/{batch_id}", headers=auth(key)).json()
    assert batch["review_counts"] == {"passed": 4, "needs_review": 4, "approved": 0, "rejected": 0}
    with session_factory() as s:  # the batch's webhook hears which ones need a look
        flagged = s.scalars(
            select(WebhookDelivery.job_id).where(
                WebhookDelivery.batch_id == uuid.UUID(batch_id),
                WebhookDelivery.event_type == "job.needs_review",
            )
        )
        assert set(flagged) == set(jobs[4:8])
    listed = api.get(f"/v1/batches/{batch_id}/jobs?review=needs_review", headers=auth(key))
    assert {j["id"] for j in listed.json()["jobs"]} == {str(j) for j in jobs[4:8]}
    both = api.get(f"/v1/batches/{batch_id}/jobs?review=passed,needs_review", headers=auth(key))
    assert len(both.json()["jobs"]) == 8

    # one job: rejected with a note, by this key, now
    answer = api.post(
        f"/v1/jobs/{jobs[4]}/review",
        json={"decision": "reject", "note": "the logo drifts <b>left</b>"},
        headers=auth(key),
    )
    assert answer.status_code == 200, answer.text
    job = answer.json()
    assert job["review_note"] == "the logo drifts <b>left</b>"  # text, as sent
    assert job["reviewed_by"] == key_id(session_factory, key) and job["reviewed_at"]
    # a person changes their mind: rejected -> approved -> rejected
    for decision in ("approve", "reject"):
        again = api.post(
            f"/v1/jobs/{jobs[4]}/review", json={"decision": decision}, headers=auth(key)
        )
        assert again.status_code == 200, again.text
    with session_factory() as s:  # each decision is on the live streams' log
        logged = select(func.count()).where(JobEvent.job_id == jobs[4])
        assert s.scalar(logged.where(JobEvent.type == "job.reviewed")) == 3

    # many at once: a list (one transaction), then "approve all passed"
    listed = {
        "decisions": [
            {"job_id": str(jobs[5]), "decision": "approve"},
            {"job_id": str(jobs[6]), "decision": "reject", "note": "strap missing"},
        ]
    }
    answer = api.post(f"/v1/batches/{batch_id}/review", json=listed, headers=auth(key))
    assert answer.status_code == 200, answer.text
    assert answer.json()["decided"] == 2
    bulk = {"decision": "approve", "where": {"review": "passed"}}
    answer = api.post(f"/v1/batches/{batch_id}/review", json=bulk, headers=auth(key)).json()
    assert answer["decided"] == 4
    assert answer["review_counts"] == {
        "passed": 0,
        "needs_review": 1,
        "approved": 5,
        "rejected": 2,
    }
    with session_factory() as s:
        rows = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(jobs[4:7])))}
    assert [rows[j].review for j in jobs[4:7]] == ["rejected", "approved", "rejected"]
    assert rows[jobs[6]].review_note == "strap missing"


def test_decisions_on_jobs_without_an_output_are_409_and_write_nothing(
    api, unchanged_batch, session_factory
):
    key, batch_id, jobs = unchanged_batch
    answer = api.post(
        f"/v1/jobs/{jobs[10]}/review", json={"decision": "approve"}, headers=auth(key)
    )
    assert answer.status_code == 409, answer.text
    assert "queued" in answer.json()["detail"]
    mixed = {
        "decisions": [
            {"job_id": str(jobs[4]), "decision": "approve"},
            {"job_id": str(jobs[8]), "decision": "approve"},  # failed: no output
        ]
    }
    answer = api.post(f"/v1/batches/{batch_id}/review", json=mixed, headers=auth(key))
    assert answer.status_code == 409, answer.text
    assert answer.json()["errors"][0]["field"] == "decisions[1].job_id"
    assert "failed" in answer.json()["detail"]
    assert reviews(session_factory, jobs) == INITIAL  # all or nothing: [0] rolled back


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"decision": "maybe"}, "decision"),
        ({"decision": "approve", "note": "x" * 2001}, "note"),
        ({"decision": "approve", "extra": 1}, "extra"),
    ],
)
def test_a_bad_decision_is_422_naming_the_field(api, unchanged_batch, session_factory, body, field):
    key, _, jobs = unchanged_batch
    answer = api.post(f"/v1/jobs/{jobs[4]}/review", json=body, headers=auth(key))
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"][0]["field"] == field
    assert reviews(session_factory, jobs) == INITIAL


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"decision": "approve"}, "where"),
        ({"where": {"review": "passed"}}, "decision"),
        ({"decision": "approve", "where": {"review": "great"}}, "where.review[0]"),
        ({"decisions": []}, "decisions"),
        (  # bounded: at most 1,000 decisions a request
            {"decisions": [{"job_id": str(uuid.uuid4()), "decision": "approve"}] * 1001},
            "decisions",
        ),
        ({"decisions": [{"job_id": "nope", "decision": "approve"}]}, "decisions[0].job_id"),
    ],
)
def test_a_bad_batch_review_is_422_naming_the_field(
    api, unchanged_batch, session_factory, body, field
):
    key, batch_id, jobs = unchanged_batch
    answer = api.post(f"/v1/batches/{batch_id}/review", json=body, headers=auth(key))
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"][0]["field"] == field
    assert reviews(session_factory, jobs) == INITIAL


def test_a_bad_review_filter_is_422_naming_review(api, unchanged_batch):
    key, batch_id, _ = unchanged_batch
    for path in ("jobs", "manifest", "archive"):
        answer = api.get(f"/v1/batches/{batch_id}/{path}?review=passed,great", headers=auth(key))
        assert answer.status_code == 422, answer.text
        assert answer.json()["errors"][0]["field"] == "review"


def test_another_teams_job_and_batch_are_404(api, unchanged_batch, new_key, session_factory):
    _, batch_id, jobs = unchanged_batch
    other = auth(new_key())
    decision = {"decision": "approve"}
    assert api.post(f"/v1/jobs/{jobs[0]}/review", json=decision, headers=other).status_code == 404
    bulk = {"decision": "approve", "where": {"review": "passed"}}
    assert api.post(f"/v1/batches/{batch_id}/review", json=bulk, headers=other).status_code == 404
    assert api.post(f"/v1/batches/{batch_id}/rerender", headers=other).status_code == 404
    listing = api.get(f"/v1/batches/{batch_id}/jobs?review=passed", headers=other)
    assert listing.status_code == 404
    assert reviews(session_factory, jobs) == INITIAL
    assert jobs_of(session_factory, batch_id)[0].history is None  # nothing rerendered


def test_archive_and_manifest_hold_only_the_review_states_asked_for(api, scored_batch):
    key, batch_id, jobs = scored_batch
    api.post(f"/v1/jobs/{jobs[4]}/review", json={"decision": "approve"}, headers=auth(key))
    api.post(f"/v1/jobs/{jobs[5]}/review", json={"decision": "reject"}, headers=auth(key))
    publishable = "review=passed,approved"
    answer = api.get(f"/v1/batches/{batch_id}/archive?{publishable}", headers=auth(key))
    assert answer.status_code == 200
    names = zipfile.ZipFile(io.BytesIO(answer.content)).namelist()
    assert len(names) == 5  # 4 passed + 1 approved; rejected and needs_review left out
    manifest = api.get(f"/v1/batches/{batch_id}/manifest?{publishable}", headers=auth(key))
    assert {i["job_id"] for i in manifest.json()["items"]} == {str(j) for j in jobs[:5]}
    everything = api.get(f"/v1/batches/{batch_id}/archive", headers=auth(key))
    assert len(zipfile.ZipFile(io.BytesIO(everything.content)).namelist()) == 8


def test_batch_reviewed_is_sent_once_when_no_output_needs_review(
    api, scored_batch, session_factory, storage
):
    key, batch_id, jobs = scored_batch
    finish_jobs(session_factory, storage, jobs[9:], review="passed")  # completes: 4 need review
    bulk = {"decision": "approve", "where": {"review": ["needs_review"]}}
    decisions = [{"job_id": str(j), "decision": "approve"} for j in jobs[4:7]]
    answer = api.post(
        f"/v1/batches/{batch_id}/review", json={"decisions": decisions}, headers=auth(key)
    )
    assert answer.status_code == 200 and reviewed_rows(session_factory, batch_id) == []
    answer = api.post(f"/v1/batches/{batch_id}/review", json=bulk, headers=auth(key))
    assert answer.json()["decided"] == 1
    (row,) = reviewed_rows(session_factory, batch_id)
    with session_factory() as s:  # batch.completed counted the review states too
        completed = s.scalar(
            select(WebhookDelivery.body).where(
                WebhookDelivery.batch_id == uuid.UUID(batch_id),
                WebhookDelivery.event_type == "batch.completed",
            )
        )
    assert '"review_counts":{"approved":0,"needs_review":4,"passed":7,"rejected":0}' in completed
    assert '"approved":4' in row.body and '"passed":7' in row.body
    # a change of mind after the round was settled sends nothing more
    api.post(f"/v1/jobs/{jobs[4]}/review", json={"decision": "reject"}, headers=auth(key))
    assert len(reviewed_rows(session_factory, batch_id)) == 1


def test_rerender_queues_rejected_jobs_again_keeping_their_history(
    api, scored_batch, session_factory
):
    key, batch_id, jobs = scored_batch
    for job_id in jobs[4:6]:
        api.post(
            f"/v1/jobs/{job_id}/review",
            json={"decision": "reject", "note": "blurry"},
            headers=auth(key),
        )
    before = {j.id: j for j in jobs_of(session_factory, batch_id)}
    answer = api.post(f"/v1/batches/{batch_id}/rerender?review=rejected", headers=auth(key))
    assert answer.status_code == 200 and answer.json()["rerendered"] == 2, answer.text
    with session_factory() as s:
        batch_seed = s.scalar(select(Batch.seed).where(Batch.id == uuid.UUID(batch_id)))
    for job_id in jobs[4:6]:
        job = api.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()
        old = before[job_id]
        assert job["status"] == "queued" and job["outputs"] == [] and job["attempts"] == 0
        assert job["params"]["seed"] == rerender_seed(
            batch_seed, old.sku, old.prompt_name, old.variant, 1
        )
        (attempt,) = job["history"]
        assert attempt["round"] == 0 and attempt["seed"] == old.params["seed"]
        assert attempt["review"] == "rejected" and attempt["review_note"] == "blurry"
        assert len(attempt["outputs"]) == 1 and attempt["outputs"][0]["url"]
    assert api.post(f"/v1/batches/{batch_id}/rerender", headers=auth(key)).json()["rerendered"] == 0
    bad = api.post(f"/v1/batches/{batch_id}/rerender?review=passed", headers=auth(key))
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "review"


def test_a_canceled_rerender_loses_only_its_own_output(
    api, scored_batch, session_factory, storage, settings
):
    """The dispatcher's sweep of a canceled job's leftover output removes that attempt's
    objects (its round's render and each preset output beside it), never the earlier
    attempt the history keeps."""
    from dispatch.dispatcher import Dispatcher
    from shared.broker import make_celery

    key, batch_id, jobs = scored_batch
    job_id = jobs[4]
    api.post(f"/v1/jobs/{job_id}/review", json={"decision": "reject"}, headers=auth(key))
    assert api.post(f"/v1/batches/{batch_id}/rerender", headers=auth(key)).json()["rerendered"]
    with session_factory() as s:  # play a worker that stored round 1, then was canceled
        assert claim_jobs_bulk(s, [job_id], "fake-worker", 300) == [job_id]
        job = s.get(Job, job_id)
        first, second = (
            job.history[0]["outputs"][0]["key"],
            output_key(job.team_id, job_id, 1, "png"),
        )
        storage.put(second, b"round 1", "image/png")
        # ... and a preset output the job asked for (a jpeg beside the render)
        job.params = {**job.params, "presets": ["instagram-portrait"]}
        portrait = output_key(job.team_id, job_id, 1, "jpg", preset="instagram-portrait")
        storage.put(portrait, b"round 1 portrait", "image/jpeg")
        assert cancel(s, job_id)
        s.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=func.now()))
        s.commit()
    dispatcher = Dispatcher(settings, session_factory, make_celery(settings), {})

    def swept() -> bool:
        dispatcher._remove_canceled_outputs()
        with session_factory() as s:
            return s.scalar(select(Job.lease_expires_at).where(Job.id == job_id)) is None

    wait_for(swept, 10, "the canceled job's outputs swept")
    assert storage.exists(first) and not storage.exists(second)
    assert not storage.exists(portrait)

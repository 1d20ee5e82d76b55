"""``/v1/batches`` and ``Idempotency-Key`` over the real app on PostgreSQL and the S3 endpoint.

Most tests play the worker's part with ``finish_jobs`` (real state transitions, real objects
in the bucket) so they run in milliseconds; the ``integration`` tests at the end render for
real with the dispatcher and a tiny worker.
"""

from __future__ import annotations

import csv
import io
import threading
import uuid
import zipfile
from datetime import datetime

import httpx
import pytest
from PIL import Image
from sqlalchemy import func, select, update

from api.app import create_app
from api.archive import ArchiveEntry, iter_archive
from api.batches import derive_seed
from shared.models import Batch, IdempotencyKey, Job, Upload
from shared.schemas import MAX_BATCH_JOBS
from shared.storage import LocalStorage, storage_from_settings
from tests.factories import batch_body, data_url, finish_jobs, job_body, png_bytes
from tests.services import wait_for


def auth(key: str, idempotency_key: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}"}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    return headers


def counts(session_factory) -> tuple[int, int, int]:
    """(jobs, batches, idempotency keys) in the whole database."""
    with session_factory() as s:
        return (
            s.scalar(select(func.count()).select_from(Job)),
            s.scalar(select(func.count()).select_from(Batch)),
            s.scalar(select(func.count()).select_from(IdempotencyKey)),
        )


def batch_jobs(session_factory, batch_id: str) -> list[Job]:
    with session_factory() as s:
        return list(
            s.scalars(
                select(Job)
                .where(Job.batch_id == uuid.UUID(batch_id))
                .order_by(Job.sku, Job.prompt_name, Job.variant)
            )
        )


@pytest.fixture(scope="module")
def storage(settings):
    return storage_from_settings(settings)


@pytest.fixture(autouse=True)
def leave_no_work_behind(session_factory):
    """Cancel what a test left queued or running, so later tests that start a dispatcher
    and a worker do not first render hundreds of jobs nobody waits for."""
    with session_factory() as s:
        started = s.scalar(select(func.now()))
    yield
    with session_factory() as s:
        s.execute(
            update(Job)
            .where(Job.created_at >= started, Job.status.in_(["queued", "running"]))
            .values(status="canceled", finished_at=func.now(), lease_expires_at=None)
        )
        s.commit()


@pytest.fixture
def key(new_key) -> str:
    return new_key()


def submit(client, key: str, **overrides) -> str:
    response = client.post("/v1/batches", json=batch_body(**overrides), headers=auth(key))
    assert response.status_code == 202, response.text
    return response.json()["id"]


# --- creation ------------------------------------------------------------------------------


def test_batch_creates_every_image_x_prompt_x_variant_with_distinct_derived_seeds(
    client, key, session_factory
):
    response = client.post("/v1/batches", json=batch_body(), headers=auth(key))
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["job_count"] == 12 and body["seed"] == 1234

    jobs = batch_jobs(session_factory, body["id"])
    grid = {(j.sku, j.prompt_name, j.variant) for j in jobs}
    assert grid == {
        (sku, name, v)
        for sku in ("SKU-RED", "SKU-BLUE")
        for name in ("winter", "summer", "the-product-among-autumn-leaves")
        for v in (1, 2)
    }
    seeds = [j.params["seed"] for j in jobs]
    assert len(set(seeds)) == 12, "every job gets its own seed"
    for j in jobs:
        assert j.params["seed"] == derive_seed(1234, j.sku, j.prompt_name, j.variant)
        assert 0 <= j.params["seed"] < 2**53
        assert j.status == "queued" and j.enqueued_at is None, "the dispatcher hands them over"
        assert j.params["steps"] == 4 and j.params["width"] == 64, "tiny's defaults"
    # One source object per distinct image, shared by all of that image's jobs.
    by_sku = {sku: {j.source_key for j in jobs if j.sku == sku} for sku in ("SKU-RED", "SKU-BLUE")}
    assert all(len(keys) == 1 for keys in by_sku.values())
    assert by_sku["SKU-RED"] != by_sku["SKU-BLUE"]


def test_seeds_follow_names_so_reordering_inputs_keeps_each_jobs_seed(client, key, session_factory):
    body = batch_body()
    first = {
        (j.sku, j.prompt_name, j.variant): j.params["seed"]
        for j in batch_jobs(session_factory, submit(client, key))
    }
    reordered = {
        (j.sku, j.prompt_name, j.variant): j.params["seed"]
        for j in batch_jobs(
            session_factory,
            submit(client, key, images=body["images"][::-1], prompts=body["prompts"][::-1]),
        )
    }
    assert first == reordered
    other_seed = batch_jobs(session_factory, submit(client, key, seed=0))
    assert {j.params["seed"] for j in other_seed}.isdisjoint(first.values()), "seed=0 is a seed"


def test_missing_seed_is_drawn_and_stored_on_the_batch(client, key, session_factory):
    body = batch_body()
    del body["seed"]
    response = client.post("/v1/batches", json=body, headers=auth(key))
    seed = response.json()["seed"]
    assert isinstance(seed, int) and seed >= 0
    batch = client.get(f"/v1/batches/{response.json()['id']}", headers=auth(key)).json()
    assert batch["seed"] == seed
    job = batch_jobs(session_factory, response.json()["id"])[0]
    assert job.params["seed"] == derive_seed(seed, job.sku, job.prompt_name, job.variant)


def test_strings_uploads_and_shared_negative_prompt(client, key, session_factory):
    files = [("files", ("shoe.png", png_bytes(), "image/png"))]
    upload_id = client.post("/v1/uploads", files=files, headers=auth(key)).json()["uploads"][0]
    body = batch_body(
        images=[upload_id["id"], data_url(png_bytes(50, 50))],
        prompts=["on snow", {"prompt": "on sand", "negative_prompt": "people"}],
        variants=1,
        negative_prompt="blurry",
    )
    batch_id = client.post("/v1/batches", json=body, headers=auth(key)).json()["id"]
    jobs = batch_jobs(session_factory, batch_id)
    assert {(j.sku, j.prompt_name, j.negative_prompt) for j in jobs} == {
        ("image-1", "on-snow", "blurry"),
        ("image-1", "on-sand", "people"),
        ("image-2", "on-snow", "blurry"),
        ("image-2", "on-sand", "people"),
    }
    with session_factory() as s:
        upload = s.get(Upload, uuid.UUID(upload_id["id"]))
    assert {j.source_key for j in jobs if j.sku == "image-1"} == {upload.object_key}


def test_more_than_10000_jobs_is_413_naming_limit_and_fields(client, key, session_factory):
    before = counts(session_factory)
    body = batch_body(
        images=[str(uuid.uuid4()) for _ in range(101)],
        prompts=[f"prompt {i}" for i in range(10)],
        variants=10,
    )
    response = client.post("/v1/batches", json=body, headers=auth(key, "too-big"))
    assert response.status_code == 413, response.text
    detail = response.json()["detail"]
    assert "images x prompts x variants" in detail
    assert "101 x 10 x 10 = 10,100" in detail and f"{MAX_BATCH_JOBS:,}" in detail
    assert counts(session_factory) == before, "nothing written, not even the key"


@pytest.mark.parametrize(
    "overrides,status,field",
    [
        ({"model": "nope"}, 422, "model"),
        ({"strength": 0}, 422, "strength"),
        ({"steps": 1, "strength": 0.5}, 422, "strength"),
        ({"width": 60}, 422, "width"),
        ({"variants": 0}, 422, "variants"),
        ({"images": []}, 422, "images"),
        ({"prompts": [""]}, 422, "prompts[0].prompt"),
        ({"images": [{"image": data_url(png_bytes()), "sku": "a/b"}]}, 422, "images[0].sku"),
        ({"images": [{"image": data_url(png_bytes()), "sku": ".."}]}, 422, "images[0].sku"),
        (
            {"images": [{"image": data_url(png_bytes()), "sku": "A"}] * 2},
            422,
            "images[1].sku",
        ),
        ({"prompts": ["same", {"prompt": "other", "name": "same"}]}, 422, "prompts[1].name"),
        (
            {"images": [data_url(png_bytes()), data_url(b"not an image")]},
            422,
            "images[1].image",
        ),
        ({"images": [data_url(png_bytes()), str(uuid.uuid4())]}, 404, "images[1].image"),
        ({"images": ["http://169.254.169.254/latest/"]}, 422, "images[0].image"),
        ({"metadata": {"x": "y" * 10_000}}, 422, "metadata"),
        ({"colour": "red"}, 422, "colour"),
    ],
)
def test_bad_batch_is_4xx_naming_the_field_and_writes_nothing(
    client, key, session_factory, overrides, status, field
):
    before = counts(session_factory)
    response = client.post(
        "/v1/batches", json=batch_body(**overrides), headers=auth(key, str(uuid.uuid4()))
    )
    assert response.status_code == status, response.text
    assert any(e["field"] == field for e in response.json()["errors"]), response.json()
    assert counts(session_factory) == before


@pytest.mark.parametrize(
    "overrides,field",
    [
        (
            {"images": [{"image": data_url(png_bytes()), "sku": s} for s in ("SKU-A", "sku-a")]},
            "images[1].sku",
        ),
        (
            {
                "images": [
                    {"image": data_url(png_bytes()), "sku": s} for s in ("caf\u00e9", "CAFE\u0301")
                ]
            },
            "images[1].sku",
        ),
        (
            # the first image's default sku is image-1
            {
                "images": [
                    {"image": data_url(png_bytes())},
                    {"image": data_url(png_bytes()), "sku": "IMAGE-1"},
                ]
            },
            "images[1].sku",
        ),
        ({"prompts": ["On Snow", {"prompt": "other", "name": "ON-SNOW"}]}, "prompts[1].name"),
    ],
)
def test_names_one_folder_on_macos_or_windows_are_refused(
    client, key, session_factory, overrides, field
):
    """SKU-A and sku-a (or a composed and a decomposed é, or a given sku and a default
    image-N) would overwrite each other's folder on a case-insensitive disk."""
    before = counts(session_factory)
    response = client.post("/v1/batches", json=batch_body(**overrides), headers=auth(key))
    assert response.status_code == 422, response.text
    (error,) = response.json()["errors"]
    assert error["field"] == field and "macOS and Windows" in error["message"], error
    assert counts(session_factory) == before


@pytest.mark.parametrize("sku", ["CON", "nul.txt", "COM1", "C:", "a|b", 'a"b', "x.", "x ", "  "])
def test_non_portable_skus_are_refused(client, key, session_factory, sku):
    before = counts(session_factory)
    images = [{"image": data_url(png_bytes()), "sku": sku}]
    response = client.post("/v1/batches", json=batch_body(images=images), headers=auth(key))
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == ["images[0].sku"]
    assert counts(session_factory) == before


def test_default_prompt_names_are_portable(client, key, session_factory):
    """A prompt whose slug is a Windows device name ("Con", "LPT1") gets the default
    prompt-N instead; other slugs are kept."""
    prompts = ["Con", "lpt1", "AUX!", "a shoe"]
    batch_id = submit(client, key, prompts=prompts, variants=1)
    names = {j.prompt_name for j in batch_jobs(session_factory, batch_id)}
    assert names == {"prompt-1", "prompt-2", "prompt-3", "a-shoe"}


# --- idempotency ---------------------------------------------------------------------------


def test_same_key_and_body_returns_the_first_answer_and_creates_nothing(
    client, key, session_factory
):
    first = client.post("/v1/batches", json=batch_body(), headers=auth(key, "morning-run"))
    assert first.status_code == 202
    before = counts(session_factory)
    # Same body with keys in another order: the canonical body is what is compared.
    reordered = dict(reversed(list(batch_body().items())))
    again = client.post("/v1/batches", json=reordered, headers=auth(key, "morning-run"))
    assert again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert counts(session_factory) == before


def test_same_key_with_another_body_is_409_naming_the_header(client, key, session_factory):
    client.post("/v1/batches", json=batch_body(), headers=auth(key, "k1"))
    before = counts(session_factory)
    response = client.post("/v1/batches", json=batch_body(variants=3), headers=auth(key, "k1"))
    assert response.status_code == 409
    assert response.json()["errors"][0]["field"] == "Idempotency-Key"
    assert "different request body" in response.json()["detail"]
    assert counts(session_factory) == before


def test_keys_are_per_team(client, new_key):
    mine, theirs = new_key(), new_key()
    a = client.post("/v1/batches", json=batch_body(), headers=auth(mine, "shared-key"))
    b = client.post("/v1/batches", json=batch_body(), headers=auth(theirs, "shared-key"))
    assert a.status_code == b.status_code == 202
    assert a.json()["id"] != b.json()["id"]


def test_refused_request_does_not_use_up_its_key(client, key):
    bad = client.post("/v1/batches", json=batch_body(model="nope"), headers=auth(key, "retry-me"))
    assert bad.status_code == 422
    good = client.post("/v1/batches", json=batch_body(), headers=auth(key, "retry-me"))
    assert good.status_code == 202


def test_concurrent_requests_with_one_key_create_one_batch(app, key, session_factory):
    """The key row is inserted first: the second request waits for it, then replays."""
    # Distinct images so each request spends a while fetching and storing before its commit.
    body = batch_body(images=[data_url(png_bytes(300 + i, 200)) for i in range(6)], variants=1)
    answers: list[httpx.Response] = []
    barrier = threading.Barrier(4)

    def post() -> None:
        barrier.wait()
        answers.append(clients.post("/v1/batches", json=body, headers=auth(key, "race")))

    from fastapi.testclient import TestClient

    with TestClient(app) as clients:
        threads = [threading.Thread(target=post) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [a.status_code for a in answers] == [202] * 4, [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    with session_factory() as s:
        team_id = s.get(Batch, uuid.UUID(answers[0].json()["id"])).team_id
        assert s.scalar(select(func.count()).where(Batch.team_id == team_id)) == 1


def test_idempotent_job_submission(client, key, session_factory):
    first = client.post("/v1/jobs", json=job_body(), headers=auth(key, "job-1"))
    assert first.status_code == 202
    before = counts(session_factory)
    again = client.post("/v1/jobs", json=job_body(), headers=auth(key, "job-1"))
    assert (again.status_code, again.json()) == (202, first.json())
    assert counts(session_factory) == before
    other = client.post("/v1/jobs", json=job_body(seed=8), headers=auth(key, "job-1"))
    assert other.status_code == 409 and "Idempotency-Key" in other.json()["detail"]
    # A key used on /v1/jobs is not a replay for /v1/batches.
    assert (
        client.post("/v1/batches", json=batch_body(), headers=auth(key, "job-1")).status_code == 409
    )


# --- following ----------------------------------------------------------------------------


def test_counts_add_up_while_it_runs_with_progress_and_eta(client, key, session_factory, storage):
    batch_id = submit(client, key)
    fresh = client.get(f"/v1/batches/{batch_id}", headers=auth(key)).json()
    assert fresh["status"] == "queued" and fresh["counts"]["queued"] == 12
    assert fresh["progress"] == 0 and fresh["eta_seconds"] is None and fresh["started_at"] is None

    ids = [j.id for j in batch_jobs(session_factory, batch_id)]
    finish_jobs(session_factory, storage, ids[:3], "succeeded", seconds=2)
    finish_jobs(session_factory, storage, ids[3:4], "failed", seconds=2)
    finish_jobs(session_factory, storage, ids[4:6], "running")
    batch = client.get(f"/v1/batches/{batch_id}", headers=auth(key)).json()
    assert batch["status"] == "running"
    assert batch["counts"] == {
        "queued": 6,
        "running": 2,
        "succeeded": 3,
        "failed": 1,
        "canceled": 0,
    }
    assert sum(batch["counts"].values()) == batch["job_count"] == 12
    assert batch["progress"] == round(4 / 12, 4)
    # 4 finished in about 2 s since the first start: ~2 jobs/s, 8 left: ~4 s.
    assert 0 < batch["jobs_per_second"] <= 2.5
    assert batch["eta_seconds"] == pytest.approx(8 / batch["jobs_per_second"], rel=0.05)
    assert batch["started_at"] is not None and batch["finished_at"] is None

    finish_jobs(session_factory, storage, ids[6:], "succeeded")
    with session_factory() as s:
        s.execute(update(Job).where(Job.id.in_(ids[4:6])).values(status="succeeded"))
        s.commit()
    done = client.get(f"/v1/batches/{batch_id}", headers=auth(key)).json()
    assert done["status"] == "failed" and done["progress"] == 1
    assert done["eta_seconds"] is None and done["finished_at"] is not None


def test_cancel_cancels_queued_jobs_only(client, key, session_factory, storage):
    batch_id = submit(client, key)
    ids = [j.id for j in batch_jobs(session_factory, batch_id)]
    finish_jobs(session_factory, storage, ids[:2], "succeeded")
    finish_jobs(session_factory, storage, ids[2:3], "running")

    response = client.post(f"/v1/batches/{batch_id}/cancel", headers=auth(key))
    assert response.json() == {"id": batch_id, "canceled": 9}
    by_status = {j.id: j.status for j in batch_jobs(session_factory, batch_id)}
    assert [by_status[i] for i in ids[:3]] == ["succeeded", "succeeded", "running"]
    assert all(by_status[i] == "canceled" for i in ids[3:])
    batch = client.get(f"/v1/batches/{batch_id}", headers=auth(key)).json()
    assert batch["canceled_at"] is not None and batch["status"] == "running"
    # The running job may finish; a second cancel finds nothing left to cancel.
    assert client.post(f"/v1/batches/{batch_id}/cancel", headers=auth(key)).json()["canceled"] == 0


def test_retry_requeues_failed_jobs_only(client, key, session_factory, storage):
    batch_id = submit(client, key)
    ids = [j.id for j in batch_jobs(session_factory, batch_id)]
    finish_jobs(session_factory, storage, ids[:4], "succeeded")
    finish_jobs(session_factory, storage, ids[4:7], "failed")
    client.post(f"/v1/batches/{batch_id}/cancel", headers=auth(key))

    assert client.post(f"/v1/batches/{batch_id}/retry", headers=auth(key)).json() == {
        "id": batch_id,
        "retried": 3,
    }
    jobs = {j.id: j for j in batch_jobs(session_factory, batch_id)}
    assert all(jobs[i].status == "succeeded" and jobs[i].outputs for i in ids[:4])
    for i in ids[4:7]:
        job = jobs[i]
        assert (job.status, job.error, job.attempts, job.enqueued_at) == ("queued", None, 0, None)
    assert all(jobs[i].status == "canceled" for i in ids[7:]), "canceled jobs stay canceled"
    assert client.post(f"/v1/batches/{batch_id}/retry", headers=auth(key)).json()["retried"] == 0


def test_job_pages_cover_every_job_once_and_filter_by_status(client, key, session_factory, storage):
    batch_id = submit(client, key)
    ids = [j.id for j in batch_jobs(session_factory, batch_id)]
    finish_jobs(session_factory, storage, ids[:5], "succeeded")
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 5, **({"cursor": cursor} if cursor else {})}
        page = client.get(f"/v1/batches/{batch_id}/jobs", params=params, headers=auth(key)).json()
        assert len(page["jobs"]) <= 5
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(str(i) for i in ids) and len(seen) == 12

    done = client.get(
        f"/v1/batches/{batch_id}/jobs", params={"status": "succeeded"}, headers=auth(key)
    ).json()["jobs"]
    assert {j["id"] for j in done} == {str(i) for i in ids[:5]}
    assert all(j["outputs"][0]["url"].startswith("http") for j in done)
    assert {j["batch_id"] for j in done} == {batch_id} and all(j["sku"] for j in done)

    bad = client.get(f"/v1/batches/{batch_id}/jobs", params={"status": "done"}, headers=auth(key))
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "status"
    bad = client.get(
        f"/v1/batches/{batch_id}/jobs", params={"cursor": "garbage!"}, headers=auth(key)
    )
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "cursor"


def test_batches_list_newest_first_in_pages_and_only_the_teams(client, new_key):
    mine, theirs = new_key(), new_key()
    created = [submit(client, mine, variants=1) for _ in range(5)]
    submit(client, theirs, variants=1)
    listed: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/batches", params=params, headers=auth(mine)).json()
        listed += [b["id"] for b in page["batches"]]
        assert all(b["counts"]["queued"] == 6 for b in page["batches"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert listed == created[::-1]


def test_another_teams_batch_is_404_everywhere(client, new_key):
    mine, theirs = new_key(), new_key()
    batch_id = submit(client, mine, variants=1)
    for method, suffix in [
        ("get", ""),
        ("get", "/jobs"),
        ("get", "/manifest"),
        ("get", "/archive"),
        ("post", "/cancel"),
        ("post", "/retry"),
    ]:
        response = getattr(client, method)(f"/v1/batches/{batch_id}{suffix}", headers=auth(theirs))
        assert response.status_code == 404, (suffix, response.text)
    assert client.get(f"/v1/batches/{batch_id}", headers=auth(mine)).status_code == 200


# --- manifest and archive ------------------------------------------------------------------


def test_manifest_json_and_csv_list_every_job_and_each_succeeded_output(
    client, key, session_factory, storage
):
    batch_id = submit(client, key)
    jobs = batch_jobs(session_factory, batch_id)
    finish_jobs(session_factory, storage, [j.id for j in jobs[:7]], "succeeded")
    finish_jobs(session_factory, storage, [jobs[7].id], "failed")

    manifest = client.get(f"/v1/batches/{batch_id}/manifest", headers=auth(key))
    assert manifest.status_code == 200
    data = manifest.json()
    assert data["batch_id"] == batch_id
    items = {item["job_id"]: item for item in data["items"]}
    assert len(items) == 12
    for job in jobs[:7]:
        item = items[str(job.id)]
        assert item["status"] == "succeeded"
        assert (item["sku"], item["prompt_name"], item["variant"]) == (
            job.sku,
            job.prompt_name,
            job.variant,
        )
        assert item["seed"] == job.params["seed"]
        assert item["path"] == f"{job.sku}/{job.prompt_name}/{job.variant}.png"
        # The output URL serves the image without the API key.
        assert httpx.get(item["output_url"], timeout=10).content[:4] == b"\x89PNG"
    failed = items[str(jobs[7].id)]
    assert failed["status"] == "failed" and "simulated" in failed["error"]
    assert failed["output_url"] is None and failed["path"] is None

    as_csv = client.get(
        f"/v1/batches/{batch_id}/manifest", params={"format": "csv"}, headers=auth(key)
    )
    assert as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert {r["job_id"] for r in rows} == set(items)
    for row in rows:
        item = items[row["job_id"]]
        assert row["sku"] == item["sku"] and int(row["seed"]) == item["seed"]
        assert row["status"] == item["status"] and row["path"] == (item["path"] or "")


def test_manifest_csv_neutralises_formula_cells_and_json_stays_exact(
    client, key, session_factory, storage
):
    """OWASP CSV injection: a cell a spreadsheet would run (= + - @ tab CR) gets a leading
    single quote in the CSV; the JSON manifest keeps every value as stored."""
    skus = ["=1+2", "@SUM(A1)", "-lead", "+plus", "plain"]
    images = [
        {"image": data_url(png_bytes(color=(i * 40, 9, 9))), "sku": s} for i, s in enumerate(skus)
    ]
    batch_id = submit(
        client, key, images=images, prompts=[{"name": "p", "prompt": "x"}], variants=1
    )
    jobs = {j.sku: j for j in batch_jobs(session_factory, batch_id)}
    finish_jobs(session_factory, storage, [jobs["=1+2"].id], "succeeded")
    finish_jobs(session_factory, storage, [jobs["plain"].id], "failed")
    with session_factory() as s:
        s.execute(update(Job).where(Job.id == jobs["plain"].id).values(error="\t=cmd()"))
        s.commit()

    url = f"/v1/batches/{batch_id}/manifest"
    items = {i["sku"]: i for i in client.get(url, headers=auth(key)).json()["items"]}
    assert set(items) == set(skus), "JSON: the names exactly as given"
    assert items["=1+2"]["path"] == "=1+2/p/1.png" and items["plain"]["error"] == "\t=cmd()"
    text = client.get(url, params={"format": "csv"}, headers=auth(key)).text
    rows = {r["job_id"]: r for r in csv.DictReader(io.StringIO(text))}
    by_sku = {items[s]["job_id"]: s for s in skus}
    for job_id, row in rows.items():
        sku = by_sku[job_id]
        expected = sku if sku == "plain" else "'" + sku
        assert row["sku"] == expected, row
    formula = rows[items["=1+2"]["job_id"]]
    assert formula["path"] == "'=1+2/p/1.png"
    assert formula["output_url"].startswith("http") and formula["status"] == "succeeded"
    assert rows[items["plain"]["job_id"]]["error"] == "'\t=cmd()"
    for row in rows.values():
        assert not any(cell[:1] in "=+-@\t\r" for cell in row.values() if cell), row


def test_archive_holds_every_succeeded_output_by_sku_prompt_variant(
    client, key, session_factory, storage
):
    batch_id = submit(client, key)
    jobs = batch_jobs(session_factory, batch_id)
    finish_jobs(session_factory, storage, [j.id for j in jobs[:9]], "succeeded")
    finish_jobs(session_factory, storage, [jobs[9].id], "failed")

    response = client.get(f"/v1/batches/{batch_id}/archive", headers=auth(key))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    assert f"batch-{batch_id}.zip" in response.headers["content-disposition"]
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert archive.testzip() is None
    jobs = batch_jobs(session_factory, batch_id)  # reloaded: now with their outputs
    expected = {f"{j.sku}/{j.prompt_name}/{j.variant}.png": j for j in jobs if j.outputs}
    assert len(expected) == 9
    assert set(archive.namelist()) == set(expected)
    for name, job in expected.items():
        assert archive.read(name) == storage.get(job.outputs[0]["key"])
        assert Image.open(io.BytesIO(archive.read(name))).size == (64, 64)


def test_preset_outputs_sit_beside_the_render_and_each_has_its_manifest_row(
    client, key, session_factory, storage
):
    batch_id = submit(client, key, images=batch_body()["images"][:1], prompts=["p"], variants=1)
    (job,) = batch_jobs(session_factory, batch_id)
    finish_jobs(session_factory, storage, [job.id], "succeeded")
    (job,) = batch_jobs(session_factory, batch_id)
    outputs = [*job.outputs]
    # "con" is a slug and a Windows device name (CON.jpg too): it must not name a file.
    for preset, ext in (("amazon-main", "jpg"), ("web-hero", "webp"), ("con", "jpg")):
        key_ = f"outputs/{job.team_id}/{job.id}/0-{preset}.{ext}"
        storage.put(key_, preset.encode(), "image/jpeg")
        outputs.append(
            {"key": key_, "width": 8, "height": 8, "content_type": "x", "preset": preset}
        )
    with session_factory() as s:
        s.execute(update(Job).where(Job.id == job.id).values(outputs=outputs))
        s.commit()

    response = client.get(f"/v1/batches/{batch_id}/archive", headers=auth(key))
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert sorted(archive.namelist()) == [
        "SKU-RED/p/1.png",
        "SKU-RED/p/1/amazon-main.jpg",
        "SKU-RED/p/1/preset-con.jpg",
        "SKU-RED/p/1/web-hero.webp",
    ]
    assert archive.read("SKU-RED/p/1/web-hero.webp") == b"web-hero"
    url = f"/v1/batches/{batch_id}/manifest"
    items = client.get(url, headers=auth(key)).json()["items"]
    rows = list(
        csv.DictReader(
            io.StringIO(client.get(url, params={"format": "csv"}, headers=auth(key)).text)
        )
    )
    for listed in (items, rows):
        assert [(i["preset"] or None, i["path"]) for i in listed] == [
            (None, "SKU-RED/p/1.png"),
            ("amazon-main", "SKU-RED/p/1/amazon-main.jpg"),
            ("web-hero", "SKU-RED/p/1/web-hero.webp"),
            ("con", "SKU-RED/p/1/preset-con.jpg"),
        ]
    assert httpx.get(items[2]["output_url"], timeout=10).content == b"web-hero"
    assert {i["job_id"] for i in items} == {str(job.id)} and items[3]["seed"] == items[0]["seed"]


class CountingStorage:
    """Serves made-up outputs and records when each was fetched."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.gets: list[str] = []

    def get(self, key: str) -> bytes:
        self.gets.append(key)
        if key == "missing":
            from shared.errors import StorageError

            raise StorageError("no object 'missing'")
        return key.encode().ljust(self.size, b"x")


def test_archive_streams_one_output_at_a_time():
    """Each output is fetched when its turn comes and leaves as its own chunk: memory holds
    one output, whatever the batch size."""
    storage = CountingStorage(size=200_000)
    entries = [
        ArchiveEntry(f"sku-{i}/winter/1.png", f"k{i}", datetime(2026, 1, 1)) for i in range(50)
    ]
    entries.insert(10, ArchiveEntry("sku-x/winter/1.png", "missing", None))
    stream = iter_archive(iter(entries), storage)
    chunks: list[bytes] = []
    for chunk in stream:
        chunks.append(chunk)
        # Each chunk leaves right after its own fetch: never a fetch ahead of the stream
        # (the +1 is the one unreadable output, which is fetched but sends nothing).
        assert len(storage.gets) <= len(chunks) + 1
        assert len(chunk) < 2 * storage.size
    archive = zipfile.ZipFile(io.BytesIO(b"".join(chunks)))
    assert len(archive.namelist()) == 51
    assert archive.read("sku-7/winter/1.png") == storage.get("k7")
    assert b"sku-x/winter/1.png" in archive.read("MISSING.txt")


# --- presigned uploads ---------------------------------------------------------------------


def test_presigned_put_upload_then_complete_then_use_in_a_batch(client, key, new_key):
    presigned = client.post("/v1/uploads/presign", json={"filename": "boot.png"}, headers=auth(key))
    assert presigned.status_code == 201, presigned.text
    upload = presigned.json()
    assert upload["method"] == "PUT"
    # Completing before the PUT: nothing there yet.
    early = client.post(f"/v1/uploads/{upload['id']}/complete", headers=auth(key))
    assert early.status_code == 404

    put = httpx.put(upload["url"], content=png_bytes(120, 90), timeout=10)
    assert put.status_code == 200, put.text
    done = client.post(f"/v1/uploads/{upload['id']}/complete", headers=auth(key))
    assert done.status_code == 201, done.text
    assert done.json() == {
        "id": upload["id"],
        "filename": "boot.png",
        "content_type": "image/png",
        "width": 120,
        "height": 90,
        "size_bytes": len(png_bytes(120, 90)),
    }
    # Completing twice answers the same upload; another team cannot complete or use it.
    again = client.post(f"/v1/uploads/{upload['id']}/complete", headers=auth(key))
    assert again.json() == done.json()
    other = client.post(f"/v1/uploads/{upload['id']}/complete", headers=auth(new_key()))
    assert other.status_code == 404, other.text
    bad = client.post(
        "/v1/batches", json=batch_body(images=[upload["id"]]), headers=auth(new_key())
    )
    assert bad.status_code == 404

    batch = client.post(
        "/v1/batches", json=batch_body(images=[upload["id"]], variants=1), headers=auth(key)
    )
    assert batch.status_code == 202 and batch.json()["job_count"] == 3


def test_presigned_upload_of_a_non_image_is_refused_and_removed(client, key, s3_client):
    upload = client.post("/v1/uploads/presign", json={}, headers=auth(key)).json()
    assert httpx.put(upload["url"], content=b"MZ not an image", timeout=10).status_code == 200
    response = client.post(f"/v1/uploads/{upload['id']}/complete", headers=auth(key))
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "file"
    listing = s3_client.list_objects_v2(Bucket="imgfarm-test", Prefix="objects/uploads/")
    assert not any(upload["id"] in o["Key"] for o in listing.get("Contents", []))
    # Nothing usable was created.
    bad = client.post("/v1/batches", json=batch_body(images=[upload["id"]]), headers=auth(key))
    assert bad.status_code == 404


def test_presigned_upload_over_the_size_limit_is_413(settings, key, tmp_path):
    small = settings.model_copy(update={"max_upload_bytes": 1000})
    from fastapi.testclient import TestClient

    with TestClient(create_app(small)) as client:
        upload = client.post("/v1/uploads/presign", json={}, headers=auth(key)).json()
        httpx.put(upload["url"], content=png_bytes(300, 300), timeout=10)
        response = client.post(f"/v1/uploads/{upload['id']}/complete", headers=auth(key))
    assert response.status_code == 413 and "1000 bytes" in response.json()["detail"]


def test_presign_with_local_storage_is_a_clear_400(settings, key, tmp_path):
    from fastapi.testclient import TestClient

    local = LocalStorage(tmp_path / "objects", settings.public_url, settings.secret_key)
    with TestClient(create_app(settings, storage=local)) as client:
        response = client.post("/v1/uploads/presign", json={}, headers=auth(key))
    assert response.status_code == 400
    assert "S3" in response.json()["detail"] and "POST /v1/uploads" in response.json()["detail"]


# --- rendered for real: dispatcher and tiny worker processes --------------------------------


def output_objects(s3_client, job: Job) -> list[str]:
    prefix = f"objects/outputs/{job.team_id}/{job.id}/"
    listing = s3_client.list_objects_v2(Bucket="imgfarm-test", Prefix=prefix)
    return [o["Key"] for o in listing.get("Contents", [])]


@pytest.mark.integration
def test_real_renders_cancel_never_renders_queued_retry_reruns_failed_archive_has_all(
    client, key, session_factory, storage, start_dispatcher, start_worker, s3_client
):
    """One worker start (~10 s) for three behaviours, in phases."""
    mug = [{"image": data_url(png_bytes()), "sku": "mug"}]
    boot = [{"image": data_url(png_bytes(80, 80)), "sku": "boot"}]

    # 1. A batch handed to Redis while no worker runs, then canceled.
    start_dispatcher()
    doomed = submit(client, key, images=mug, prompts=["on snow"], variants=6)
    wait_for(
        lambda: any(j.enqueued_at for j in batch_jobs(session_factory, doomed)),
        30,
        "the dispatcher handing the batch to Redis",
    )
    handed_over = [j.id for j in batch_jobs(session_factory, doomed) if j.enqueued_at]
    assert client.post(f"/v1/batches/{doomed}/cancel", headers=auth(key)).json()["canceled"] == 6

    # 2. A batch of 4 of which 2 have failed (played by the test) before any render.
    batch_id = submit(client, key, images=boot, prompts=["on snow", "on sand"], variants=2)
    first_jobs = batch_jobs(session_factory, batch_id)
    failed_ids = {first_jobs[0].id, first_jobs[3].id}
    finish_jobs(session_factory, storage, list(failed_ids), "failed")

    def rendered() -> dict[uuid.UUID, Job]:
        return {j.id: j for j in batch_jobs(session_factory, batch_id)}

    start_worker("tiny")
    # One worker reads its queue in order: once the later batch's jobs are done, every
    # message of the canceled batch was delivered before them (and skipped).
    wait_for(
        lambda: sum(j.status == "succeeded" for j in rendered().values()) == 2, 120, "2 renders"
    )
    assert handed_over, "some canceled jobs were already in Redis"
    for job in batch_jobs(session_factory, doomed):
        assert (job.status, job.outputs, job.attempts) == ("canceled", None, 0)
        assert output_objects(s3_client, job) == []
    assert client.get(f"/v1/batches/{doomed}", headers=auth(key)).json()["status"] == "canceled"

    # 3. Retry re-runs the failed jobs only.
    before = rendered()
    assert {i for i, j in before.items() if j.status == "failed"} == failed_ids
    assert client.post(f"/v1/batches/{batch_id}/retry", headers=auth(key)).json()["retried"] == 2
    wait_for(
        lambda: all(j.status == "succeeded" for j in rendered().values()), 120, "the retried jobs"
    )
    after = rendered()
    for job_id, job in after.items():
        assert job.attempts == 1 and len(output_objects(s3_client, job)) == 1
        if job_id not in failed_ids:
            assert job.finished_at == before[job_id].finished_at, "succeeded jobs did not re-run"

    # 4. Manifest and archive list every rendered output.
    items = client.get(f"/v1/batches/{batch_id}/manifest", headers=auth(key)).json()["items"]
    assert {i["job_id"] for i in items} == {str(i) for i in after}
    assert all(i["status"] == "succeeded" and i["output_url"] for i in items)
    archive = zipfile.ZipFile(
        io.BytesIO(client.get(f"/v1/batches/{batch_id}/archive", headers=auth(key)).content)
    )
    assert sorted(archive.namelist()) == sorted(i["path"] for i in items)
    assert sorted(archive.namelist()) == [
        "boot/on-sand/1.png",
        "boot/on-sand/2.png",
        "boot/on-snow/1.png",
        "boot/on-snow/2.png",
    ]
    for name in archive.namelist():
        assert Image.open(io.BytesIO(archive.read(name))).size == (64, 64)
    batch = client.get(f"/v1/batches/{batch_id}", headers=auth(key)).json()
    assert batch["status"] == "succeeded" and batch["progress"] == 1
    assert batch["jobs_per_second"] > 0

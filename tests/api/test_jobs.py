"""``/v1/jobs`` over the real app on PostgreSQL, Redis and the S3 endpoint: auth, isolation,
and a 4xx naming the field for every bad input (with nothing written)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.app import create_app
from shared.models import Job, Worker, utcnow
from shared.workers import ModelWorkers
from tests.factories import batch_body, bomb_png, data_url, job_body, png_bytes


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def job_count(session_factory) -> int:
    with session_factory() as s:
        return s.scalar(select(func.count()).select_from(Job))


def test_submit_answers_202_and_stores_resolved_params(client, new_key, session_factory):
    key = new_key()
    response = client.post(
        "/v1/jobs", json=job_body(seed=0, output_format="webp"), headers=auth(key)
    )
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"
    job = client.get(f"/v1/jobs/{response.json()['id']}", headers=auth(key)).json()
    # seed=0 is a seed, not "random"; defaults come from the tiny model.
    assert job["params"] == {
        "strength": 0.75,
        "steps": 4,
        "guidance_scale": 7.5,
        "seed": 0,
        "width": 64,
        "height": 64,
        "output_format": "webp",
        "resize_mode": "crop",
        "cutout": None,
        "upscale": None,
        "presets": [],
        "adapters": [],
    }
    assert job["outputs"] == [] and job["attempts"] == 0


def test_missing_seed_is_drawn_and_recorded(client, new_key):
    key = new_key()
    body = job_body()
    del body["seed"]
    job_id = client.post("/v1/jobs", json=body, headers=auth(key)).json()["id"]
    seed = client.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()["params"]["seed"]
    assert isinstance(seed, int) and seed >= 0


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer imf_nope"}, {"Authorization": "Basic eDp5"}]
)
def test_routes_need_a_valid_key(client, headers):
    for method, path in [
        ("post", "/v1/jobs"),
        ("get", f"/v1/jobs/{uuid.uuid4()}"),
        ("get", "/v1/models"),
    ]:
        response = getattr(client, method)(
            path, headers=headers, **({"json": job_body()} if method == "post" else {})
        )
        assert response.status_code == 401, (path, response.text)


def test_health_needs_no_key(client):
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "storage": "ok"}


def test_other_teams_job_is_404(client, new_key):
    mine, theirs = new_key(), new_key()
    job_id = client.post("/v1/jobs", json=job_body(), headers=auth(mine)).json()["id"]
    assert client.get(f"/v1/jobs/{job_id}", headers=auth(mine)).status_code == 200
    response = client.get(f"/v1/jobs/{job_id}", headers=auth(theirs))
    assert response.status_code == 404
    assert client.get(f"/v1/jobs/{uuid.uuid4()}", headers=auth(mine)).status_code == 404


@pytest.mark.parametrize(
    "overrides,status,field",
    [
        ({"model": "sdxl-nope"}, 422, "model"),
        ({"strength": 0}, 422, "strength"),
        ({"strength": 1.5}, 422, "strength"),
        ({"steps": 0}, 422, "steps"),
        ({"steps": 500}, 422, "steps"),
        ({"steps": 1, "strength": 0.5}, 422, "strength"),
        ({"width": 60}, 422, "width"),
        ({"height": 4096}, 422, "height"),
        ({"seed": -1}, 422, "seed"),
        ({"guidance_scale": -2}, 422, "guidance_scale"),
        ({"output_format": "gif"}, 422, "output_format"),
        ({"prompt": ""}, 422, "prompt"),
        ({"image": data_url(b"this is not an image")}, 422, "image"),
        ({"image": "data:image/png;base64,%%%"}, 422, "image"),
        ({"image": data_url(bomb_png())}, 413, "image"),
        ({"image": "not-a-reference"}, 422, "image"),
        ({"image": str(uuid.uuid4())}, 404, "image"),
        ({"image": "http://169.254.169.254/latest/meta-data/"}, 422, "image"),
        ({"image": "http://127.0.0.1:5432/x.png"}, 422, "image"),
        ({"metadata": {"x": "y" * 10_000}}, 422, "metadata"),
        ({"colour": "red"}, 422, "colour"),
    ],
)
def test_bad_input_is_4xx_naming_the_field_and_writes_nothing(
    client, new_key, session_factory, overrides, status, field
):
    key = new_key()
    before = job_count(session_factory)
    response = client.post("/v1/jobs", json=job_body(**overrides), headers=auth(key))
    assert response.status_code == status, response.text
    body = response.json()
    assert any(e["field"] == field for e in body["errors"]), body
    assert field in body["detail"]
    assert job_count(session_factory) == before


def test_malformed_json_is_422_not_500(client, new_key):
    response = client.post(
        "/v1/jobs",
        content=b"{not json",
        headers={**auth(new_key()), "Content-Type": "application/json"},
    )
    assert response.status_code == 422


def test_upload_then_reference_by_id(client, new_key):
    key = new_key()
    files = [("files", ("shoe.png", png_bytes(120, 90), "image/png"))]
    response = client.post("/v1/uploads", files=files, headers=auth(key))
    assert response.status_code == 201, response.text
    upload = response.json()["uploads"][0]
    assert (upload["width"], upload["height"], upload["filename"]) == (120, 90, "shoe.png")
    submit = client.post("/v1/jobs", json=job_body(image=upload["id"]), headers=auth(key))
    assert submit.status_code == 202
    # Another team cannot use this upload id.
    other = client.post("/v1/jobs", json=job_body(image=upload["id"]), headers=auth(new_key()))
    assert other.status_code == 404 and other.json()["errors"][0]["field"] == "image"


def test_upload_refuses_non_image_naming_the_file(client, new_key):
    files = [
        ("files", ("ok.png", png_bytes(), "image/png")),
        ("files", ("evil.png", b"MZ\x90\x00 not a png", "image/png")),
    ]
    response = client.post("/v1/uploads", files=files, headers=auth(new_key()))
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "files[1]"


def test_models_lists_tiny_with_defaults(client, new_key):
    models = client.get("/v1/models", headers=auth(new_key())).json()["models"]
    tiny = next(m for m in models if m["alias"] == "tiny")
    assert tiny["kind"] == "img2img" and tiny["defaults"]["steps"] == 4


def test_openapi_is_served(client):
    spec = client.get("/openapi.json").json()
    assert "/v1/jobs" in spec["paths"] and "/v1/jobs/{job_id}" in spec["paths"]


def test_a_job_no_worker_can_take_says_so_until_one_is_online(private_db):
    """202, GET /v1/jobs/{id}, the job list and GET /v1/models all name the missing worker
    (and when one was last seen); a fresh heartbeat clears it."""
    # A database of its own: the workers table is farm-wide, other tests' workers beat in it.
    session_factory, key = private_db.session_factory, private_db.new_key()
    model, stale = "tiny-controlnet", utcnow() - timedelta(hours=1)
    with session_factory() as s:
        s.add(Worker(name="h11-gone@test", model=model, device="cpu", last_seen_at=stale))
        s.commit()
    with TestClient(create_app(private_db.settings)) as client:
        accepted = client.post("/v1/jobs", json=job_body(model=model), headers=auth(key))
        assert accepted.status_code == 202, accepted.text
        since = stale.strftime("%Y-%m-%dT%H:%M:%SZ")
        (warning,) = accepted.json()["warnings"]
        assert f"no worker online for model '{model}' since {since}" in warning
        job_id = accepted.json()["id"]
        assert client.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()["warnings"] == [warning]
        batch = client.post("/v1/batches", json=batch_body(model=model), headers=auth(key))
        assert batch.status_code == 202, batch.text
        assert batch.json()["warnings"] == [warning], "a batch's 202 says so too"
        listed = client.get("/v1/jobs", params={"model": model}, headers=auth(key)).json()
        assert listed["jobs"][0]["warnings"] == [warning]
        models = client.get("/v1/models", headers=auth(key)).json()["models"]
        (public,) = [m for m in models if m["alias"] == model]
        assert public["warning"] == warning and public["workers"] == []
        assert public["last_seen_at"].startswith(since[:-1])
        with session_factory() as s:
            s.add(Worker(name="h11-fresh@test", model=model, device="cpu", last_seen_at=utcnow()))
            s.commit()
        assert client.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()["warnings"] == []
        models = client.get("/v1/models", headers=auth(key)).json()["models"]
        (public,) = [m for m in models if m["alias"] == model]
        assert public["warning"] is None and public["workers"] == ["h11-fresh@test"]


def test_a_model_never_served_says_none_ever_started():
    assert "none has ever started" in (ModelWorkers("tiny").warning or "")
    assert ModelWorkers("tiny", ["w@h"], utcnow()).warning is None


def test_durations_come_from_the_timestamps(client, new_key, session_factory):
    key = new_key()
    job_id = client.post("/v1/jobs", json=job_body(), headers=auth(key)).json()["id"]
    assert client.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()["durations"] == {
        "queue_wait_seconds": None,
        "render_seconds": None,
        "total_seconds": None,
    }
    with session_factory() as s:
        job = s.get(Job, uuid.UUID(job_id))
        created = job.created_at
        job.started_at = created + timedelta(seconds=2.5)
        job.finished_at = created + timedelta(seconds=4)
        s.commit()
    assert client.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()["durations"] == {
        "queue_wait_seconds": 2.5,
        "render_seconds": 1.5,
        "total_seconds": 4.0,
    }

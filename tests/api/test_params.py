"""Kind-specific request fields over the real app: ``mask``, ``resize_mode``, sizes, and what
``GET /v1/models`` says about kinds, limits and online workers."""

from __future__ import annotations

import io
import uuid
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw
from sqlalchemy import func, select, update

from api.app import create_app
from shared.models import Job, Worker, utcnow
from shared.storage import storage_from_settings
from tests.factories import data_url, job_body, png_bytes


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def mask_png(width: int = 96, height: int = 80, white: bool = True) -> bytes:
    """Black (keep) with, unless ``white`` is False, a white square to repaint."""
    mask = Image.new("L", (width, height), 0)
    if white:
        ImageDraw.Draw(mask).rectangle((10, 10, 40, 40), fill=255)
    return png(mask)


def cutout_png(width: int = 96, height: int = 80) -> bytes:
    img = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    ImageDraw.Draw(img).ellipse((10, 10, width - 10, height - 10), fill=(200, 40, 40, 255))
    return png(img)


def inpaint_body(**overrides: object) -> dict[str, object]:
    """tiny-inpaint, a 96x80 source (tests.factories.png_bytes) and a mask of its size."""
    return job_body(model="tiny-inpaint", mask=data_url(mask_png()), **overrides)


@pytest.fixture(autouse=True)
def leave_no_work_behind(session_factory):
    """Cancel what a test left queued: no worker serves these models in this module."""
    with session_factory() as s:
        started = s.scalar(select(func.now()))
    yield
    with session_factory() as s:
        s.execute(
            update(Job)
            .where(Job.created_at >= started, Job.status == "queued")
            .values(status="canceled", finished_at=func.now())
        )
        s.commit()


def job_row(session_factory, job_id: str) -> Job:
    with session_factory() as s:
        job = s.get(Job, uuid.UUID(job_id))
        assert job is not None
        return job


def test_inpaint_job_stores_its_mask_like_its_source(client, new_key, session_factory, settings):
    key = new_key()
    response = client.post("/v1/jobs", json=inpaint_body(resize_mode="pad"), headers=auth(key))
    assert response.status_code == 202, response.text
    job = job_row(session_factory, response.json()["id"])
    assert job.mask_key is not None and job.mask_key.startswith(f"sources/{job.team_id}/")
    assert storage_from_settings(settings).get(job.mask_key) == mask_png()
    assert job.params["resize_mode"] == "pad"
    public = client.get(f"/v1/jobs/{job.id}", headers=auth(key)).json()
    assert public["params"]["resize_mode"] == "pad"


def test_inpaint_mask_may_be_an_upload(client, new_key, session_factory):
    key = new_key()
    files = [("files", ("mask.png", mask_png(), "image/png"))]
    upload = client.post("/v1/uploads", files=files, headers=auth(key)).json()["uploads"][0]
    response = client.post(
        "/v1/jobs", json=job_body(model="tiny-inpaint", mask=upload["id"]), headers=auth(key)
    )
    assert response.status_code == 202, response.text
    assert job_row(session_factory, response.json()["id"]).mask_key is not None


def test_inpaint_without_mask_takes_a_transparent_source(client, new_key, session_factory):
    body = job_body(model="tiny-inpaint", image=data_url(cutout_png()))
    response = client.post("/v1/jobs", json=body, headers=auth(new_key()))
    assert response.status_code == 202, response.text
    assert job_row(session_factory, response.json()["id"]).mask_key is None


def test_echo_ignores_denoising_knobs(client, new_key):
    """steps x strength < 1 is refused for denoising models; echo never denoises."""
    body = job_body(model="echo", steps=1, strength=0.5, width=96, height=64)
    response = client.post("/v1/jobs", json=body, headers=auth(new_key()))
    assert response.status_code == 202, response.text


@pytest.mark.parametrize(
    "overrides,status,field,says",
    [
        ({"resize_mode": "stretch"}, 422, "resize_mode", "fit"),
        ({"model": "tiny-inpaint", "width": 60}, 422, "width", "multiple of 8"),
        ({"model": "tiny-inpaint", "height": 512}, 422, "height", "between 32 and 256"),
        ({"model": "echo", "width": 4096}, 422, "width", "between 8 and 2048"),
        ({"mask": data_url(mask_png())}, 422, "mask", "only inpaint models"),
        ({"model": "tiny-inpaint"}, 422, "mask", "give a mask"),
        ({"model": "tiny-inpaint", "mask": data_url(mask_png(64, 64))}, 422, "mask", "96x80"),
        ({"model": "tiny-inpaint", "mask": data_url(mask_png(white=False))}, 422, "mask", "black"),
        ({"model": "tiny-inpaint", "mask": data_url(b"not an image")}, 422, "mask", "decodable"),
        ({"model": "tiny-inpaint", "mask": "not-a-reference"}, 422, "mask", "upload id"),
        ({"model": "tiny-inpaint", "mask": str(uuid.uuid4())}, 404, "mask", "no upload"),
        ({"model": "tiny-inpaint", "mask": ""}, 422, "mask", "at least 1"),
    ],
)
def test_bad_kind_fields_are_4xx_naming_the_field(
    client, new_key, session_factory, overrides, status, field, says
):
    with session_factory() as s:
        before = s.scalar(select(func.count()).select_from(Job))
    response = client.post("/v1/jobs", json=job_body(**overrides), headers=auth(new_key()))
    assert response.status_code == status, response.text
    body = response.json()
    assert [e["field"] for e in body["errors"]] == [field], body
    assert says in body["detail"], body["detail"]
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == before


def test_models_show_kinds_limits_and_online_workers(private_db):
    # A database of its own: real workers of other tests beat in the session's one.
    now = utcnow()
    fake = {
        "echo-fresh@test": dict(last_seen_at=now, stopped_at=None),
        "echo-silent@test": dict(last_seen_at=now - timedelta(hours=1), stopped_at=None),
        "echo-stopped@test": dict(last_seen_at=now, stopped_at=now),
    }
    with private_db.session_factory() as s:
        for name, times in fake.items():
            s.add(Worker(name=name, model="echo", device="cpu", started_at=now, **times))
        s.commit()
    with TestClient(create_app(private_db.settings)) as client:
        models = client.get("/v1/models", headers=auth(private_db.new_key())).json()["models"]
    by_alias = {m["alias"]: m for m in models}
    assert {
        a: by_alias[a]["kind"] for a in ("tiny", "tiny-inpaint", "tiny-controlnet", "echo")
    } == {
        "tiny": "img2img",
        "tiny-inpaint": "inpaint",
        "tiny-controlnet": "controlnet-canny",
        "echo": "echo",
    }
    echo = by_alias["echo"]
    assert echo["workers"] == ["echo-fresh@test"], "only fresh, not stopped heartbeats count"
    assert echo["limits"]["resize_modes"] == ["fit", "crop", "pad"]
    assert by_alias["tiny-inpaint"]["limits"]["takes_mask"] is True
    assert by_alias["tiny"]["defaults"]["scheduler"] is None
    assert by_alias["tiny"]["limits"]["min_size"] == 32


def test_png_bytes_is_the_size_the_mask_cases_assume():
    assert Image.open(io.BytesIO(png_bytes())).size == (96, 80)

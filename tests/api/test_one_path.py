"""A batch's jobs are checked by the job path itself: every value either route refuses, the
other refuses with the same status, the same message and the same field (a batch spells an
image's fields with their place, ``images[1].mask``); what one accepts, the other stores
the same way.
"""

from __future__ import annotations

import io
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from PIL import Image, ImageDraw
from sqlalchemy import func, select, update

from shared.models import Batch, Job
from tests.factories import bomb_png, data_url, png_bytes

UNKNOWN_UPLOAD = str(uuid.UUID(int=0x13))  # fixed: the 404 message quotes it


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def mask_png(width: int = 96, height: int = 80, white: bool = True) -> bytes:
    """Black (keep) with, unless ``white`` is False, a white square to repaint."""
    mask = Image.new("L", (width, height), 0)
    if white:
        ImageDraw.Draw(mask).rectangle((10, 10, 40, 40), fill=255)
    return _png(mask)


SOURCE = data_url(png_bytes())  # 96x80, opaque
MASK = data_url(mask_png())


@dataclass(frozen=True)
class Bad:
    """One invalid request: top-level ``knobs`` (both routes take them as they are) and the
    job's own ``image``/``mask`` (a batch's second image, after a valid one)."""

    id: str
    status: int
    field: str  # as POST /v1/jobs names it
    model: str = "tiny"
    knobs: dict[str, Any] = field(default_factory=dict)
    image: str = SOURCE
    mask: str | None = None


INPAINT = "tiny-inpaint"
CASES = [
    Bad("unknown-model", 422, "model", model="sdxl-nope"),
    Bad("strength-zero", 422, "strength", knobs={"strength": 0}),
    Bad("strength-over-one", 422, "strength", knobs={"strength": 1.5}),
    Bad("no-denoising-step", 422, "strength", knobs={"steps": 1, "strength": 0.5}),
    Bad("steps-zero", 422, "steps", knobs={"steps": 0}),
    Bad("steps-over-model-max", 422, "steps", knobs={"steps": 500}),
    Bad("width-not-multiple-of-8", 422, "width", knobs={"width": 60}),
    Bad("height-over-model-max", 422, "height", knobs={"height": 4096}),
    Bad("inpaint-height-over-its-max", 422, "height", model=INPAINT, knobs={"height": 512}),
    Bad("seed-negative", 422, "seed", knobs={"seed": -1}),
    Bad("guidance-negative", 422, "guidance_scale", knobs={"guidance_scale": -2}),
    Bad("output-format-gif", 422, "output_format", knobs={"output_format": "gif"}),
    Bad("resize-mode-stretch", 422, "resize_mode", knobs={"resize_mode": "stretch"}),
    Bad("negative-prompt-too-long", 422, "negative_prompt", knobs={"negative_prompt": "x" * 2001}),
    Bad("metadata-too-big", 422, "metadata", knobs={"metadata": {"x": "y" * 10_000}}),
    Bad("webhook-private", 422, "webhook_url", knobs={"webhook_url": "http://127.0.0.1/h"}),
    Bad("image-not-an-image", 422, "image", image=data_url(b"this is not an image")),
    Bad("image-bomb", 413, "image", image=data_url(bomb_png())),
    Bad("image-not-a-reference", 422, "image", image="not-a-reference"),
    Bad("image-unknown-upload", 404, "image", image=UNKNOWN_UPLOAD),
    Bad("image-metadata-address", 422, "image", image="http://169.254.169.254/latest/"),
    Bad("mask-for-img2img", 422, "mask", mask=MASK),
    Bad("inpaint-opaque-without-mask", 422, "mask", model=INPAINT),
    Bad("inpaint-mask-wrong-size", 422, "mask", model=INPAINT, mask=data_url(mask_png(64, 64))),
    Bad("inpaint-mask-all-black", 422, "mask", model=INPAINT, mask=data_url(mask_png(white=False))),
    Bad("inpaint-mask-not-an-image", 422, "mask", model=INPAINT, mask=data_url(b"not an image")),
    Bad("inpaint-mask-not-a-reference", 422, "mask", model=INPAINT, mask="not-a-reference"),
    Bad("inpaint-mask-unknown-upload", 404, "mask", model=INPAINT, mask=UNKNOWN_UPLOAD),
    Bad("inpaint-mask-empty", 422, "mask", model=INPAINT, mask=""),
]


def job_request(case: Bad) -> dict[str, Any]:
    body = {"model": case.model, "prompt": "a shoe", "image": case.image, **case.knobs}
    return body | ({} if case.mask is None else {"mask": case.mask})


def batch_request(case: Bad) -> dict[str, Any]:
    valid = {"image": SOURCE, **({"mask": MASK} if case.model == INPAINT else {})}
    own = {"image": case.image, **({} if case.mask is None else {"mask": case.mask})}
    return {"model": case.model, "images": [valid, own], "prompts": ["a shoe"], **case.knobs}


def unprefixed(name: str) -> str:
    # A batch image's fields are images[1].mask where the job's is mask.
    return re.sub(r"^images\[1\]\.", "", name)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def written(session_factory) -> tuple[int, int]:
    with session_factory() as s:
        return tuple(s.scalar(select(func.count()).select_from(t)) for t in (Job, Batch))


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


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_job_and_batch_refuse_the_same_value_the_same_way(client, new_key, session_factory, case):
    headers = auth(new_key())
    before = written(session_factory)
    answers = {
        "jobs": client.post("/v1/jobs", json=job_request(case), headers=headers),
        "batches": client.post("/v1/batches", json=batch_request(case), headers=headers),
    }
    refusals = {}
    for route, response in answers.items():
        assert response.status_code == case.status, (route, response.text)
        (error,) = response.json()["errors"]
        refusals[route] = (unprefixed(error["field"]), error["message"])
    assert refusals["jobs"] == refusals["batches"]
    assert refusals["jobs"][0] == case.field
    if case.field in ("image", "mask"):
        # the batch names the image at fault, not just the kind of field
        batch_field = answers["batches"].json()["errors"][0]["field"]
        assert batch_field.startswith("images[1]."), batch_field
    assert written(session_factory) == before


def job_rows(session_factory, **where: Any) -> list[Job]:
    with session_factory() as s:
        query = select(Job).filter_by(**where).order_by(Job.sku, Job.prompt_name)
        return list(s.scalars(query))


def test_every_knob_a_job_takes_a_batch_takes_and_stores_alike(client, new_key, session_factory):
    """resize_mode and a mask per image reach a batch's jobs as they reach a single job."""
    headers = auth(new_key())
    knobs = {
        "strength": 0.5,
        "steps": 6,
        "guidance_scale": 3.0,
        "width": 96,
        "height": 80,
        "output_format": "webp",
        "resize_mode": "pad",
        "negative_prompt": "blurry",
        "seed": 5,
    }
    job = client.post(
        "/v1/jobs",
        json={"model": INPAINT, "prompt": "a shoe", "image": SOURCE, "mask": MASK, **knobs},
        headers=headers,
    )
    assert job.status_code == 202, job.text
    (single,) = job_rows(session_factory, id=uuid.UUID(job.json()["id"]))
    other_mask = data_url(_png(Image.new("L", (96, 80), 255)))  # repaint it all
    batch = client.post(
        "/v1/batches",
        json={
            "model": INPAINT,
            "images": [
                {"image": SOURCE, "mask": MASK, "sku": "with-mask"},
                {"image": data_url(png_bytes(color=(9, 9, 9))), "mask": other_mask, "sku": "b"},
            ],
            "prompts": ["a shoe"],
            **knobs,
        },
        headers=headers,
    )
    assert batch.status_code == 202, batch.text
    jobs = job_rows(session_factory, batch_id=uuid.UUID(batch.json()["id"]))
    assert [j.sku for j in jobs] == ["b", "with-mask"]

    def without_seed(params: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in params.items() if k != "seed"}

    for j in jobs:
        assert without_seed(j.params) == without_seed(single.params)
        assert j.params["resize_mode"] == "pad" and j.negative_prompt == "blurry"
        assert j.mask_key is not None
    # the same bytes are one stored object, whichever route brought them
    assert jobs[1].mask_key == single.mask_key and jobs[1].source_key == single.source_key
    batch_public = client.get(f"/v1/batches/{batch.json()['id']}", headers=headers).json()
    assert batch_public["params"]["resize_mode"] == "pad"

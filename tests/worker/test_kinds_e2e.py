"""An inpaint job end to end: the api stores source and mask, the dispatcher hands the job to
a real ``imgfarm worker --model tiny-inpaint`` process, and the kept pixels come back exact."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.factories import data_url
from tests.services import wait_for

pytestmark = pytest.mark.integration
FINAL = ("succeeded", "failed", "canceled")


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_inpaint_worker_keeps_masked_pixels_bit_identical(
    client, new_key, start_dispatcher, start_worker
):
    start_dispatcher()
    start_worker("tiny-inpaint")
    headers = {"Authorization": f"Bearer {new_key()}"}
    rng = np.random.default_rng(7)
    source = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 31, 63), fill=255)  # repaint the left half
    ids = []
    for seed in (1, 2):  # two compatible jobs: the dispatcher may batch them
        body = {
            "model": "tiny-inpaint",
            "prompt": "a red sneaker on a snowy porch",
            "image": data_url(png(source)),
            "mask": data_url(png(mask)),
            "seed": seed,
            "steps": 2,
            "strength": 1.0,
        }
        response = client.post("/v1/jobs", json=body, headers=headers)
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])

    def finished() -> list[dict] | None:
        jobs = [client.get(f"/v1/jobs/{i}", headers=headers).json() for i in ids]
        return jobs if all(j["status"] in FINAL for j in jobs) else None

    for job in wait_for(finished, 180, "inpaint jobs to finish", interval=0.2):
        assert job["status"] == "succeeded", job
        response = httpx.get(job["outputs"][0]["url"], timeout=30)
        out = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))
        assert np.array_equal(out[:, 32:], np.asarray(source)[:, 32:]), "kept pixels exact"
        assert job["fidelity"]["kept_pixels_changed"] == 0, job["fidelity"]  # the worker agrees
        assert not np.array_equal(out[:, :32], np.asarray(source)[:, :32]), "left repainted"
        assert response.headers["x-amz-meta-model"] == "tiny-inpaint"

    # The same through a batch: a mask per image, a resize_mode, each kept region exact.
    flipped = mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT)  # repaint the right half
    batch = {
        "model": "tiny-inpaint",
        "images": [
            {"image": data_url(png(source)), "mask": data_url(png(mask)), "sku": "left"},
            {"image": data_url(png(source)), "mask": data_url(png(flipped)), "sku": "right"},
        ],
        "prompts": [{"prompt": "a red sneaker on a snowy porch", "name": "snow"}],
        "steps": 2,
        "strength": 1.0,
        "resize_mode": "fit",
    }
    accepted = client.post("/v1/batches", json=batch, headers=headers)
    assert accepted.status_code == 202, accepted.text
    batch_id = accepted.json()["id"]

    def batch_done() -> list[dict] | None:
        page = client.get(f"/v1/batches/{batch_id}/jobs", headers=headers).json()["jobs"]
        return page if page and all(j["status"] in FINAL for j in page) else None

    kept = {"left": np.s_[:, 32:], "right": np.s_[:, :32]}
    for job in wait_for(batch_done, 180, "the inpaint batch to finish", interval=0.2):
        assert job["status"] == "succeeded", job
        assert job["params"]["resize_mode"] == "fit"
        response = httpx.get(job["outputs"][0]["url"], timeout=30)
        out = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))
        region = kept[job["sku"]]
        assert np.array_equal(out[region], np.asarray(source)[region]), job["sku"]

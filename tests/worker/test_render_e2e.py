"""End to end on real services: ``imgfarm api`` and ``imgfarm worker --model tiny`` processes,
PostgreSQL, Redis and an S3 endpoint over HTTP."""

from __future__ import annotations

import io
import time
import uuid

import httpx
import numpy as np
import pytest
from PIL import Image

from imgfarm.client import Client
from shared.db import session_scope
from shared.teams import create_api_key, ensure_team
from tests.factories import data_url, job_body, png_bytes
from tests.services import launch_api, launch_dispatcher, launch_worker

pytestmark = pytest.mark.integration


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def farm(module_spawn, session_factory):
    """api, dispatcher and a tiny worker, shared by this module's tests: each process costs
    seconds to start, and none of these tests changes them."""
    url = launch_api(module_spawn)
    launch_dispatcher(module_spawn)
    worker = launch_worker(module_spawn, "tiny")
    with session_scope(session_factory) as session:
        key = create_api_key(session, ensure_team(session, f"e2e-{uuid.uuid4().hex[:8]}"))
    with Client(url, key) as client:
        yield client, worker


def test_job_renders_into_the_bucket_at_requested_size(farm, s3_client):
    client, worker = farm
    job_id = client.submit_job(**job_body(width=96, height=64, output_format="jpeg"))["id"]
    job = client.wait(job_id, timeout=120)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 1 and job["worker"].startswith("tiny-")
    assert job["started_at"] and job["finished_at"] >= job["started_at"]
    (output,) = job["outputs"]
    assert (output["width"], output["height"], output["content_type"]) == (96, 64, "image/jpeg")
    # The object is in the bucket under its deterministic key, with provenance metadata.
    listing = s3_client.list_objects_v2(Bucket="imgfarm-test", Prefix="objects/outputs/")
    keys = [o["Key"] for o in listing.get("Contents", [])]
    key = next(k for k in keys if job_id in k)
    assert key.endswith(f"/{job_id}/0.jpg")
    obj = s3_client.get_object(Bucket="imgfarm-test", Key=key)
    assert obj["Metadata"]["seed"] == "7" and obj["Metadata"]["model"] == "tiny"
    img = Image.open(io.BytesIO(obj["Body"].read()))
    assert (img.format, img.size) == ("JPEG", (96, 64))
    # The presigned URL serves the same bytes without the API key.
    downloaded = httpx.get(output["url"], timeout=10)
    assert downloaded.status_code == 200 and Image.open(io.BytesIO(downloaded.content)).size == (
        96,
        64,
    )


def test_same_seed_same_pixels_other_seed_other_pixels(farm):
    """The determinism contract: same params + seed + batch size give identical pixels.
    Jobs are submitted one at a time so each renders alone (batch size 1)."""
    client, _ = farm
    image = data_url(png_bytes(128, 128, (30, 120, 200)))
    outputs = []
    for seed in (1234, 1234, 99):
        job_id = client.submit_job(**job_body(image=image, seed=seed, prompt="a blue mug"))["id"]
        job = client.wait(job_id, timeout=120)
        assert job["status"] == "succeeded", job
        response = httpx.get(job["outputs"][0]["url"])
        assert response.headers["x-amz-meta-batch-size"] == "1"
        outputs.append(pixels(response.content))
    a, b, c = outputs
    assert np.array_equal(a, b), "same params and seed must give identical pixels"
    assert not np.array_equal(a, c), "another seed must give another image"


def test_worker_consumes_only_its_models_queue(farm, settings):
    """A job for another model waits in its own queue; the tiny worker never touches it."""
    from shared.broker import make_celery, send_render

    client, worker = farm
    # Send a task to the queue of a model no worker serves; the tiny worker must ignore it.
    send_render(make_celery(settings), ["00000000-0000-0000-0000-000000000000"], "other-model")
    job_id = client.submit_job(**job_body())["id"]
    assert client.wait(job_id, timeout=120)["status"] == "succeeded"
    time.sleep(0)  # the tiny job went through; now check the stray task was never received
    assert "00000000-0000-0000-0000-000000000000" not in worker.log()

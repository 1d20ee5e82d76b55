"""End to end on real services: ``imgfarm api``, ``imgfarm worker --model tiny`` and
``--model echo`` processes, PostgreSQL, Redis and an S3 endpoint over HTTP."""

from __future__ import annotations

import io
import json
import time
import uuid

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw
from skimage import data
from sqlalchemy import select

from imgfarm.client import Client
from shared.db import session_scope
from shared.models import WebhookDelivery, WebhookEndpoint
from shared.teams import create_api_key, ensure_team
from tests.factories import data_url, job_body, png_bytes
from tests.services import launch_api, launch_dispatcher, launch_worker

# Nothing listens on port 9 (discard): the delivery rows are checked, never delivered.
HOOK = "http://127.0.0.1:9/hook"

pytestmark = pytest.mark.integration


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def team(session_factory) -> tuple[uuid.UUID, str]:
    """This module's team (id, API key), its endpoint subscribed to job.needs_review."""
    with session_scope(session_factory) as session:
        team = ensure_team(session, f"e2e-{uuid.uuid4().hex[:8]}")
        key = create_api_key(session, team)
        session.add(
            WebhookEndpoint(team_id=team.id, url=HOOK, events=["job.needs_review"], secret="s")
        )
        return team.id, key


@pytest.fixture(scope="module")
def api_url(module_spawn) -> str:
    return launch_api(module_spawn)


@pytest.fixture(scope="module")
def farm(module_spawn, api_url, team, signed_team):
    """api, dispatcher, a tiny and an echo worker, shared by this module's tests: each
    process costs seconds to start, and none of these tests changes them."""
    url = api_url
    launch_dispatcher(module_spawn)
    echo = module_spawn("worker", "--model", "echo")  # starts while the tiny one loads
    worker = launch_worker(module_spawn, "tiny", env=signed_team[1])
    echo.wait_log(" ready.", timeout=120)
    with Client(url, team[1]) as client:
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


@pytest.fixture(scope="module")
def signed_team(session_factory, tmp_path_factory) -> tuple[str, dict[str, str]]:
    """A second team, which the operator gave a C2PA certificate: (API key, the worker's
    IMGFARM_C2PA_SIGNERS). It exists before the worker starts, which resolves names at boot."""
    from tests.certificates import make_test_signer

    name = f"e2e-signed-{uuid.uuid4().hex[:8]}"
    with session_scope(session_factory) as session:
        key = create_api_key(session, ensure_team(session, name))
    config = make_test_signer().write(tmp_path_factory.mktemp("c2pa"), name)
    return key, {"IMGFARM_C2PA_SIGNERS": str(config)}


def exiftool_xmp(data: bytes, path) -> dict:
    """exiftool's reading of a file's XMP (a reader we did not write)."""
    import subprocess

    path.write_bytes(data)
    answer = subprocess.run(["exiftool", "-j", "-G1", "-XMP:all", str(path)], capture_output=True)
    (read,) = json.loads(answer.stdout)
    return read


def test_the_certified_team_gets_a_signed_manifest_the_other_xmp_only(
    farm, api_url, team, signed_team, tmp_path
):
    """The worker signs for the team its operator gave a certificate: c2pa verifies the
    manifest, which names the source; the module's other team gets the XMP label only. The
    batch manifest lists the licence each job rendered under, in JSON and CSV."""
    import csv
    import hashlib

    import c2pa

    from worker.labels import TRAINED_ALGORITHMIC_MEDIA

    plain_client, _ = farm
    source = png_bytes(80, 64, (20, 90, 200))
    image = {"image": data_url(source), "sku": "mug"}
    plain_id = plain_client.submit_job(**job_body(image=data_url(source)))["id"]
    with Client(api_url, signed_team[0]) as client:
        body = {"model": "tiny", "images": [image], "prompts": ["a mug"], "output_format": "webp"}
        batch_id = client.submit_batch(body)["id"]
        client.batches.wait(batch_id, timeout=120)
    headers = {"Authorization": f"Bearer {signed_team[0]}"}
    (job,) = httpx.get(f"{api_url}/v1/batches/{batch_id}/jobs", headers=headers).json()["jobs"]
    assert job["status"] == "succeeded", job
    signed = httpx.get(job["outputs"][0]["url"]).content
    with c2pa.Reader("image/webp", io.BytesIO(signed)) as reader:
        report = json.loads(reader.json())
    assert report["validation_state"] == "Valid", report.get("validation_results")
    (ingredient,) = report["manifests"][report["active_manifest"]]["ingredients"]
    assert ingredient["title"] == hashlib.sha256(source).hexdigest()
    assert ingredient["relationship"] == "parentOf"
    read = exiftool_xmp(signed, tmp_path / "signed.webp")
    assert read["XMP-iptcExt:DigitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
    assert (read["XMP-imgfarm:JobId"], read["XMP-imgfarm:BatchId"]) == (job["id"], batch_id)

    plain_job = plain_client.wait(plain_id, timeout=120)
    assert plain_job["status"] == "succeeded", plain_job
    unsigned = httpx.get(plain_job["outputs"][0]["url"]).content
    with pytest.raises(c2pa.C2paError):
        c2pa.Reader("image/png", io.BytesIO(unsigned))
    read = exiftool_xmp(unsigned, tmp_path / "plain.png")
    assert read["XMP-iptcExt:DigitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
    assert read["XMP-imgfarm:JobId"] == plain_id and "XMP-imgfarm:BatchId" not in read
    # GET /v1/jobs/{id} says what each file carries, and never the signer's material
    assert plain_job["provenance"]["digital_source_type"] == TRAINED_ALGORITHMIC_MEDIA
    assert (plain_job["provenance"]["c2pa_signed"], plain_job["provenance"]["model"]) == (
        False,
        "tiny",
    )
    signed_job = httpx.get(f"{api_url}/v1/jobs/{job['id']}", headers=headers).json()
    assert signed_job["provenance"]["c2pa_signed"] is True
    assert not {"certificate", "private_key", "key"} & set(signed_job["provenance"])

    url = f"{api_url}/v1/batches/{batch_id}/manifest"
    (item,) = httpx.get(url, headers=headers).json()["items"]
    assert (item["license"], item["commercial_use"]) == ("imgfarm-builtin", True)
    text = httpx.get(url, params={"format": "csv"}, headers=headers).text
    (row,) = csv.DictReader(io.StringIO(text))
    assert (row["license"], row["commercial_use"]) == ("imgfarm-builtin", "True")


def test_echo_passes_tiny_noise_needs_review_and_the_scores_go_everywhere(
    farm, api_url, team, session_factory
):
    """Scored on the worker: the job, its batch listing, its manifest, its object's metadata
    and its job.needs_review event carry the same scores; a batch override decides too."""
    client, _ = farm
    photo = Image.fromarray(data.astronaut()).resize((64, 64), Image.Resampling.LANCZOS)
    image = data_url(png_bytes_of(photo))
    # At tiny's default 64²: the smallest render, as what is tested is what follows it.
    echo = client.submit_job(**job_body(model="echo", image=image, width=64, height=64))
    tiny = client.submit_job(**job_body(image=image))
    echo_job, tiny_job = (client.wait(j["id"], timeout=120) for j in (echo, tiny))
    assert echo_job["status"] == tiny_job["status"] == "succeeded", (echo_job, tiny_job)
    assert echo_job["review"] == "passed"
    assert echo_job["fidelity"] == {
        "structure": 1.0,
        "ssim": 1.0,
        "colour_drift": 0.0,
        "kept_pixels_changed": None,
    }
    assert tiny_job["review"] == "needs_review", tiny_job["fidelity"]
    assert tiny_job["fidelity"]["structure"] < 0.5 or tiny_job["fidelity"]["colour_drift"] > 5
    # The object carries the scores as metadata, as the job shows them.
    meta = httpx.get(tiny_job["outputs"][0]["url"], timeout=10).headers
    assert meta["x-amz-meta-review"] == "needs_review"
    assert float(meta["x-amz-meta-fidelity-structure"]) == tiny_job["fidelity"]["structure"]
    assert float(meta["x-amz-meta-fidelity-colour-drift"]) == tiny_job["fidelity"]["colour_drift"]
    # One job.needs_review event, for the tiny job only, its payload scored.
    with session_factory() as s:
        rows = s.scalars(
            select(WebhookDelivery).where(WebhookDelivery.event_type == "job.needs_review")
        ).all()
    mine = [r for r in rows if r.job_id in (uuid.UUID(echo["id"]), uuid.UUID(tiny["id"]))]
    assert [r.job_id for r in mine] == [uuid.UUID(tiny["id"])]
    payload = json.loads(mine[0].body)["data"]
    assert payload["review"] == "needs_review" and payload["fidelity"] == tiny_job["fidelity"]
    # A batch may loosen the model's thresholds: the same noise then passes.
    loose = {"min_structure": 0.0, "max_colour_drift": 100}
    body = {"model": "tiny", "images": [image], "prompts": ["a mug"], "review": loose}
    batch_id = client.submit_batch(body)["id"]
    client.batches.wait(batch_id, timeout=120)
    headers = {"Authorization": f"Bearer {team[1]}"}
    listed = httpx.get(f"{api_url}/v1/batches/{batch_id}/jobs", headers=headers).json()["jobs"]
    (item,) = client.batch_manifest(batch_id)["items"]
    assert listed[0]["review"] == item["review"] == "passed", (listed, item)
    assert listed[0]["fidelity"]["structure"] == item["fidelity_structure"]
    assert item["fidelity_kept_pixels_changed"] is None


def png_bytes_of(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_presets_add_one_output_each_at_their_size(farm, s3_client):
    """A cut-out (transparent PNG) rendered by tiny with two presets: the render, then
    amazon-main (the product's own pixels on pure white, 1600²) and instagram-portrait
    (the render, 1080x1350), each stored beside the render and downloadable."""
    client, _ = farm
    cutout = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(cutout).ellipse((20, 8, 44, 56), fill=(230, 120, 20, 255))
    body = job_body(
        image=data_url(png_bytes_of(cutout)), preset=["amazon-main", "instagram-portrait"]
    )
    job = client.wait(client.submit_job(**body)["id"], timeout=120)
    assert job["status"] == "succeeded", job
    render, main, portrait = job["outputs"]
    assert [o["preset"] for o in job["outputs"]] == [None, "amazon-main", "instagram-portrait"]
    assert (main["width"], main["height"], main["content_type"]) == (1600, 1600, "image/jpeg")
    assert (portrait["width"], portrait["height"]) == (1080, 1350)
    listing = s3_client.list_objects_v2(Bucket="imgfarm-test", Prefix="objects/outputs/")
    keys = {o["Key"].rsplit("/", 1)[1] for o in listing["Contents"] if job["id"] in o["Key"]}
    assert keys == {"0.png", "0-amazon-main.jpg", "0-instagram-portrait.jpg"}
    got = {
        o["preset"]: Image.open(io.BytesIO(httpx.get(o["url"], timeout=30).content))
        for o in (main, portrait)
    }
    assert got["instagram-portrait"].size == (1080, 1350)
    white = pixels(httpx.get(main["url"], timeout=30).content)
    assert got["amazon-main"].size == (1600, 1600)
    product = np.abs(white.astype(int) - (230, 120, 20)).sum(-1) < 60
    rows, cols = np.nonzero(product)
    assert (rows.max() - rows.min() + 1) / 1600 >= 0.85  # the product spans the frame's height
    assert (white[:, : cols.min() - 16] == 255).all() and (white[:, cols.max() + 17 :] == 255).all()

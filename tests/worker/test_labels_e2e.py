"""Labels end to end: a real ``imgfarm worker --model tiny`` process whose operator gave one
team a C2PA certificate (IMGFARM_C2PA_SIGNERS). That team's outputs carry a manifest c2pa
verifies, naming its source; another team's outputs carry the XMP label only; the batch
manifest lists the licence each job rendered under."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
import uuid

import c2pa
import httpx
import pytest

from shared.db import session_scope
from shared.teams import create_api_key, ensure_team
from tests.certificates import make_test_signer
from tests.factories import data_url, png_bytes
from tests.services import launch_dispatcher, launch_worker, wait_for
from worker.labels import TRAINED_ALGORITHMIC_MEDIA

pytestmark = pytest.mark.integration

SOURCE = png_bytes(80, 64, (20, 90, 200))


@pytest.fixture(scope="module")
def farm(module_spawn, session_factory, tmp_path_factory):
    """Two teams, a dispatcher and a tiny worker that signs for the first team only."""
    signed, plain = (f"{name}-{uuid.uuid4().hex[:8]}" for name in ("signed", "plain"))
    with session_scope(session_factory) as session:
        keys = [create_api_key(session, ensure_team(session, name)) for name in (signed, plain)]
    config = make_test_signer().write(tmp_path_factory.mktemp("c2pa"), signed)
    launch_dispatcher(module_spawn)
    launch_worker(module_spawn, "tiny", env={"IMGFARM_C2PA_SIGNERS": str(config)})
    return keys


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def finished_output(client, key: str, job_id: str) -> tuple[dict, bytes]:
    def done() -> dict | None:
        job = client.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()
        return job if job["status"] in ("succeeded", "failed", "canceled") else None

    job = wait_for(done, 120, f"job {job_id}")
    assert job["status"] == "succeeded", job
    return job, httpx.get(job["outputs"][0]["url"], timeout=10).content


def xmp_of(tmp_path, name: str, data: bytes) -> dict:
    path = tmp_path / name
    path.write_bytes(data)
    answer = subprocess.run(
        ["exiftool", "-j", "-G1", "-XMP:all", str(path)], capture_output=True, check=True
    )
    (read,) = json.loads(answer.stdout)
    return read


def test_the_certified_team_gets_a_signed_manifest_the_other_xmp_only(farm, client, tmp_path):
    signed_key, plain_key = farm
    batch = client.post(
        "/v1/batches",
        json={
            "model": "tiny",
            "images": [{"image": data_url(SOURCE), "sku": "mug"}],
            "prompts": ["a blue mug"],
            "output_format": "webp",
        },
        headers=auth(signed_key),
    )
    assert batch.status_code == 202, batch.text
    batch_id = batch.json()["id"]
    plain = client.post(
        "/v1/jobs",
        json={"model": "tiny", "prompt": "a blue mug", "image": data_url(SOURCE)},
        headers=auth(plain_key),
    )
    assert plain.status_code == 202, plain.text
    listing = client.get(f"/v1/batches/{batch_id}/jobs", headers=auth(signed_key)).json()
    (signed_job_id,) = [j["id"] for j in listing["jobs"]]

    _, signed = finished_output(client, signed_key, signed_job_id)
    with c2pa.Reader("image/webp", io.BytesIO(signed)) as reader:
        report = json.loads(reader.json())
    assert report["validation_state"] == "Valid", report.get("validation_results")
    manifest = report["manifests"][report["active_manifest"]]
    (ingredient,) = manifest["ingredients"]
    assert ingredient["title"] == hashlib.sha256(SOURCE).hexdigest()
    assert ingredient["relationship"] == "parentOf"
    read = xmp_of(tmp_path, "signed.webp", signed)
    assert read["XMP-iptcExt:DigitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
    assert (read["XMP-imgfarm:JobId"], read["XMP-imgfarm:BatchId"]) == (signed_job_id, batch_id)

    _, unsigned = finished_output(client, plain_key, plain.json()["id"])
    with pytest.raises(c2pa.C2paError):
        c2pa.Reader("image/png", io.BytesIO(unsigned))
    read = xmp_of(tmp_path, "plain.png", unsigned)
    assert read["XMP-iptcExt:DigitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
    assert read["XMP-imgfarm:JobId"] == plain.json()["id"] and "XMP-imgfarm:BatchId" not in read

    # The manifest lists the licence the job rendered under, in JSON and CSV.
    url = f"/v1/batches/{batch_id}/manifest"
    (item,) = client.get(url, headers=auth(signed_key)).json()["items"]
    assert (item["license"], item["commercial_use"]) == ("imgfarm-builtin", True)
    text = client.get(url, params={"format": "csv"}, headers=auth(signed_key)).text
    (row,) = csv.DictReader(io.StringIO(text))
    assert (row["license"], row["commercial_use"]) == ("imgfarm-builtin", "True")

"""Presigned uploads leave nothing behind: a PUT after /complete, or never completed, is swept."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from shared.models import utcnow
from shared.staging import STAGING_PREFIX, sweep_staging
from shared.storage import S3Storage, storage_from_settings
from tests.factories import png_bytes

pytestmark = pytest.mark.integration


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def staged_keys(s3_client, upload_id: str) -> list[str]:
    listing = s3_client.list_objects_v2(Bucket="imgfarm-test", Prefix=f"objects/{STAGING_PREFIX}")
    return [o["Key"] for o in listing.get("Contents", []) if upload_id in o["Key"]]


def test_a_put_after_complete_lingers_nowhere(client, new_key, settings, s3_client):
    key = new_key()
    upload = client.post("/v1/uploads/presign", json={"filename": "a.png"}, headers=auth(key))
    upload = upload.json()
    # The URL lives presign_expiry_seconds (15 min), not the hour of download URLs.
    expires = parse_qs(urlparse(upload["url"]).query)["X-Amz-Expires"]
    assert expires == [str(settings.presign_expiry_seconds)]
    assert httpx.put(upload["url"], content=png_bytes(40, 30), timeout=10).status_code == 200
    done = client.post(f"/v1/uploads/{upload['id']}/complete", headers=auth(key))
    assert done.status_code == 201 and staged_keys(s3_client, upload["id"]) == []

    # The URL is still valid: a second PUT lands in staging again...
    assert httpx.put(upload["url"], content=b"later bytes", timeout=10).status_code == 200
    assert len(staged_keys(s3_client, upload["id"])) == 1
    # ...and is removed by a repeated /complete (answered as before),
    again = client.post(f"/v1/uploads/{upload['id']}/complete", headers=auth(key))
    assert again.json() == done.json() and staged_keys(s3_client, upload["id"]) == []
    # or, never completed again, by the sweep once the URL has expired.
    assert httpx.put(upload["url"], content=b"even later", timeout=10).status_code == 200
    store = storage_from_settings(settings)
    assert isinstance(store, S3Storage)
    expiry = settings.presign_expiry_seconds
    sweep_staging(store, utcnow(), expiry)
    assert len(staged_keys(s3_client, upload["id"])) == 1, "its URL is still valid: kept"
    later = utcnow() + timedelta(seconds=expiry + 1)
    assert sweep_staging(store, later, expiry) >= 1
    assert staged_keys(s3_client, upload["id"]) == []
    # The completed upload's source is not staging: it stays usable.
    job = client.post(
        "/v1/jobs",
        json={"model": "tiny", "prompt": "p", "image": upload["id"]},
        headers=auth(key),
    )
    assert job.status_code == 202, job.text


def test_a_never_completed_put_is_swept_only_after_its_url_expired(
    client, new_key, settings, s3_client
):
    upload = client.post("/v1/uploads/presign", json={}, headers=auth(new_key())).json()
    assert httpx.put(upload["url"], content=png_bytes(40, 30), timeout=10).status_code == 200
    store = storage_from_settings(settings)
    assert isinstance(store, S3Storage)
    expiry = settings.presign_expiry_seconds
    soon = utcnow() + timedelta(seconds=expiry - 30)
    sweep_staging(store, soon, expiry)
    assert len(staged_keys(s3_client, upload["id"])) == 1, "still completable: kept"
    sweep_staging(store, utcnow() + timedelta(seconds=expiry + 1), expiry)
    assert staged_keys(s3_client, upload["id"]) == []

"""Storage faults that only an operator can fix are named as such, never as "retry shortly"."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from shared.errors import StorageConfigError, TransientError
from shared.storage import S3Storage, storage_from_settings
from tests.factories import png_bytes

pytestmark = pytest.mark.integration


def _store(settings, bucket: str) -> S3Storage:
    store = storage_from_settings(
        settings.model_copy(update={"storage_url": f"s3://{bucket}/objects"})
    )
    assert isinstance(store, S3Storage)
    return store


def test_missing_bucket_is_a_config_error_naming_the_fix(settings):
    store = _store(settings, f"missing-{uuid.uuid4().hex[:8]}")
    with pytest.raises(StorageConfigError, match="does not exist.*imgfarm storage init"):
        store.check()
    with pytest.raises(StorageConfigError, match="does not exist"):
        store.put("sources/x", b"x", "image/png")
    store.ensure_bucket()  # what `imgfarm storage init` runs
    store.check()


def test_no_credentials_is_a_config_error(settings, tmp_path):
    # A process of its own: boto3's default session caches the credentials it found.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    probe = (
        "import sys; from shared.errors import StorageConfigError\n"
        "from shared.storage import S3Storage\n"
        "store = S3Storage('imgfarm-test', 'objects', endpoint_url=sys.argv[1],"
        " region='us-east-1', addressing_style='path')\n"
        "try:\n    store.check()\nexcept StorageConfigError as e:\n    print(e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, settings.s3_endpoint_url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "no credentials" in result.stdout, result.stdout + result.stderr


def test_unreachable_endpoint_stays_transient(settings):
    store = storage_from_settings(
        settings.model_copy(update={"s3_endpoint_url": "http://127.0.0.1:9"})
    )
    with pytest.raises(TransientError):
        store.check()


def test_readyz_and_clients_are_told_what_is_wrong(settings, new_key):
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    app = create_app(settings.model_copy(update={"storage_url": f"s3://{missing}/objects"}))
    with TestClient(app) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert missing in ready.json()["checks"]["storage"]
        assert "imgfarm storage init" in ready.json()["checks"]["storage"]
        upload = client.post(
            "/v1/uploads",
            headers={"Authorization": f"Bearer {new_key()}"},
            files={"files": ("a.png", png_bytes(40, 30), "image/png")},
        )
        assert upload.status_code == 500, upload.text  # not 503: waiting will not fix it
        assert "retry shortly" not in upload.text and "Retry-After" not in upload.headers
        assert "misconfigured" in upload.json()["detail"]


def test_an_outage_is_a_503_that_says_when_to_retry(settings, new_key):
    down = settings.model_copy(update={"s3_endpoint_url": "http://127.0.0.1:9"})
    with TestClient(create_app(down)) as client:
        upload = client.post(
            "/v1/uploads",
            headers={"Authorization": f"Bearer {new_key()}"},
            files={"files": ("a.png", png_bytes(40, 30), "image/png")},
        )
    assert upload.status_code == 503, upload.text
    assert int(upload.headers["Retry-After"]) > 0

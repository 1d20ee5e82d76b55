"""``/v1/adapters``: an admin key registers a team's LoRA file, jobs name it and pin its
digest, other teams neither see nor use it, and bad files are refused with nothing stored."""

from __future__ import annotations

import hashlib
import pickle
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from fastapi.testclient import TestClient
from safetensors.numpy import save
from sqlalchemy import func, select

from api.app import create_app
from shared.adapters import ADAPTERS_PREFIX
from shared.models import Adapter, Job
from tests.factories import job_body, lora_file
from tests.services import free_port

LIMIT = 64 * 1024  # the module's max_adapter_bytes


@pytest.fixture(scope="module")
def app(settings):
    small = {"max_adapter_bytes": LIMIT, "allow_private_networks": "127.0.0.1/32"}
    return create_app(settings.model_copy(update=small))


@pytest.fixture
def client(app) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def register(client: TestClient, key: str, name: str, data: bytes, filename: str = "a.safetensors"):
    return client.post(
        "/v1/adapters", data={"name": name}, files={"file": (filename, data)}, headers=auth(key)
    )


def member_key(client: TestClient, admin: str) -> str:
    answer = client.post("/v1/keys", json={"scope": "member"}, headers=auth(admin))
    return answer.json()["key"]


def stored(session_factory, s3_client, settings) -> tuple[int, int]:
    """(adapter rows, objects under adapters/) in the whole database and bucket."""
    with session_factory() as s:
        rows = s.scalar(select(func.count()).select_from(Adapter))
    bucket, _, prefix = settings.storage_url.removeprefix("s3://").partition("/")
    under = f"{prefix}/{ADAPTERS_PREFIX}" if prefix else ADAPTERS_PREFIX
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=under)
    return rows or 0, sum(p.get("KeyCount", 0) for p in pages)


def pinned(session_factory, job_id: str) -> list[dict]:
    with session_factory() as s:
        job = s.get(Job, uuid.UUID(job_id))
        assert job is not None
        return job.params["adapters"]


def test_admin_registers_jobs_pin_the_digest_and_renaming_changes_only_new_jobs(
    client, new_key, session_factory, s3_client, settings
):
    admin = new_key()
    first, second = lora_file(1), lora_file(2)
    answer = register(client, admin, "acme-summer", first)
    assert answer.status_code == 201, answer.text
    digest = hashlib.sha256(first).hexdigest()
    assert answer.json()["sha256"] == digest
    assert answer.json()["size_bytes"] == len(first)
    # A member key of the team lists it (and submits with it).
    member = member_key(client, admin)
    listed = client.get("/v1/adapters", headers=auth(member)).json()["adapters"]
    assert [(a["name"], a["sha256"]) for a in listed] == [("acme-summer", digest)]
    body = job_body(adapters=[{"name": "acme-summer", "scale": 0.8}])
    queued = client.post("/v1/jobs", json=body, headers=auth(member))
    assert queued.status_code == 202, queued.text
    assert pinned(session_factory, queued.json()["id"]) == [
        {"name": "acme-summer", "scale": 0.8, "sha256": digest}
    ]
    # Registered again: new jobs pin the new file, the queued one keeps its own.
    assert register(client, admin, "acme-summer", second).status_code == 201
    later = client.post("/v1/jobs", json=body, headers=auth(member)).json()["id"]
    assert pinned(session_factory, later)[0]["sha256"] == hashlib.sha256(second).hexdigest()
    assert pinned(session_factory, queued.json()["id"])[0]["sha256"] == digest
    # Deleted: the name is gone for new jobs.
    assert client.delete("/v1/adapters/acme-summer", headers=auth(admin)).status_code == 204
    refused = client.post("/v1/jobs", json=body, headers=auth(member))
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "adapters[0].name"
    assert client.get("/v1/adapters", headers=auth(admin)).json()["adapters"] == []


def test_a_member_cannot_register_or_delete_and_another_team_neither_sees_nor_uses_it(
    client, new_key, session_factory, s3_client, settings
):
    admin, stranger = new_key(), new_key()
    assert register(client, admin, "brand", lora_file(3)).status_code == 201
    member = member_key(client, admin)
    before = stored(session_factory, s3_client, settings)
    answer = register(client, member, "other", lora_file(4))
    assert answer.status_code == 403, answer.text
    assert client.delete("/v1/adapters/brand", headers=auth(member)).status_code == 403
    assert stored(session_factory, s3_client, settings) == before
    assert client.get("/v1/adapters", headers=auth(stranger)).json()["adapters"] == []
    assert client.delete("/v1/adapters/brand", headers=auth(stranger)).status_code == 404
    used = client.post(
        "/v1/jobs", json=job_body(adapters=[{"name": "brand"}]), headers=auth(stranger)
    )
    assert used.status_code == 422
    assert used.json()["errors"][0]["field"] == "adapters[0].name"
    assert [
        a["name"] for a in client.get("/v1/adapters", headers=auth(admin)).json()["adapters"]
    ] == ["brand"]


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        pytest.param(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, 422, "not a safetensors", id="png"),
        # What torch.save writes (a pickle): refused by the header parse, never unpickled.
        pytest.param(pickle.dumps({"lora_A": [1.0]}), 422, "not a safetensors", id="pickle"),
        pytest.param(
            save({"unet.conv_in.weight": np.zeros((4, 4), np.float32)}),
            422,
            "not LoRA weights",
            id="full-weights",
        ),
        pytest.param(
            save({"vae.lora_A.weight": np.zeros((4, 4), np.float32)}),
            422,
            "no LoRA weights for a diffusers UNet",
            id="lora-of-no-unet",
        ),
        pytest.param(lora_file(5) + b"\x00" * LIMIT, 413, "larger", id="too-big"),
    ],
)
def test_a_bad_file_is_refused_naming_it_and_nothing_is_stored(
    client, new_key, session_factory, s3_client, settings, data, status, message
):
    admin = new_key()
    before = stored(session_factory, s3_client, settings)
    answer = register(client, admin, "bad", data, filename="weights.bin")
    assert answer.status_code == status, answer.text
    (error,) = answer.json()["errors"]
    assert error["field"] == "file"
    assert message in error["message"]
    assert stored(session_factory, s3_client, settings) == before


def test_a_url_is_fetched_and_a_private_one_refused_when_not_allowed(client, new_key, settings):
    data = lora_file(6)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/lora.safetensors"
    try:
        admin = new_key()
        answer = client.post(
            "/v1/adapters", data={"name": "fetched", "url": url}, headers=auth(admin)
        )
        assert answer.status_code == 201, answer.text
        assert answer.json()["sha256"] == hashlib.sha256(data).hexdigest()
        # The session's own app allows no private network: loopback is refused.
        with TestClient(create_app(settings)) as strict:
            refused = strict.post(
                "/v1/adapters", data={"name": "fetched", "url": url}, headers=auth(admin)
            )
        assert refused.status_code == 422, refused.text
        assert refused.json()["errors"][0]["field"] == "url"
    finally:
        server.shutdown()
        server.server_close()

"""The api's intake path under hostile input, on a real ``imgfarm api`` process (Postgres,
moto S3): bodies bounded while they stream, source fetches bounded in time and number, no
database connection held across a fetch, and nothing written for a refused request."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.sources_server import SourcesServer
from tests.factories import data_url, job_body, png_bytes
from tests.services import free_port, wait_answers, wait_for

BODY_LIMIT = 1024 * 1024
DEADLINE = 2.0
PER_TEAM = 3


def auth(key: str, idempotency_key: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}"}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    return headers


@pytest.fixture(scope="module")
def sources() -> Iterator[SourcesServer]:
    server = SourcesServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(module_spawn) -> tuple[str, int]:
    """An ``imgfarm api`` with small limits: its URL and pid. A pool of two connections:
    fetches that held one would starve everyone at once."""
    port = free_port()
    proc = module_spawn(
        "api",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        env={
            "IMGFARM_MAX_BODY_BYTES": str(BODY_LIMIT),
            "IMGFARM_FETCH_TIMEOUT_SECONDS": str(DEADLINE),
            "IMGFARM_FETCH_CONCURRENCY_PER_TEAM": str(PER_TEAM),
            "IMGFARM_API_DB_POOL_SIZE": "2",
            "IMGFARM_API_DB_MAX_OVERFLOW": "0",
            "IMGFARM_ALLOW_PRIVATE_NETWORKS": "127.0.0.0/8",
        },
    )
    url = f"http://127.0.0.1:{port}"
    wait_answers(f"{url}/healthz", 60, "imgfarm api")
    assert proc.proc is not None
    return url, proc.proc.pid


def memory_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for {pid}")


def raw_post(url: str, head: dict[str, str], chunks: Iterator[bytes]) -> tuple[int, dict]:
    """POST over a raw socket, reading the answer while still sending (the api answers
    413 and hangs up mid-body); returns the status and the JSON body."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    answer = bytearray()

    def read() -> None:
        try:
            while data := sock.recv(65536):
                answer.extend(data)
        except OSError:
            pass

    reader = threading.Thread(target=read)
    reader.start()
    lines = ["POST /v1/jobs HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in head.items())]
    try:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        for chunk in chunks:
            if answer:
                break
            sock.sendall(chunk)
    except OSError:
        pass  # the api hung up: it has answered
    reader.join(30)
    sock.close()
    status_line, _, rest = bytes(answer).partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2] or b"{}")


def test_a_declared_oversize_body_is_413_before_it_is_read(api, new_key):
    url, _ = api
    key = new_key()
    status, body = raw_post(
        url,
        {
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "Content-Length": str(500 * 1024 * 1024),
        },
        iter([b'{"model": "tiny", "image": "data:image/png;base64,AAAA']),
    )
    assert status == 413
    assert body["errors"] == [
        {"field": "body", "message": f"request body is larger than {BODY_LIMIT} bytes"}
    ]


def test_a_chunked_oversize_body_is_cut_without_the_api_growing_by_its_size(api, new_key):
    url, pid = api
    key = new_key()
    size = 64 * 1024 * 1024
    chunk = b"A" * (256 * 1024)

    def chunked() -> Iterator[bytes]:
        start = b'{"model":"tiny","image":"data:'
        yield f"{len(start):x}\r\n".encode() + start + b"\r\n"
        for _ in range(size // len(chunk)):
            yield f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        yield b"0\r\n\r\n"

    before = max(memory_mb(pid, "VmHWM"), memory_mb(pid, "VmRSS"))
    status, body = raw_post(
        url,
        {
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "Transfer-Encoding": "chunked",
        },
        chunked(),
    )
    assert status == 413, body
    assert body["errors"][0]["field"] == "body"
    # Without the limit the api reads, parses and decodes all 64 MB (several times over).
    assert memory_mb(pid, "VmHWM") - before < 16, "the api held the body it refused"


def test_a_slow_drip_is_cut_at_the_deadline_holding_no_connection_and_429_is_per_team(
    api, new_key, sources
):
    url, _ = api
    dripper, other = new_key(), new_key()
    drip = sources.url("/drip?interval=0.2&n=100000")
    answers: list[tuple[httpx.Response, float]] = []

    def submit(key: str) -> None:
        started = time.monotonic()
        response = httpx.post(
            f"{url}/v1/jobs", json=job_body(image=drip), headers=auth(key), timeout=60
        )
        answers.append((response, time.monotonic() - started))

    drips = sources.hits["/drip"]
    threads = [threading.Thread(target=submit, args=(dripper,)) for _ in range(PER_TEAM)]
    for t in threads:
        t.start()
    wait_for(lambda: sources.dripping >= PER_TEAM, 10, "the slow fetches to start")
    # Pool of two, three fetches in flight: the other team is still answered at once.
    for _ in range(3):
        started = time.monotonic()
        assert httpx.get(f"{url}/v1/batches", headers=auth(other), timeout=30).status_code == 200
        assert time.monotonic() - started < 1.0
    # The dripping team is at its bound: refused at once, with a time to come back...
    busy = httpx.post(
        f"{url}/v1/jobs", json=job_body(image=drip), headers=auth(dripper), timeout=30
    )
    assert busy.status_code == 429, busy.text
    assert int(busy.headers["Retry-After"]) >= DEADLINE
    # ...while another team's fetch still goes out.
    threads.append(threading.Thread(target=submit, args=(other,)))
    threads[-1].start()
    wait_for(lambda: sources.hits["/drip"] >= drips + PER_TEAM + 1, 10, "the other's fetch")
    for t in threads:
        t.join(30)
    assert len(answers) == PER_TEAM + 1
    for response, seconds in answers:
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == "image"
        assert "longer than 2 s" in response.json()["detail"]
        assert seconds < DEADLINE + 1.5, (
            f"the fetch ran {seconds:.1f} s past a {DEADLINE} s deadline"
        )


def test_an_idempotent_replay_does_not_fetch_again(api, new_key, sources):
    url, _ = api
    key = new_key()
    image = sources.url(f"/png?n={time.monotonic_ns()}")
    before = sources.hits["/png"]
    first = httpx.post(f"{url}/v1/jobs", json=job_body(image=image), headers=auth(key, "k-1"))
    again = httpx.post(f"{url}/v1/jobs", json=job_body(image=image), headers=auth(key, "k-1"))
    assert first.status_code == again.status_code == 202, (first.text, again.text)
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    assert sources.hits["/png"] == before + 1


# --- nothing written for a refused request (the session's in-process app) ------------------


def source_objects(s3_client) -> set[str]:
    pages = s3_client.get_paginator("list_objects_v2").paginate(
        Bucket="imgfarm-test", Prefix="objects/sources/"
    )
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def test_a_batch_with_one_undecodable_image_writes_no_object(client, new_key, s3_client):
    key = new_key()
    before = source_objects(s3_client)
    body = {
        "model": "tiny",
        "images": [
            {"image": data_url(png_bytes(color=(1, 2, 3))), "sku": "good"},
            {"image": data_url(b"not an image at all"), "sku": "bad"},
        ],
        "prompts": ["a product photo"],
    }
    response = client.post("/v1/batches", json=body, headers=auth(key))
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "images[1].image"
    assert source_objects(s3_client) == before


def test_an_inpaint_job_with_a_bad_mask_writes_no_object(client, new_key, s3_client):
    key = new_key()
    before = source_objects(s3_client)
    body = job_body(
        model="tiny-inpaint",
        image=data_url(png_bytes(color=(4, 5, 6))),
        mask=data_url(png_bytes(width=32, height=32, color=(255, 255, 255))),
    )
    response = client.post("/v1/jobs", json=body, headers=auth(key))
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "mask"
    assert source_objects(s3_client) == before


@pytest.mark.parametrize(
    "filename", ["x" * 256 + ".png", "a\x00b.png"], ids=["over-255-characters", "nul"]
)
def test_an_upload_with_a_bad_filename_is_4xx_naming_it_and_writes_no_object(
    client, new_key, s3_client, filename
):
    key = new_key()
    before = source_objects(s3_client)
    # Built by hand: httpx would percent-encode the NUL; a hostile client sends it raw.
    parts = [("fine.png", png_bytes(color=(7, 8, 9))), (filename, png_bytes(color=(9, 8, 7)))]
    body = b"".join(
        b'--B\r\nContent-Disposition: form-data; name="files"; filename="'
        + name.encode()
        + b'"\r\nContent-Type: image/png\r\n\r\n'
        + data
        + b"\r\n"
        for name, data in parts
    )
    response = client.post(
        "/v1/uploads",
        content=body + b"--B--\r\n",
        headers={**auth(key), "Content-Type": "multipart/form-data; boundary=B"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "files[1].filename"
    assert source_objects(s3_client) == before

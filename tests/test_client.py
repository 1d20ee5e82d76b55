"""The Python client (imgfarm/client.py) against a real ``imgfarm api`` process, dispatcher
and ``echo`` worker (PostgreSQL, Redis, an S3 endpoint). What the real api cannot do on
demand (answer 429/503, lose an answer) a small proxy in front of it does."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from PIL import Image
from sqlalchemy import func, select

from imgfarm import ApiError, Client, RetryPolicy, WebhookVerificationError, verify_webhook
from shared.models import Batch, Job
from shared.schemas import BatchPublic, JobAccepted, JobCreate, JobPublic, UploadPublic
from tests import sse
from tests.factories import batch_body, data_url, job_body, png_bytes
from tests.receiver import Receiver
from tests.services import free_port, launch_dispatcher, launch_worker, wait_answers, wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
# Webhook receivers on loopback: allowed for this farm's api and webhook worker only.
PRIVATE_OK = {"IMGFARM_ALLOW_PRIVATE_NETWORKS": "127.0.0.0/8"}
# Retries without Retry-After wait 50-100 ms here, so a wait of 1 s is the server's.
QUICK = RetryPolicy(attempts=4, total_seconds=20, backoff_seconds=0.05, max_backoff_seconds=0.1)


@pytest.fixture(scope="module")
def farm(module_spawn) -> str:
    """A real api, dispatcher and ``echo`` worker for the module; returns the api's URL."""
    port = free_port()
    # Keep-alives every 0.3 s, so the event stream test sees them without waiting 15 s.
    env = {**PRIVATE_OK, "IMGFARM_SSE_PING_SECONDS": "0.3"}
    module_spawn("api", "--host", "127.0.0.1", "--port", str(port), env=env)
    url = f"http://127.0.0.1:{port}"
    wait_answers(f"{url}/healthz", 60, "imgfarm api")
    launch_dispatcher(module_spawn)
    launch_worker(module_spawn, "echo")
    return url


# --- a proxy that misbehaves on cue ---------------------------------------------------------


@dataclass
class Step:
    """What the proxy does with one request. ``refuse``: answer ``status`` itself, forward
    nothing. ``lose``: forward it, then answer ``status`` (the api's answer is lost).
    ``hang_up``: forward it, then close the connection without answering. ``relay``:
    forward it and pass the api's answer on (what every unscripted request gets)."""

    kind: str
    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    at: float
    upstream_headers: dict[str, str] = field(default_factory=dict)


class FlakyProxy:
    """Forwards to ``upstream``, except as the script says for the first requests."""

    HOP = {"host", "content-length", "transfer-encoding", "connection", "content-encoding"}

    def __init__(self, upstream: str, *script: Step) -> None:
        self.upstream = upstream
        self.script = list(script)
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next(self, seen: Seen) -> Step:
        with self._lock:
            self.seen.append(seen)
            return self.script.pop(0) if self.script else Step("relay")

    def _forward(self, seen: Seen, body: bytes) -> httpx.Response:
        answer = httpx.request(
            seen.method,
            self.upstream + seen.path,
            headers={k: v for k, v in seen.headers.items() if k not in self.HOP},
            content=body,
            timeout=30,
        )
        seen.upstream_headers = dict(answer.headers)
        return answer

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                self.do_POST()

            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                seen = Seen(self.command, self.path, headers, time.monotonic())
                step = proxy._next(seen)
                if step.kind == "refuse":
                    self._send(step.status, step.headers, b'{"detail": "scripted"}')
                    return
                answer = proxy._forward(seen, body)
                if step.kind == "lose":
                    self._send(step.status, step.headers, b'{"detail": "scripted"}')
                elif step.kind == "hang_up":
                    self.close_connection = True
                else:
                    kept = {k: v for k, v in answer.headers.items() if k not in proxy.HOP}
                    self._send(answer.status_code, kept, answer.content)

            def _send(self, status: int, headers: dict[str, str], payload: bytes) -> None:
                self.send_response(status)
                for name, value in {"content-type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        return Handler


@pytest.fixture
def proxies(farm) -> Iterator[list[FlakyProxy]]:
    made: list[FlakyProxy] = []
    yield made
    for proxy in made:
        proxy.close()


def flaky(proxies: list[FlakyProxy], farm: str, *script: Step) -> FlakyProxy:
    proxy = FlakyProxy(farm, *script)
    proxies.append(proxy)
    return proxy


def team_count(session_factory, model, key_team_of: uuid.UUID) -> int:
    """Rows of ``model`` belonging to the team that owns ``key_team_of`` (a job or batch)."""
    with session_factory() as s:
        team_id = s.get(model, key_team_of).team_id
        return s.scalar(select(func.count()).select_from(model).where(model.team_id == team_id))


# --- jobs, batches, uploads against the real api ----------------------------------------------


def test_upload_then_job_submit_wait_download_are_typed(farm, new_key, tmp_path):
    with Client(farm, new_key()) as client:
        (photo,) = client.uploads.create(("shoe.png", png_bytes(90, 70), "image/png"))
        assert isinstance(photo, UploadPublic)
        assert (photo.filename, photo.width, photo.height) == ("shoe.png", 90, 70)
        job = client.jobs.submit(model="echo", prompt="a shoe", image=photo, width=64, height=48)
        assert isinstance(job, JobAccepted) and job.status == "queued"
        done = client.jobs.wait(job.id, timeout=120)
        assert isinstance(done, JobPublic) and done.status == "succeeded", done.error
        (path,) = client.jobs.download(done, tmp_path / "out")
        # Fetched from the S3 endpoint's presigned URL (another origin: no API key sent).
        assert path == tmp_path / "out" / f"{job.id}-0.png"
        assert Image.open(path).size == (64, 48)
        # A JobCreate does as well as its fields; both are checked before anything is sent.
        again = client.jobs.submit(JobCreate(model="echo", prompt="a shoe", image=str(photo.id)))
        assert client.jobs.wait(again.id, timeout=120).status == "succeeded"
        # Listing follows the cursor across pages (one job per page here), newest first.
        listed = list(client.jobs.list(model="echo", status="succeeded", limit=1))
        assert [j.id for j in listed] == [again.id, job.id]
        with pytest.raises(ValueError, match="strength"):
            client.jobs.submit(model="echo", prompt="a shoe", image=photo, strength=2)


def test_small_batch_submit_wait_download_writes_the_tree_and_resumes(farm, new_key, tmp_path):
    with Client(farm, new_key()) as client:
        accepted = client.batches.submit(
            model="echo",
            images=[
                {"image": data_url(png_bytes(color=(200, 40, 40))), "sku": "SKU-RED"},
                {"image": data_url(png_bytes(color=(40, 40, 200))), "sku": "SKU-BLUE"},
            ],
            prompts=[{"name": "winter", "prompt": "on snow"}],
            width=32,
            height=32,
        )
        assert accepted.job_count == 2
        batch = client.batches.wait(accepted.id, timeout=120)
        assert isinstance(batch, BatchPublic)
        assert (batch.status, batch.counts.succeeded) == ("succeeded", 2)
        out = tmp_path / "renders"
        paths = client.batches.download(accepted.id, out)
        assert sorted(p.relative_to(out).as_posix() for p in paths) == [
            "SKU-BLUE/winter/1.png",
            "SKU-RED/winter/1.png",
        ]
        assert all(Image.open(p).size == (32, 32) for p in paths)
        before = [p.stat().st_mtime_ns for p in paths]
        assert client.batches.download(accepted.id, out) == paths
        assert [p.stat().st_mtime_ns for p in paths] == before, "kept, not fetched again"


def test_a_rejected_output_renders_again_on_the_worker_and_the_old_one_stays(
    farm, new_key, session_factory, settings
):
    """Review and rerender through the client, rendered by the real echo worker: echo
    returns its source, so both outputs pass and batch.reviewed follows batch.completed; a
    person rejects one, its rerender is a new attempt of the same job (new seed, the old
    output kept in history and in storage, the new one under its round's key)."""
    from shared.models import WebhookDelivery
    from shared.storage import storage_from_settings

    def reviewed_events(batch_id: uuid.UUID) -> int:
        with session_factory() as s:
            return s.scalar(
                select(func.count()).where(
                    WebhookDelivery.batch_id == batch_id,
                    WebhookDelivery.event_type == "batch.reviewed",
                )
            )

    with Client(farm, new_key()) as client:
        accepted = client.batches.submit(
            model="echo",
            images=[data_url(png_bytes())],
            prompts=["on a porch"],
            variants=2,
            width=32,
            height=32,
            webhook_url="http://127.0.0.1:9/hook",  # nothing listens: rows are looked at
        )
        batch = client.batches.wait(accepted.id, timeout=120)
        assert batch.review_counts.passed == 2 and reviewed_events(accepted.id) == 1
        with session_factory() as s:
            first, other = s.scalars(select(Job).where(Job.batch_id == accepted.id)).all()
        answer = client.batches.review(accepted.id, [(first.id, "reject", "off-brand")])
        assert (answer.decided, answer.review_counts.rejected) == (1, 1)
        assert client.batches.rerender(accepted.id).rerendered == 1
        batch = client.batches.wait(accepted.id, timeout=120)
        assert (batch.counts.succeeded, batch.review_counts.passed) == (2, 2)
        assert reviewed_events(accepted.id) == 2  # a new round, settled by the worker

        job = client.jobs.get(first.id)
        (attempt,) = job.history
        assert (attempt.seed, attempt.review, attempt.review_note) == (
            first.params["seed"],
            "rejected",
            "off-brand",
        )
        assert job.params.seed != first.params["seed"] and job.review == "passed"
        assert httpx.get(attempt.outputs[0].url).status_code == 200
        assert job.outputs[0].url != attempt.outputs[0].url
        with session_factory() as s:
            rendered = s.get(Job, first.id)
            untouched = s.get(Job, other.id)
        assert first.outputs[0]["key"].endswith("/0.png")
        assert rendered.outputs[0]["key"].endswith("/1.png")
        assert rendered.provenance["params"]["seed"] == job.params.seed
        storage = storage_from_settings(settings)
        assert storage.exists(first.outputs[0]["key"])  # the rejected attempt's object stays
        assert storage.exists(rendered.outputs[0]["key"])
        assert untouched.outputs == other.outputs and untouched.history is None
        # a person changes their mind about the new attempt
        approved = client.jobs.review(first.id, "approve", note="fine")
        assert (approved.review, approved.review_note) == ("approved", "fine")


# --- retries and idempotency ----------------------------------------------------------------


def test_429_is_retried_after_its_retry_after_with_the_same_key(
    farm, new_key, proxies, session_factory
):
    proxy = flaky(proxies, farm, Step("refuse", 429, {"Retry-After": "1"}))
    with Client(proxy.url, new_key(), retries=QUICK) as client:
        job = client.jobs.submit(model="echo", prompt="p", image=data_url(png_bytes()))
    refused, passed = proxy.seen
    assert passed.at - refused.at >= 1.0, "waited as long as Retry-After asked"
    assert refused.headers["idempotency-key"] == passed.headers["idempotency-key"]
    uuid.UUID(refused.headers["idempotency-key"])  # a uuid4 the client made
    assert team_count(session_factory, Job, job.id) == 1


def test_an_answer_lost_after_the_job_was_created_is_replayed_not_created_twice(
    farm, new_key, proxies, session_factory
):
    """The api created the job, then its answer was lost (a 503 from a proxy): the retry
    carries the same key, so the api replays the first answer."""
    proxy = flaky(proxies, farm, Step("lose", 503))
    with Client(proxy.url, new_key(), retries=QUICK) as client:
        job = client.jobs.submit(model="echo", prompt="p", image=data_url(png_bytes()))
        second = client.jobs.submit(model="echo", prompt="p", image=data_url(png_bytes()))
    lost, replayed, other = proxy.seen
    assert lost.headers["idempotency-key"] == replayed.headers["idempotency-key"]
    assert replayed.upstream_headers.get("idempotent-replayed") == "true"
    assert other.headers["idempotency-key"] != lost.headers["idempotency-key"], "one per call"
    assert second.id != job.id
    assert team_count(session_factory, Job, job.id) == 2


def test_a_connection_cut_before_the_answer_is_retried_and_the_batch_created_once(
    farm, new_key, proxies, session_factory
):
    proxy = flaky(proxies, farm, Step("hang_up"))
    with Client(proxy.url, new_key(), retries=QUICK) as client:
        accepted = client.batches.submit(
            model="echo", images=[data_url(png_bytes())], prompts=["on snow"], variants=2
        )
    assert [s.path for s in proxy.seen] == ["/v1/batches", "/v1/batches"]
    assert proxy.seen[1].upstream_headers.get("idempotent-replayed") == "true"
    assert team_count(session_factory, Batch, accepted.id) == 1


def test_other_4xx_are_not_retried_and_503_gives_up_after_the_attempts(farm, new_key, proxies):
    proxy = flaky(proxies, farm)
    client = Client(proxy.url, new_key(), retries=QUICK)
    with client, pytest.raises(ApiError) as refused:
        client.jobs.submit(model="no-such-model", prompt="p", image=data_url(png_bytes()))
    assert 400 <= refused.value.status_code < 500 and "model" in refused.value.detail
    assert len(proxy.seen) == 1, "a 4xx is not sent again"

    always = flaky(proxies, farm, *[Step("refuse", 503, {"Retry-After": "0"})] * 10)
    client = Client(always.url, new_key(), retries=QUICK)
    with client, pytest.raises(ApiError) as unavailable:
        client.jobs.get(uuid.uuid4())
    assert unavailable.value.status_code == 503 and len(always.seen) == QUICK.attempts


def test_a_retry_after_past_the_time_budget_is_not_waited_for(farm, new_key, proxies):
    proxy = flaky(proxies, farm, Step("refuse", 429, {"Retry-After": "3600"}))
    started = time.monotonic()
    client = Client(proxy.url, new_key(), retries=QUICK)
    with client, pytest.raises(ApiError) as busy:
        client.jobs.get(uuid.uuid4())
    assert time.monotonic() - started < 5
    assert (busy.value.status_code, busy.value.retry_after, len(proxy.seen)) == (429, 3600, 1)


def test_output_urls_get_the_api_key_only_on_the_apis_own_origin(farm, new_key, tmp_path):
    elsewhere = Receiver().start()
    proxy = FlakyProxy(farm)
    try:
        with Client(proxy.url, new_key()) as client:
            client.download(elsewhere.url("/out.png"), tmp_path / "a.png")
            client.download(f"{proxy.url}/healthz", tmp_path / "b.json")
        (foreign,) = elsewhere.requests("/out.png")
        assert "authorization" not in foreign.headers
        assert (tmp_path / "a.png").read_bytes() == b"ok"
        assert proxy.seen[0].headers["authorization"].startswith("Bearer imf_")
    finally:
        elsewhere.stop()
        proxy.close()


# --- webhooks -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def webhook_worker(module_spawn, farm):
    env = {**PRIVATE_OK, "IMGFARM_WEBHOOK_POLL_SECONDS": "0.1"}
    proc = module_spawn("worker", "--webhooks", env=env)
    proc.wait_log(" ready.", timeout=120)
    return proc


def test_verify_webhook_accepts_a_real_delivery_and_refuses_a_tampered_one(
    farm, webhook_worker, new_key
):
    receiver = Receiver().start()
    try:
        with Client(farm, new_key()) as client:
            job = client.jobs.submit(
                model="echo",
                prompt="p",
                image=data_url(png_bytes()),
                webhook_url=receiver.url("/hook"),
            )
            secret = client.webhooks.secret()
        (delivery,) = wait_for(lambda: receiver.requests("/hook"), 60, "the job's webhook")
    finally:
        receiver.stop()
    # Header names as a framework may spell them.
    headers = {name.title(): value for name, value in delivery.headers.items()}
    event = verify_webhook(secret, headers, delivery.body)
    assert (event.type, event.data["id"], event.id) == (
        "job.succeeded",
        str(job.id),
        delivery.webhook_id,
    )
    tampered = delivery.body.replace(b'"succeeded"', b'"failed"', 1)
    assert tampered != delivery.body
    with pytest.raises(WebhookVerificationError):
        verify_webhook(secret, headers, tampered)
    with pytest.raises(WebhookVerificationError):
        verify_webhook("whsec_" + "A" * 43 + "=", headers, delivery.body)
    with pytest.raises(WebhookVerificationError):  # not a ValueError from the parser
        verify_webhook(secret, {**headers, "Webhook-Signature": "v1"}, delivery.body)


# --- live progress (Server-Sent Events) -------------------------------------------------------

TRANSITIONS = ("job.queued", "job.running", "job.succeeded")


class CuttingRelay:
    """Relays event streams from ``upstream`` line by line as they come; the first one is
    cut (the connection closed mid-body, as a dropped network does) after ``after`` events
    with an id. Notes each request's Last-Event-ID."""

    def __init__(self, upstream: str, after: int) -> None:
        self.upstream, self.after = upstream, after
        self.last_event_ids: list[str | None] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                relay.last_event_ids.append(self.headers.get("Last-Event-ID"))
                cut, ids = len(relay.last_event_ids) == 1, 0
                keep = ("authorization", "last-event-id", "accept")
                headers = {k: v for k, v in self.headers.items() if k.lower() in keep}
                url = relay.upstream + self.path
                with httpx.stream("GET", url, headers=headers, timeout=30) as r:
                    self.send_response(r.status_code)
                    self.send_header("Content-Type", r.headers["content-type"])
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for line in r.iter_lines():
                        chunk = (line + "\n").encode()
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                        ids += line.startswith("id:")
                        if cut and ids > relay.after and line == "":
                            self.close_connection = True  # no last chunk: a cut body
                            return
                    self.wfile.write(b"0\r\n\r\n")

            def log_message(self, *_: object) -> None:
                pass

        return Handler


class CannedStream(BaseHTTPRequestHandler):
    """Answers every GET with one fixed event stream: ids on some events, not on others."""

    BODY = (
        b"id: 5\nevent: snapshot\ndata: {}\n\n"
        b"event: batch.progress\ndata: {}\n\n"  # a progress event has no id of its own
        b"id: 7\nevent: job.running\ndata: {}\n\n"
        b"event: end\ndata: {}\n\n"
    )

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(self.BODY)))
        self.end_headers()
        self.wfile.write(self.BODY)

    def log_message(self, *_: object) -> None:
        pass


def test_an_event_without_an_id_has_none_not_the_last_one():
    """httpx-sse repeats the last id on an id-less event (SSE's lastEventId); the client
    gives such an event no id, so a caller counting log events counts only those."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), CannedStream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with Client(f"http://127.0.0.1:{server.server_port}", "imf_x", retries=QUICK) as client:
            events = list(client.batches.events(uuid.uuid4()))
    finally:
        server.shutdown()
    assert [(e.event, e.id) for e in events] == [
        ("snapshot", "5"),
        ("batch.progress", None),
        ("job.running", "7"),
        ("end", None),
    ]


def test_a_client_sees_every_transition_once_across_a_dropped_stream(farm, new_key):
    key = new_key()
    with Client(farm, key) as client:
        body = batch_body(model="echo", variants=1)  # 2 images x 3 prompts = 6 jobs
        batch_id = client.submit_batch(body)["id"]
    relay = CuttingRelay(farm, after=8)
    try:
        with Client(relay.url, key, retries=QUICK) as client:
            # From the start of the log; the client resumes by itself after the cut.
            events = list(client.batches.events(batch_id, last_event_id="0"))
    finally:
        relay.close()
    snapshots = [i for i, e in enumerate(events) if e.event == "snapshot"]
    assert len(snapshots) == 2  # one per connection
    before_cut = [e.id for e in events[: snapshots[1]] if e.id is not None]
    assert len(before_cut) == 9  # the relay's cut: after 9 events with an id
    assert relay.last_event_ids == ["0", before_cut[-1]], "resumed after the last id seen"
    assert events[-1].event == "end" and events[-1].data["status"] == "succeeded"
    assert events[-1].data["counts"]["succeeded"] == 6

    transitions = [(e.event, e.data["job_id"], e.id) for e in events if e.event in TRANSITIONS]
    per_job = Counter((job, event) for event, job, _ in transitions)
    assert len({job for job, _ in per_job}) == 6
    assert set(per_job.values()) == {1}, "a transition was missed or repeated"
    assert len(per_job) == 6 * len(TRANSITIONS)
    assert len({i for *_, i in transitions}) == len(transitions)
    for job in {job for job, _ in per_job}:  # each job's own order
        assert [e for e, j, _ in transitions if j == job] == list(TRANSITIONS)


def test_a_job_stream_ends_with_the_job_and_pings_while_following(farm, new_key):
    key = new_key()
    auth = {"Authorization": f"Bearer {key}"}
    with Client(farm, key) as client:
        job_id = client.submit_job(**job_body(model="echo"))["id"]
        events = list(client.jobs.events(job_id))
    assert events[0].event == "snapshot" and events[0].data["job_id"] == job_id
    assert events[-1].event == "end" and events[-1].data["status"] == "succeeded"
    assert "job.succeeded" in [e.event for e in events]
    # ?follow=true keeps a finished job's stream open: keep-alive comments arrive.
    started, pings = time.monotonic(), 0
    url = f"{farm}/v1/jobs/{job_id}/events?follow=true"
    with httpx.stream("GET", url, headers=auth, timeout=10) as r:
        for event in sse.parse(r.iter_lines()):
            assert event.event != "end"
            pings += event.event == "comment"
            if pings == 2:
                break
    assert time.monotonic() - started < 5


def test_event_streams_need_a_key_and_hide_other_teams(farm, new_key):
    owner, other = new_key(), new_key()
    with Client(farm, owner) as client:
        job_id = client.submit_job(**job_body(model="echo"))["id"]
        batch_id = client.submit_batch(batch_body(model="echo", variants=1))["id"]
    for path in (f"/v1/jobs/{job_id}/events", f"/v1/batches/{batch_id}/events"):
        assert httpx.get(f"{farm}{path}").status_code == 401
        foreign = httpx.get(f"{farm}{path}", headers={"Authorization": f"Bearer {other}"})
        assert foreign.status_code == 404, foreign.text
    unknown = f"{farm}/v1/batches/{uuid.uuid4()}/events"
    assert httpx.get(unknown, headers={"Authorization": f"Bearer {owner}"}).status_code == 404


# --- the README's block -----------------------------------------------------------------------


def readme_python_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python client") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "no python block under '## Python client'"
    return match.group(1)


def test_readme_python_client_block_runs_as_pasted(farm, new_key, tmp_path):
    block = readme_python_block()
    # The only swap: the echo model renders in milliseconds, tiny in seconds.
    assert block.count('model="tiny"') == 2
    script = block.replace('model="tiny"', 'model="echo"')
    (tmp_path / "shoe.png").write_bytes(png_bytes(96, 80))
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGFARM_")}
    env |= {"IMGFARM_API_URL": farm, "IMGFARM_API_KEY": new_key()}
    ran = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert ran.stdout.startswith("succeeded [PosixPath('renders/"), ran.stdout
    renders = tmp_path / "renders"
    job_files = [p.name for p in renders.glob("*.png")]
    assert len(job_files) == 1 and re.fullmatch(r"[0-9a-f-]{36}-0\.png", job_files[0])
    batch_files = sorted(p.relative_to(renders).as_posix() for p in renders.glob("*/*/*.png"))
    assert batch_files == ["image-1/on-sand/1.png", "image-1/on-snow/1.png"]


def test_the_command_does_not_import_the_client_until_it_is_used():
    """``import imgfarm`` runs for every ``imgfarm`` command; the client's imports (the
    api's schemas pull in SQLAlchemy) wait for ``from imgfarm import Client``."""
    probe = (
        "import sys, imgfarm\n"
        "assert 'imgfarm.client' not in sys.modules and 'shared.schemas' not in sys.modules\n"
        "from imgfarm import Client, verify_webhook\n"
        "print(Client.__module__, verify_webhook.__module__)\n"
    )
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["imgfarm.client", "imgfarm.webhooks"]

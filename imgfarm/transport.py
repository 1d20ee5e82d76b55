"""HTTP to the imgfarm api: the API key, retries, idempotency keys, errors and downloads.

Every call goes through ``RetryPolicy.call`` (429/503 and lost connections). A POST that
creates work gets an ``Idempotency-Key`` (a fresh uuid4 unless the caller gives one) that
all retries of that call repeat: the api then answers a retry whose first answer was lost
with that answer, and creates nothing twice.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
from httpx_sse import EventSource

from imgfarm.retries import TRANSIENT_ERRORS, RetryPolicy
from shared.webhooks import parse_retry_after

IDEMPOTENCY_HEADER = "Idempotency-Key"
# An event stream sends a keep-alive at least every 15 s: this long without a byte is a
# dead connection, resumed like a dropped one.
STREAM_READ_TIMEOUT_SECONDS = 60.0


class ApiError(RuntimeError):
    """The api (or a storage URL) answered with an error status; retrying will not help,
    or the retries were spent (429/503: ``retry_after`` says what the server asked for)."""

    def __init__(self, response: httpx.Response) -> None:
        try:
            body = response.json()
        except ValueError:
            body = None
        detail = body.get("detail", response.text) if isinstance(body, dict) else response.text
        super().__init__(f"{response.status_code}: {detail}")
        self.status_code = response.status_code
        self.detail: str = str(detail)
        # [{"field": ..., "message": ...}] for a refused request body
        self.errors: list[dict[str, str]] = body.get("errors", []) if isinstance(body, dict) else []
        self.retry_after = parse_retry_after(response.headers.get("retry-after"), datetime.now(UTC))
        self.response = response


def new_idempotency_key() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class StreamEvent:
    """One Server-Sent Event of ``/v1/batches/{id}/events`` or ``/v1/jobs/{id}/events``:
    ``event`` is its type (``snapshot``, ``job.running``, ..., ``end``), ``id`` its place in
    the log (None for snapshot-like events that have none)."""

    event: str
    data: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


class Transport:
    """One keep-alive connection pool to the api (with the key) and one for foreign hosts
    (presigned S3 URLs: they carry their own authorization and must not get our key)."""

    def __init__(self, base_url: str, api_key: str, timeout: float, retries: RetryPolicy) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self.retries = retries
        self.http = httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout
        )
        # Made up front, not on first use: threads share the transport (batch downloads).
        self._plain_http = httpx.Client(timeout=timeout)

    def close(self) -> None:
        self.http.close()
        self._plain_http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send (with retries); raises ApiError on an error status."""
        response = self.retries.call(lambda: self.http.request(method, path, **kwargs))
        if response.status_code >= 400:
            raise ApiError(response)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    def create(self, path: str, body: dict[str, Any], idempotency_key: str | None) -> Any:
        """POST work with an ``Idempotency-Key``: the caller's, or one new key for this call
        that every retry of it repeats."""
        headers = {IDEMPOTENCY_HEADER: idempotency_key or new_idempotency_key()}
        return self.json("POST", path, json=body, headers=headers)

    def events(self, path: str, last_event_id: str | None = None) -> Iterator[StreamEvent]:
        """Follow an event stream until its ``end`` event. A dropped or silent connection
        is opened again with ``Last-Event-ID`` (each through the retry policy), so every
        event comes once; the policy's attempts bound the reconnects that bring nothing."""
        drops = 0
        while True:
            headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
            request = self.http.build_request(
                "GET",
                path,
                headers={**headers, "Accept": "text/event-stream"},
                timeout=httpx.Timeout(self.http.timeout.connect, read=STREAM_READ_TIMEOUT_SECONDS),
            )
            try:
                response = self.retries.call(partial(self.http.send, request, stream=True))
                try:
                    if response.status_code >= 400:
                        response.read()
                        raise ApiError(response)
                    seen: str | None = None  # the last id of this connection
                    for sse in EventSource(response).iter_sse():
                        drops = 0
                        # httpx-sse repeats the last id on an event that has none (SSE's
                        # lastEventId); log ids only grow, so a repeat is not the event's own.
                        own = sse.id if sse.id and sse.id != seen else None
                        seen = sse.id or seen
                        if own:
                            last_event_id = own
                        event = StreamEvent(sse.event, json.loads(sse.data or "{}"), own)
                        yield event
                        if event.event == "end":
                            return
                finally:
                    response.close()
            except TRANSIENT_ERRORS:
                pass
            drops += 1  # cut (or closed without its end): resume after the last event seen
            if drops >= self.retries.attempts:
                raise ConnectionError(f"event stream {path} dropped {drops} times in a row")
            time.sleep(min(self.retries.backoff_seconds * 2 ** (drops - 1), 5.0))

    def plain(self) -> httpx.Client:
        """The pool without the API key (presigned and signed URLs authorize themselves)."""
        return self._plain_http

    def fetch_to(self, url: str, path: Path) -> Path:
        """Stream an output URL to ``path`` (with retries). Written to a ``.part`` file and
        renamed, so a partial file never has the final name and is simply fetched again.
        Only a URL on the api's own origin is sent the API key."""
        url = urljoin(self.base_url, url)
        http = self.http if _origin(url) == _origin(self.base_url) else self.plain()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.part")

        def fetch_once() -> httpx.Response:
            with http.stream("GET", url) as response:
                if response.status_code >= 400:
                    response.read()
                    return response
                with open(tmp, "wb") as f:
                    for chunk in response.iter_bytes():
                        f.write(chunk)
            return response

        response = self.retries.call(fetch_once)
        if response.status_code >= 400:
            raise ApiError(response)
        tmp.replace(path)
        return path


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port

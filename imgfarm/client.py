"""The imgfarm API from Python.

::

    from imgfarm import Client

    with Client("http://127.0.0.1:8000", api_key) as farm:
        (photo,) = farm.uploads.create(Path("shoe.png"))
        job = farm.jobs.submit(model="tiny", prompt="a shoe on snow", image=photo)
        done = farm.jobs.wait(job.id)
        farm.jobs.download(done, Path("renders"))

``client.jobs``, ``client.batches``, ``client.uploads`` and ``client.webhooks`` (see
imgfarm/resources.py) take and return the api's pydantic schemas (shared/schemas.py).
Every call is retried on 429/503 (after the server's ``Retry-After``) and on lost
connections (imgfarm/retries.py); submissions carry an idempotency key, so a retry never
creates a job twice. ``verify_webhook`` (imgfarm/webhooks.py) checks our signatures.

The flat methods below the typed ones (``submit_job``, ``get_batch``, ...) answer the api's
JSON as dicts: the CLI's ``submit`` and ``demo`` commands use them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imgfarm.resources import FINAL, Batches, Jobs, Uploads, Webhooks
from imgfarm.retries import RetryPolicy
from imgfarm.transport import ApiError, Transport

__all__ = ["FINAL", "ApiError", "Client", "RetryPolicy"]


class Client:
    """A connection to one farm as one team (its API key). Use it as a context manager,
    or call ``close()``; one client may be shared by threads.

    ``timeout`` bounds each HTTP request; ``retries`` says how 429/503 answers and lost
    connections are retried (default: 5 attempts within 60 s).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        timeout: float = 30.0,
        *,
        retries: RetryPolicy | None = None,
    ) -> None:
        self._transport = Transport(base_url, api_key, timeout, retries or RetryPolicy())
        self.jobs = Jobs(self._transport)
        self.batches = Batches(self._transport)
        self.uploads = Uploads(self._transport)
        self.webhooks = Webhooks(self._transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pools."""
        self._transport.close()

    # --- JSON as dicts (the CLI's ``submit`` and ``demo``) ------------------------------------

    def submit_job(self, **body: Any) -> dict[str, Any]:
        """``POST /v1/jobs`` (a new idempotency key per call)."""
        return self._transport.create("/v1/jobs", body, None)  # type: ignore[no-any-return]

    def get_job(self, job_id: str) -> dict[str, Any]:
        return self._transport.json("GET", f"/v1/jobs/{job_id}")  # type: ignore[no-any-return]

    def wait(self, job_id: str, timeout: float = 300.0, interval: float = 0.2) -> dict[str, Any]:
        """Poll until the job is final; raises TimeoutError past ``timeout``. (``interval``
        is kept for callers: ``jobs.wait`` backs off by itself.)"""
        self.jobs.wait(job_id, timeout=timeout)
        return self.get_job(job_id)

    def download(self, url: str, path: Path) -> Path:
        """Fetch a (presigned or signed) output URL to ``path``; it needs no API key."""
        return self._transport.fetch_to(url, path)

    def upload_files(self, files: list[tuple[str, bytes, str]]) -> list[dict[str, Any]]:
        """Multipart ``POST /v1/uploads`` of (filename, bytes, content type) triples."""
        parts = [("files", file) for file in files]
        return self._transport.json("POST", "/v1/uploads", files=parts)["uploads"]  # type: ignore[no-any-return]

    def presign_upload(self, filename: str) -> dict[str, Any]:
        """A presigned PUT URL for one file (S3 storage only: 400 otherwise)."""
        answer = self._transport.json("POST", "/v1/uploads/presign", json={"filename": filename})
        return answer  # type: ignore[no-any-return]

    def put_presigned(self, url: str, data: bytes) -> None:
        """PUT bytes to a presigned URL; it carries its own authorization, not our key."""
        plain = self._transport.plain()
        response = self._transport.retries.call(lambda: plain.put(url, content=data))
        if response.status_code >= 400:
            raise ApiError(response)

    def complete_upload(self, upload_id: str) -> dict[str, Any]:
        return self._transport.json("POST", f"/v1/uploads/{upload_id}/complete")  # type: ignore[no-any-return]

    def submit_batch(
        self, body: dict[str, Any], idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """``POST /v1/batches`` with the caller's idempotency key, or a new one."""
        return self._transport.create("/v1/batches", body, idempotency_key)  # type: ignore[no-any-return]

    def get_batch(self, batch_id: str) -> dict[str, Any]:
        return self._transport.json("GET", f"/v1/batches/{batch_id}")  # type: ignore[no-any-return]

    def batch_manifest(self, batch_id: str) -> dict[str, Any]:
        return self._transport.json("GET", f"/v1/batches/{batch_id}/manifest")  # type: ignore[no-any-return]

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        return self._transport.json("POST", f"/v1/batches/{batch_id}/cancel")  # type: ignore[no-any-return]

    def retry_batch(self, batch_id: str) -> dict[str, Any]:
        return self._transport.json("POST", f"/v1/batches/{batch_id}/retry")  # type: ignore[no-any-return]

    def fetch_to(self, url: str, path: Path) -> Path:
        """Stream an output URL to ``path`` atomically: a partial file never has the final
        name, so an interrupted download is simply fetched again next time."""
        return self._transport.fetch_to(url, path)

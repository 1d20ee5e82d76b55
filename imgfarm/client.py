"""A small HTTP client for the imgfarm API (used by the CLI and the demo)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

FINAL = {"succeeded", "failed", "canceled"}


class ApiError(RuntimeError):
    """The API answered with an error status."""

    def __init__(self, response: httpx.Response) -> None:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        super().__init__(f"{response.status_code}: {detail}")
        self.status_code = response.status_code


class Client:
    def __init__(self, base_url: str, api_key: str, timeout: float = 30.0) -> None:
        self.http = httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout
        )
        self._plain_http: httpx.Client | None = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.http.close()
        if self._plain_http is not None:
            self._plain_http.close()

    def _json(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise ApiError(response)
        return response.json()

    def submit_job(self, **body: Any) -> dict[str, Any]:
        return self._json(self.http.post("/v1/jobs", json=body))  # type: ignore[no-any-return]

    def get_job(self, job_id: str) -> dict[str, Any]:
        return self._json(self.http.get(f"/v1/jobs/{job_id}"))  # type: ignore[no-any-return]

    def wait(self, job_id: str, timeout: float = 300.0, interval: float = 0.2) -> dict[str, Any]:
        """Poll until the job is final; raises TimeoutError past ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            if job["status"] in FINAL:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout}s")
            time.sleep(interval)

    def download(self, url: str, path: Path) -> Path:
        """Fetch a (presigned or signed) output URL; it needs no API key."""
        response = httpx.get(url, timeout=60)
        response.raise_for_status()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(response.content)
        return path

    # --- uploads and batches (``imgfarm submit``) ---------------------------------------------

    def upload_files(self, files: list[tuple[str, bytes, str]]) -> list[dict[str, Any]]:
        """Multipart ``POST /v1/uploads`` of (filename, bytes, content type) triples."""
        parts = [("files", file) for file in files]
        return self._json(self.http.post("/v1/uploads", files=parts))["uploads"]  # type: ignore[no-any-return]

    def presign_upload(self, filename: str) -> dict[str, Any]:
        """A presigned PUT URL for one file (S3 storage only: 400 otherwise)."""
        response = self.http.post("/v1/uploads/presign", json={"filename": filename})
        return self._json(response)  # type: ignore[no-any-return]

    def put_presigned(self, url: str, data: bytes) -> None:
        """PUT bytes to a presigned URL; it carries its own authorization, not our key."""
        response = self._plain().put(url, content=data)
        if response.status_code >= 400:
            raise ApiError(response)

    def complete_upload(self, upload_id: str) -> dict[str, Any]:
        return self._json(self.http.post(f"/v1/uploads/{upload_id}/complete"))  # type: ignore[no-any-return]

    def submit_batch(
        self, body: dict[str, Any], idempotency_key: str | None = None
    ) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        response = self.http.post("/v1/batches", json=body, headers=headers)
        return self._json(response)  # type: ignore[no-any-return]

    def get_batch(self, batch_id: str) -> dict[str, Any]:
        return self._json(self.http.get(f"/v1/batches/{batch_id}"))  # type: ignore[no-any-return]

    def batch_manifest(self, batch_id: str) -> dict[str, Any]:
        return self._json(self.http.get(f"/v1/batches/{batch_id}/manifest"))  # type: ignore[no-any-return]

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        return self._json(self.http.post(f"/v1/batches/{batch_id}/cancel"))  # type: ignore[no-any-return]

    def retry_batch(self, batch_id: str) -> dict[str, Any]:
        return self._json(self.http.post(f"/v1/batches/{batch_id}/retry"))  # type: ignore[no-any-return]

    def fetch_to(self, url: str, path: Path) -> Path:
        """Stream an output URL to ``path`` atomically: a partial file never has the final
        name, so an interrupted download is simply fetched again next time."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.part")
        with self._plain().stream("GET", url) as response:
            if response.status_code >= 400:
                response.read()
                raise ApiError(response)
            with open(tmp, "wb") as f:
                for chunk in response.iter_bytes():
                    f.write(chunk)
        tmp.replace(path)
        return path

    def _plain(self) -> httpx.Client:
        # Presigned and signed URLs must not receive the API key (they may be on S3).
        if self._plain_http is None:
            self._plain_http = httpx.Client(timeout=self.http.timeout)
        return self._plain_http

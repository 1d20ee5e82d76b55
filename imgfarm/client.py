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

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.http.close()

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

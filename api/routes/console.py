"""The web console: one app shell for every view, and its static assets, with no key.

Every view is a URL (``/``, ``/batches/new``, ``/batches/{id}``, ``/jobs/{id}``); the server
answers each with the same shell and the script routes on ``location``. The shell and assets
hold no data: everything is read from ``/v1`` with the key the person pasted, which stays in
the tab's sessionStorage and travels only in the Authorization header.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from shared.storage import LocalStorage, S3Storage

STATIC = Path(__file__).resolve().parent.parent / "console" / "static"
ASSETS_PATH = "/console/assets"


def security_headers(storage: LocalStorage | S3Storage) -> dict[str, str]:
    """A strict CSP: our own scripts and styles only, no inline code, images from us, blob
    URLs (thumbnails fetched with the key) and the storage's origin (full-size outputs
    and, on S3, presigned uploads are its URLs)."""
    origin = storage_origin(storage)
    csp = "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            f"img-src 'self' blob: data: {origin}",
            f"connect-src 'self' {origin}",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
    }


def storage_origin(storage: LocalStorage | S3Storage) -> str:
    """scheme://host[:port] of the URLs the storage hands out (presigned or signed by us)."""
    url = urlparse(storage.url("console-origin-probe", 60))
    return f"{url.scheme}://{url.netloc}"


class ConsoleAssets(StaticFiles):
    """The package's static files, each answer with the console's security headers."""

    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__(directory=STATIC, follow_symlink=False)
        self._headers = headers

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        # No build step, so no hashed names: revalidate (ETag) rather than cache blindly.
        response.headers.update({**self._headers, "Cache-Control": "no-cache"})
        return response


def install_console(app: FastAPI, storage: LocalStorage | S3Storage) -> None:
    """Serve the shell at the console's URLs and the assets under /console/assets."""
    headers = security_headers(storage)
    shell = (STATIC / "index.html").read_text(encoding="utf-8")

    def answer() -> HTMLResponse:
        return HTMLResponse(shell, headers={**headers, "Cache-Control": "no-cache"})

    # One shell for every view: deep links and the back button work without a server round
    # of rendering, and the shell carries nothing that needs a key.
    for path in ("/", "/batches/new", "/batches/{batch_id}", "/jobs/{job_id}"):
        app.add_api_route(path, answer, methods=["GET"], include_in_schema=False)
    app.mount(ASSETS_PATH, ConsoleAssets(headers), name="console-assets")

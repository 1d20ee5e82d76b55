"""/docs renders with the network cut off: every asset comes from the api itself."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.services import launch_api

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

pytestmark = pytest.mark.integration


def test_docs_page_renders_offline(client, spawn):
    page_html = client.get("/docs").text
    assert "cdn.jsdelivr.net" not in page_html and "unpkg.com" not in page_html
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: run .ci/services (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    api = launch_api(spawn)
    outside: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()

            def offline(route) -> None:  # noqa: ANN001 - playwright's Route
                host = urlparse(route.request.url).hostname
                if host in ("127.0.0.1", "localhost"):
                    route.continue_()
                else:  # the network is cut: anything else would be a blank page offline
                    outside.append(route.request.url)
                    route.abort()

            page.route("**/*", offline)
            page.goto(f"{api}/docs")
            expect(page.locator(".swagger-ui .info .title")).to_contain_text("imgfarm")
            expect(page.locator(".opblock-summary-path").first).to_be_visible()
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "docs-offline.png"), full_page=False)
        finally:
            browser.close()
    assert outside == [], f"/docs asked outside hosts: {outside}"

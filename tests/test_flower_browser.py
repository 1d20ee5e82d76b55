"""Flower as ops see it: a headless Chromium logs in (basic auth) after jobs rendered and sees
the render worker online and its ``imgfarm.render`` tasks succeeded, with job ids as
arguments. Screenshots land in test-artifacts/.

Needs Debian's chromium (``/usr/bin/chromium``, installed by .ci/services) and the
``playwright`` Python package, which drives it; no browser is downloaded.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from tests.factories import job_body
from tests.services import free_port, wait_answers, wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
USER, PASSWORD = "ops", "flower-test-password"

pytestmark = pytest.mark.integration


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def flower_url(spawn) -> str:
    """``imgfarm flower`` with basic auth and a short inspect timeout, once it answers."""
    port = free_port()
    spawn(
        "flower",
        "--port",
        str(port),
        "--address",
        "127.0.0.1",
        "--inspect-timeout",
        "0.3",
        env={"IMGFARM_FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}"},
    )
    url = f"http://127.0.0.1:{port}"
    wait_answers(f"{url}/healthcheck", 60, "flower /healthcheck")
    return url


def test_flower_in_a_browser_shows_worker_online_and_tasks_succeeded(
    client, new_key, start_worker, start_dispatcher, flower_url
):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: run .ci/services (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    # Flower sees tasks through events from the moment it runs: start it before the jobs.
    worker = start_worker("tiny")
    start_dispatcher()
    key = new_key()
    job_ids = [
        client.post("/v1/jobs", json=job_body(seed=seed), headers=auth(key)).json()["id"]
        for seed in (1, 2, 3)
    ]

    def all_succeeded() -> bool:
        statuses = [
            client.get(f"/v1/jobs/{j}", headers=auth(key)).json()["status"] for j in job_ids
        ]
        assert "failed" not in statuses, statuses
        return all(s == "succeeded" for s in statuses)

    # Wide: a loaded CI machine (2 cores, several processes) can stall a first render.
    wait_for(all_succeeded, 180, "3 jobs to render", interval=0.2)

    # The UI and its API need the password; /metrics does not (hence internal-only).
    assert httpx.get(f"{flower_url}/", timeout=5).status_code == 401
    assert httpx.get(f"{flower_url}/api/tasks", timeout=5).status_code == 401
    assert httpx.get(f"{flower_url}/metrics", timeout=5).status_code == 200

    def flower_saw_them() -> bool:
        tasks = httpx.get(f"{flower_url}/api/tasks", auth=(USER, PASSWORD), timeout=5).json()
        done = [t for t in tasks.values() if t.get("state") == "SUCCESS"]
        return all(any(j in str(t.get("args")) for t in done) for j in job_ids)

    wait_for(flower_saw_them, 60, "flower to receive the task events", interval=0.2)
    worker_name = worker.log().split(" ready.")[0].rsplit(" ", 1)[-1]
    assert worker_name.startswith("tiny-"), worker_name

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            context = browser.new_context(
                http_credentials={"username": USER, "password": PASSWORD},
                viewport={"width": 1400, "height": 900},
            )
            page = context.new_page()

            page.goto(f"{flower_url}/workers")
            row = page.locator("#workers-table tbody tr", has_text=worker_name)
            expect(row).to_be_visible(timeout=20_000)
            expect(row).to_contain_text("Online", timeout=20_000)
            page.screenshot(path=str(ARTIFACTS / "flower-workers.png"), full_page=True)

            page.goto(f"{flower_url}/tasks")
            for job_id in job_ids:
                task_row = page.locator("table tbody tr", has_text=job_id)
                expect(task_row).to_contain_text("imgfarm.render", timeout=20_000)
                expect(task_row).to_contain_text("SUCCESS")
            page.screenshot(path=str(ARTIFACTS / "flower-tasks.png"), full_page=True)
        finally:
            browser.close()
    assert (ARTIFACTS / "flower-tasks.png").stat().st_size > 10_000

"""The console's batch page at 1,000 jobs on the embedded stack (SQLite, local storage, echo):
seconds from navigation to the grid's first paint, to the first screen of thumbnails and
to all 1,000 thumbnails (a 1920-wide viewport tall enough to hold the grid), cold
(thumbnails made on first request) then warm (kept in storage). Prints figures; never fails.

    python bench/console_page.py               # 100 images x 5 prompts x 2 variants
    python bench/console_page.py --images 10   # 100 jobs: a quick look
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import skimage.data
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from imgfarm.embedded import EmbeddedStack  # noqa: E402

LOADED = "document.querySelectorAll('a.cell img[data-loaded]').length"


def photos(count: int) -> list[tuple[str, bytes, str]]:
    """``count`` distinct 256x256 crops of a real photo, as PNG upload parts."""
    source = skimage.data.astronaut()
    rng = np.random.default_rng(7)
    parts = []
    for i in range(count):
        y, x = rng.integers(0, 256, size=2)
        out = io.BytesIO()
        Image.fromarray(source[y : y + 256, x : x + 256]).save(out, "PNG")
        parts.append(("files", (f"SKU-{i:03}.png", out.getvalue(), "image/png")))
    return parts


def make_batch(stack: EmbeddedStack, images: int) -> tuple[str, int]:
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    with httpx.Client(base_url=stack.url, headers=headers, timeout=120) as client:
        uploads = client.post("/v1/uploads", files=photos(images)).json()["uploads"]
        body = {
            "model": "echo",
            "images": [{"image": u["id"], "sku": u["filename"][:-4]} for u in uploads],
            "prompts": [{"name": f"p{i}", "prompt": f"prompt {i}"} for i in range(5)],
            "variants": 2,
        }
        batch = client.post("/v1/batches", json=body).json()
        started = time.monotonic()
        while client.get(f"/v1/batches/{batch['id']}").json()["status"] != "succeeded":
            time.sleep(0.5)
        print(f"rendered {batch['job_count']} echo jobs in {time.monotonic() - started:.1f} s")
        return batch["id"], batch["job_count"]


# The first screen: the cells a 1920x800 window shows at the top of the page.
ON_SCREEN = "[...document.querySelectorAll('a.cell img')].filter(i => i.y < 800)"


def wait_js(page, expression: str, timeout: float = 300) -> None:  # noqa: ANN001
    """Poll ``expression`` in the page (wait_for_function needs eval, which our CSP refuses)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(f"() => {expression}"):
        if time.monotonic() > deadline:
            raise TimeoutError(expression)
        time.sleep(0.02)


def page_times(browser, stack: EmbeddedStack, batch: str, jobs: int, height: int) -> list[float]:  # noqa: ANN001
    """Seconds from opening the batch's URL (key pasted) to first paint, first screen, all."""
    page = browser.new_page(viewport={"width": 1920, "height": height})
    page.goto(f"{stack.url}/")
    page.fill("#key", stack.api_key)
    page.click("form.signin button[type=submit]")
    page.wait_for_selector("h1:text('Batches')")
    start = time.monotonic()
    page.goto(f"{stack.url}/batches/{batch}")
    page.wait_for_selector("a.cell")
    times = [time.monotonic() - start]
    wait_js(page, f"{ON_SCREEN}.every(i => i.dataset.loaded)")
    times.append(time.monotonic() - start)
    wait_js(page, f"{LOADED} === {jobs}")
    times.append(time.monotonic() - start)
    page.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100, help="images (x 5 prompts x 2)")
    args = parser.parse_args()
    for name in [k for k in os.environ if k.startswith("IMGFARM_")]:
        del os.environ[name]
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, EmbeddedStack(Path(tmp), models=("echo",)) as stack:
        batch, jobs = make_batch(stack, args.images)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            tall = 200 + 140 * args.images  # every row of the grid inside the viewport
            for label in ("cold", "warm"):  # cold: each thumbnail is made on its request
                paint, screen, full = page_times(browser, stack, batch, jobs, tall)
                print(
                    f"{label}: first paint {paint:.2f} s, first screen {screen:.2f} s, "
                    f"all {jobs} thumbnails {full:.2f} s"
                )
            browser.close()


if __name__ == "__main__":
    main()

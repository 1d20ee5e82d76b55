"""The console's batch page at 1,000 jobs on the embedded stack (SQLite, local storage, echo):
seconds from opening its URL to first paint, first screen of thumbnails and all 1,000 (a
1920-wide viewport holding the grid): cold, warm, revisited. Never fails.

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
import skimage.data
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from imgfarm.embedded import EmbeddedStack  # noqa: E402


def photo(i: int) -> tuple[str, tuple[str, bytes, str]]:
    """Upload part ``i``: a 256x256 crop of a real photo, at an offset of its own."""
    out = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()[i : i + 256, i : i + 256]).save(out, "PNG")
    return ("files", (f"SKU-{i:03}.png", out.getvalue(), "image/png"))


def make_batch(stack: EmbeddedStack, images: int) -> str:
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    with httpx.Client(base_url=stack.url, headers=headers, timeout=120) as client:
        uploaded = client.post("/v1/uploads", files=[photo(i) for i in range(images)]).json()
        images_ = [{"image": u["id"], "sku": u["filename"][:-4]} for u in uploaded["uploads"]]
        prompts = [{"name": f"p{i}", "prompt": f"prompt {i}"} for i in range(5)]
        body = {"model": "echo", "images": images_, "prompts": prompts, "variants": 2}
        batch, started = client.post("/v1/batches", json=body).json(), time.monotonic()
        while client.get(f"/v1/batches/{batch['id']}").json()["status"] != "succeeded":
            time.sleep(0.5)
        print(f"rendered {batch['job_count']} echo jobs in {time.monotonic() - started:.1f} s")
        return str(batch["id"])


# The grid is built whole from the listing, then each thumbnail fills in on its own.
PAINTED = "!!document.querySelector('a.cell')"
CELLS = "[...document.querySelectorAll('a.cell img')]"
FIRST_SCREEN = f"{CELLS}.filter(i => i.y < 800).every(i => i.dataset.loaded)"  # 1920x800
EVERY = f"{CELLS}.every(i => i.dataset.loaded)"


def wait_js(page, expression: str) -> None:  # noqa: ANN001
    """Poll ``expression`` in the page (wait_for_function needs eval, which our CSP refuses)."""
    while not page.evaluate(f"() => {expression}"):
        time.sleep(0.02)


def page_times(context, stack: EmbeddedStack, batch: str) -> list[str]:  # noqa: ANN001
    """Seconds from opening the batch's URL (key pasted) to first paint, first screen, all."""
    page = context.new_page()
    page.goto(f"{stack.url}/")
    page.fill("#key", stack.api_key)
    page.click("form.signin button[type=submit]")
    page.wait_for_selector("h1:text('Batches')")
    start = time.monotonic()
    page.goto(f"{stack.url}/batches/{batch}")
    times = []
    for done in (PAINTED, FIRST_SCREEN, EVERY):
        wait_js(page, done)
        times.append(f"{time.monotonic() - start:.2f}")
    page.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100, help="images (x 5 prompts x 2)")
    args = parser.parse_args()
    for name in [k for k in os.environ if k.startswith("IMGFARM_")]:  # the embedded defaults
        del os.environ[name]
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, EmbeddedStack(Path(tmp), models=("echo",)) as stack:
        batch = make_batch(stack, args.images)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            viewport = {"width": 1920, "height": 200 + 140 * args.images}
            fresh, again = (browser.new_context(viewport=viewport) for _ in range(2))
            # cold: made on request; warm: kept in storage; revisit: the browser's HTTP cache
            for label, context in (("cold", fresh), ("warm", again), ("revisit", again)):
                times = page_times(context, stack, batch)
                print(label, "first paint, first screen, all thumbnails (s):", *times)
            browser.close()


if __name__ == "__main__":
    main()

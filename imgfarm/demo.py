"""``imgfarm demo``: a sample product photo x 4 seasonal prompts through the whole farm."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

from PIL import Image, ImageDraw
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from imgfarm.client import FINAL, Client

SEASONS = {
    "winter": "the sneaker on a snowy wooden porch, soft winter light",
    "spring": "the sneaker in a field of spring tulips, morning dew",
    "summer": "the sneaker on a sunny summer beach, turquoise sea",
    "autumn": "the sneaker on a path of red autumn leaves, golden hour",
}


def sample_product(size: int = 256) -> bytes:
    """A drawn 'sneaker' on a white studio background, as PNG bytes."""
    img = Image.new("RGB", (size, size), (245, 245, 245))
    draw = ImageDraw.Draw(img)
    s = size / 256
    draw.rounded_rectangle(
        (40 * s, 120 * s, 220 * s, 190 * s), radius=int(30 * s), fill=(200, 40, 40)
    )
    draw.polygon(
        [(60 * s, 130 * s), (120 * s, 70 * s), (170 * s, 80 * s), (150 * s, 140 * s)],
        fill=(210, 60, 60),
    )
    draw.rectangle((40 * s, 185 * s, 225 * s, 200 * s), fill=(250, 250, 250), outline=(60, 60, 60))
    for i in range(5):
        x = (95 + 12 * i) * s
        draw.line((x, 95 * s, x + 15 * s, 110 * s), fill=(255, 255, 255), width=max(1, int(3 * s)))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "item"


def run_demo(
    base_url: str,
    api_key: str,
    out: Path,
    console: Console,
    model: str = "tiny",
    timeout: float = 300.0,
) -> list[Path]:
    """Submit the sample variants, follow them with a progress bar, download the outputs."""
    image = data_url(sample_product())
    written: list[Path] = []
    with Client(base_url, api_key) as client:
        jobs = {
            name: client.submit_job(model=model, prompt=prompt, image=image, seed=i)["id"]
            for i, (name, prompt) in enumerate(SEASONS.items())
        }
        results = _follow(client, jobs, console, timeout)
        out.mkdir(parents=True, exist_ok=True)
        for name, job in results.items():
            if job["status"] != "succeeded":
                console.print(f"[red]{name}: {job['status']}: {job.get('error')}")
                continue
            for i, output in enumerate(job["outputs"]):
                ext = output["content_type"].split("/")[-1].replace("jpeg", "jpg")
                written.append(client.download(output["url"], out / f"{slug(name)}-{i}.{ext}"))
    return written


def _follow(client: Client, jobs: dict[str, str], console: Console, timeout: float) -> dict:
    import time

    done: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    columns = (TextColumn("rendering"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("render", total=len(jobs))
        while len(done) < len(jobs):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(jobs) - len(done)} job(s) not done after {timeout}s")
            for name, job_id in jobs.items():
                if name not in done:
                    job = client.get_job(job_id)
                    if job["status"] in FINAL:
                        done[name] = job
            progress.update(task, completed=len(done))
            time.sleep(0.2)
    return done

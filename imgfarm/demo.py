"""``imgfarm demo``: a sample product photo through the whole farm: four seasonal prompts on
``tiny``, the same source through ``echo`` and ``tiny-inpaint``, and a contact sheet of it all."""

from __future__ import annotations

import base64
import io
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from imgfarm.client import FINAL, Client
from imgfarm.contact_sheet import Row, Tile, render_html, render_png

SEASONS = {
    "winter": "the sneaker on a snowy wooden porch, soft winter light",
    "spring": "the sneaker in a field of spring tulips, morning dew",
    "summer": "the sneaker on a sunny summer beach, turquoise sea",
    "autumn": "the sneaker on a path of red autumn leaves, golden hour",
}
# The tiny models' own size: the source is never resampled, so the inpaint render's kept
# pixels are the saved source's own, bit for bit.
SIZE = 64
# One worker process each (EmbeddedStack starts them in parallel).
DEMO_MODELS = ("tiny", "echo", "tiny-inpaint")
SOURCE_FILE = "source.png"
MASK_FILE = "source-mask.png"
SHEET_PNG = "contact-sheet.png"
SHEET_HTML = "contact-sheet.html"
# Drawn at 4x and box-reduced: smooth edges, and untouched background stays exactly flat.
SUPERSAMPLE = 4
STUDIO = (245, 245, 245)
# What to do after the demo, copy-pasteable. sd-turbo's settings as in README's Models.
NEXT_STEPS = """next steps:
imgfarm up   # keeps the farm running; prints its URL and an API key to export

# Real images need real weights, on a GPU: name them in a registry file (README: Models).
cat > models.toml <<'TOML'
[models.sd-turbo]
source = "stabilityai/sd-turbo"
dtype = "bfloat16"
steps = 4
strength = 0.5
guidance_scale = 0.0
TOML
IMGFARM_MODELS=models.toml imgfarm up                        # the api now knows sd-turbo
IMGFARM_MODELS=models.toml imgfarm worker --model sd-turbo   # a second shell, same folder
imgfarm submit photos/ --model sd-turbo --prompt "on a snowy porch" --wait   # after the export"""


@dataclass(frozen=True)
class DemoJob:
    """One job the demo submits, and where its render was saved (None when it failed)."""

    name: str
    model: str
    prompt: str
    seed: int
    note: str = ""
    with_mask: bool = False
    path: Path | None = None
    error: str | None = None


@dataclass(frozen=True)
class DemoResult:
    """Everything the demo wrote under its output folder."""

    source: Path
    mask: Path
    jobs: list[DemoJob]
    sheet_png: Path
    sheet_html: Path
    failed: list[DemoJob] = field(default_factory=list)

    def paths(self) -> list[Path]:
        renders = [job.path for job in self.jobs if job.path is not None]
        return [self.source, self.mask, *renders, self.sheet_png, self.sheet_html]


def demo_jobs() -> list[DemoJob]:
    """The seasons on ``tiny``, then the winter prompt through ``echo`` and ``tiny-inpaint``."""
    seasons = [
        DemoJob(name, "tiny", prompt, seed) for seed, (name, prompt) in enumerate(SEASONS.items())
    ]
    return [
        *seasons,
        DemoJob("echo", "echo", SEASONS["winter"], 0, note="echo ignores the prompt"),
        DemoJob(
            "inpaint",
            "tiny-inpaint",
            SEASONS["winter"],
            0,
            note="outlined: kept, bit-identical",
            with_mask=True,
        ),
    ]


def sample_product(size: int = SIZE) -> bytes:
    """A drawn 'sneaker' on a white studio background, as PNG bytes."""
    img = Image.new("RGB", (size * SUPERSAMPLE, size * SUPERSAMPLE), STUDIO)
    _draw_sneaker(ImageDraw.Draw(img), size * SUPERSAMPLE / 256, mask=False)
    return _png(img.reduce(SUPERSAMPLE))


def product_mask(size: int = SIZE) -> bytes:
    """The inpaint mask for :func:`sample_product`: black keeps every pixel the sneaker
    touches, white repaints the studio background."""
    cover = Image.new("L", (size * SUPERSAMPLE, size * SUPERSAMPLE), 0)
    _draw_sneaker(ImageDraw.Draw(cover), size * SUPERSAMPLE / 256, mask=True)
    return _png(cover.reduce(SUPERSAMPLE).point(lambda v: 0 if v else 255))


def _draw_sneaker(draw: ImageDraw.ImageDraw, s: float, mask: bool) -> None:
    def ink(rgb: tuple[int, int, int]) -> tuple[int, int, int] | int:
        return 255 if mask else rgb

    draw.rounded_rectangle(
        (40 * s, 120 * s, 220 * s, 190 * s), radius=int(30 * s), fill=ink((200, 40, 40))
    )
    draw.polygon(
        [(60 * s, 130 * s), (120 * s, 70 * s), (170 * s, 80 * s), (150 * s, 140 * s)],
        fill=ink((210, 60, 60)),
    )
    draw.rectangle(
        (40 * s, 185 * s, 225 * s, 200 * s),
        fill=ink((250, 250, 250)),
        outline=ink((60, 60, 60)),
        width=max(1, int(4 * s)),
    )
    for i in range(5):
        x = (95 + 12 * i) * s
        draw.line(
            (x, 95 * s, x + 15 * s, 110 * s), fill=ink((255, 255, 255)), width=max(1, int(3 * s))
        )


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "item"


def run_demo(
    base_url: str, api_key: str, out: Path, console: Console, timeout: float = 300.0
) -> DemoResult:
    """Save the source and its mask, submit the demo jobs, follow them with a progress bar,
    download the renders and write the contact sheet (PNG and HTML) beside them."""
    source, mask = sample_product(), product_mask()
    out.mkdir(parents=True, exist_ok=True)
    source_path, mask_path = out / SOURCE_FILE, out / MASK_FILE
    source_path.write_bytes(source)
    mask_path.write_bytes(mask)
    planned = demo_jobs()
    with Client(base_url, api_key) as client:
        ids = {job.name: client.submit_job(**_body(job, source, mask))["id"] for job in planned}
        results = _follow(client, ids, console, timeout)
        jobs = [_save(client, job, results[job.name], out) for job in planned]
    rows = _sheet_rows(source, mask, jobs)
    title = "imgfarm demo: random-weight models render noise; real weights render the product"
    sheet_png, sheet_html = out / SHEET_PNG, out / SHEET_HTML
    sheet_png.write_bytes(render_png(title, rows))
    sheet_html.write_text(render_html(title, rows, png_href=SHEET_PNG), encoding="utf-8")
    failed = [job for job in jobs if job.path is None]
    return DemoResult(source_path, mask_path, jobs, sheet_png, sheet_html, failed)


def _body(job: DemoJob, source: bytes, mask: bytes) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": job.model,
        "prompt": job.prompt,
        "image": data_url(source),
        "seed": job.seed,
        # Explicit: echo's default size is 512, and png keeps inpaint's kept pixels exact.
        "width": SIZE,
        "height": SIZE,
        "output_format": "png",
    }
    if job.with_mask:
        body["mask"] = data_url(mask)
    return body


def _save(client: Client, job: DemoJob, result: dict[str, Any], out: Path) -> DemoJob:
    if result["status"] != "succeeded":
        return replace(job, error=f"{result['status']}: {result.get('error')}")
    (output,) = result["outputs"]
    path = client.download(output["url"], out / f"{slug(job.name)}-0.png")
    return replace(job, path=path)


def _sheet_rows(source: bytes, mask: bytes, jobs: list[DemoJob]) -> list[Row]:
    source_tile = Tile(_open(source), "source", ("the generated product photo",), SOURCE_FILE)
    # Black in the mask keeps: the outline goes around the non-repainted pixels.
    keep = Image.open(io.BytesIO(mask)).convert("L").point(lambda v: 255 if v < 128 else 0)
    tiles = {job.name: _tile(job, keep if job.with_mask else None) for job in jobs}
    seasons = [tiles[name] for name in SEASONS]
    return [
        Row(
            "tiny (img2img, random weights): the source, then each seasonal prompt",
            [
                source_tile,
                *seasons,
            ],
        ),
        Row(
            "the same source through echo (structure kept) and tiny-inpaint (product kept)",
            [source_tile, tiles["echo"], tiles["inpaint"]],
        ),
    ]


def _tile(job: DemoJob, keep: Image.Image | None) -> Tile:
    caption = [job.prompt, f"model {job.model}, seed {job.seed}"]
    if job.note:
        caption.append(job.note)
    if job.path is None:
        blank = Image.new("RGB", (SIZE, SIZE), (128, 128, 128))
        return Tile(blank, f"{job.name} (failed)", [*caption, job.error or ""])
    return Tile(_open(job.path.read_bytes()), job.name, caption, job.path.name, keep)


def _open(png: bytes) -> Image.Image:
    with Image.open(io.BytesIO(png)) as img:
        return img.convert("RGB")


def _follow(
    client: Client, jobs: dict[str, str], console: Console, timeout: float
) -> dict[str, dict[str, Any]]:
    done: dict[str, dict[str, Any]] = {}
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

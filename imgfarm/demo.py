"""``imgfarm demo``: a sample product photo through the whole farm: four seasonal prompts on
``tiny``, the same source through ``echo`` and ``tiny-inpaint``, the product workflow (its
cut-out in a new scene by ``tiny-inpaint``, brought to the ``amazon-main`` and
``instagram-portrait`` presets), and a contact sheet of it all.

The workflow adds one 64 px render and two preset outputs to the first run (well under a
second of CPU: the closing note says what the preset steps cost on this machine), so it is
part of ``imgfarm demo`` rather than a second command."""

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
from shared.presets import Preset, builtin_presets
from worker import presets as marketplace

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
CUTOUT_FILE = "cutout.png"
# The product workflow: the cut-out in a new scene, then one output per marketplace preset.
SCENE_PROMPT = "the sneaker on a marble kitchen counter, morning light"
WORKFLOW_PRESETS = ("amazon-main", "instagram-portrait")
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
    cutout: bool = False  # the source is the transparent cut-out
    presets: tuple[str, ...] = ()
    path: Path | None = None
    # The preset outputs as saved: (preset, path), in the order asked.
    preset_paths: tuple[tuple[str, Path], ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class DemoResult:
    """Everything the demo wrote under its output folder."""

    source: Path
    mask: Path
    cutout: Path
    jobs: list[DemoJob]
    sheet_png: Path
    sheet_html: Path
    failed: list[DemoJob] = field(default_factory=list)
    # Seconds per image of each preset step (worker/presets.py) on this machine's CPU.
    preset_seconds: dict[str, float] = field(default_factory=dict)

    def paths(self) -> list[Path]:
        renders = [
            path
            for job in self.jobs
            for path in [job.path, *(p for _, p in job.preset_paths)]
            if path is not None
        ]
        return [self.source, self.mask, self.cutout, *renders, self.sheet_png, self.sheet_html]


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
        DemoJob(
            "scene",
            "tiny-inpaint",
            SCENE_PROMPT,
            0,
            note="the cut-out kept, a new scene painted around it",
            cutout=True,
            presets=WORKFLOW_PRESETS,
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


def sample_cutout(size: int = SIZE) -> bytes:
    """:func:`sample_product` cut out: the sneaker opaque, everything else transparent (what
    a studio cut-out tool hands over), as PNG bytes."""
    product = Image.open(io.BytesIO(sample_product(size))).convert("RGBA")
    keep = (
        Image.open(io.BytesIO(product_mask(size)))
        .convert("L")
        .point(lambda v: 255 if v < 128 else 0)
    )
    product.putalpha(keep)
    return _png(product)


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
    source, mask, cutout = sample_product(), product_mask(), sample_cutout()
    out.mkdir(parents=True, exist_ok=True)
    source_path, mask_path, cutout_path = out / SOURCE_FILE, out / MASK_FILE, out / CUTOUT_FILE
    source_path.write_bytes(source)
    mask_path.write_bytes(mask)
    cutout_path.write_bytes(cutout)
    planned = demo_jobs()
    with Client(base_url, api_key) as client:
        ids = {
            job.name: client.submit_job(**_body(job, source, mask, cutout))["id"] for job in planned
        }
        results = _follow(client, ids, console, timeout)
        jobs = [_save(client, job, results[job.name], out) for job in planned]
    rows = _sheet_rows(source, mask, cutout, jobs)
    title = "imgfarm demo: random-weight models render noise; real weights render the product"
    sheet_png, sheet_html = out / SHEET_PNG, out / SHEET_HTML
    sheet_png.write_bytes(render_png(title, rows))
    sheet_html.write_text(render_html(title, rows, png_href=SHEET_PNG), encoding="utf-8")
    failed = [job for job in jobs if job.path is None]
    seconds = preset_seconds(cutout, WORKFLOW_PRESETS)
    return DemoResult(
        source_path, mask_path, cutout_path, jobs, sheet_png, sheet_html, failed, seconds
    )


def preset_seconds(cutout: bytes, names: tuple[str, ...], repeats: int = 3) -> dict[str, float]:
    """Seconds per image of each preset's steps (apply and encode, worker/presets.py, the
    worker's own code) on this CPU, from a render of the demo's size: the best of
    ``repeats``. The output's size sets the cost, not the render's."""
    image = Image.open(io.BytesIO(cutout))
    cut = marketplace.Cutout(image.convert("RGB"), image.getchannel("A"))
    presets: dict[str, Preset] = dict(builtin_presets())
    seconds = {}
    for name in names:
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            marketplace.encode(presets[name], marketplace.apply(presets[name], image, cut))
            best = min(best, time.perf_counter() - started)
        seconds[name] = best
    return seconds


def _body(job: DemoJob, source: bytes, mask: bytes, cutout: bytes) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": job.model,
        "prompt": job.prompt,
        "image": data_url(cutout if job.cutout else source),
        "seed": job.seed,
        # Explicit: echo's default size is 512, and png keeps inpaint's kept pixels exact.
        "width": SIZE,
        "height": SIZE,
        "output_format": "png",
    }
    if job.with_mask:
        body["mask"] = data_url(mask)
    if job.presets:
        body["preset"] = list(job.presets)
    return body


def _save(client: Client, job: DemoJob, result: dict[str, Any], out: Path) -> DemoJob:
    if result["status"] != "succeeded":
        return replace(job, error=f"{result['status']}: {result.get('error')}")
    output, *preset_outputs = result["outputs"]
    path = client.download(output["url"], out / f"{slug(job.name)}-0.png")
    saved = tuple(
        (o["preset"], client.download(o["url"], out / f"{slug(job.name)}-{o['preset']}.{_ext(o)}"))
        for o in preset_outputs
    )
    return replace(job, path=path, preset_paths=saved)


def _ext(output: dict[str, Any]) -> str:
    return {"image/jpeg": "jpg", "image/webp": "webp"}.get(output["content_type"], "png")


def _sheet_rows(source: bytes, mask: bytes, cutout: bytes, jobs: list[DemoJob]) -> list[Row]:
    source_tile = Tile(_open(source), "source", ("the generated product photo",), SOURCE_FILE)
    # Black in the mask keeps: the outline goes around the non-repainted pixels.
    keep = Image.open(io.BytesIO(mask)).convert("L").point(lambda v: 255 if v < 128 else 0)
    # The cut-out's opaque pixels are that same region (sample_cutout): outlined too.
    tiles = {job.name: _tile(job, keep if job.with_mask or job.cutout else None) for job in jobs}
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
        Row(
            "the product workflow: the cut-out, a new scene around it, the marketplace images",
            [
                Tile(
                    _open(cutout), "Cut-out", ("the product alone (transparent PNG)",), CUTOUT_FILE
                ),
                replace(tiles["scene"], title="New scene"),
                *_preset_tiles(next(job for job in jobs if job.name == "scene")),
            ],
        ),
    ]


def _preset_tiles(job: DemoJob) -> list[Tile]:
    """One tile per preset output, titled for people: 'Amazon main image 1600×1600'."""
    presets = builtin_presets()
    tiles = []
    for name, path in job.preset_paths:
        with Image.open(path) as img:
            image = img.convert("RGB")
        preset = presets[name]
        title = f"{preset.label} {image.width}×{image.height}"
        rules = f"{preset.format.upper()}, " + (
            "the product on pure white" if preset.needs_cutout else "the new scene reframed"
        )
        tiles.append(Tile(image, title, (rules, f"preset {name}"), path.name))
    return tiles


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

"""``imgfarm demo``: a sample product photo through the whole farm: four seasonal prompts on
``tiny``, the same source through ``echo`` and ``tiny-inpaint``, the product workflow (the
worker cuts the product out of the photo, ``mask: "auto"``, and ``tiny-inpaint`` paints a new
scene around it, brought to the ``amazon-main`` and ``instagram-portrait`` presets), and a
contact sheet of it all.

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
    auto_mask: bool = False  # mask "auto": the worker cuts the product out of the source
    presets: tuple[str, ...] = ()
    path: Path | None = None
    mask_path: Path | None = None  # the mask the worker found (auto_mask), as downloaded
    # The preset outputs as saved: (preset, path), in the order asked.
    preset_paths: tuple[tuple[str, Path], ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class DemoResult:
    """Everything the demo wrote under its output folder."""

    source: Path
    mask: Path
    cutout: Path | None  # the product alone, through the mask the worker found
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
            for path in [job.path, job.mask_path, *(p for _, p in job.preset_paths)]
            if path is not None
        ]
        cutout = [] if self.cutout is None else [self.cutout]
        return [self.source, self.mask, *cutout, *renders, self.sheet_png, self.sheet_html]


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
            note="the product found (mask auto) and kept, a new scene painted around it",
            auto_mask=True,
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


def cut_out(source: bytes, mask: bytes) -> bytes:
    """The product alone: ``source`` opaque where ``mask`` keeps (black), transparent
    elsewhere, as PNG bytes."""
    product = Image.open(io.BytesIO(source)).convert("RGBA")
    product.putalpha(_keep(mask))
    return _png(product)


def _keep(mask: bytes) -> Image.Image:
    """A mask's kept region (black in it) as 255, the rest 0."""
    return Image.open(io.BytesIO(mask)).convert("L").point(lambda v: 255 if v < 128 else 0)


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
        width=max(1, int(12 * s)),  # 3 px at 64: a cut-out at that size still sees it
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
    download the renders (and the mask the worker found) and write the cut-out and the
    contact sheet (PNG and HTML) beside them."""
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
    found = next((job.mask_path for job in jobs if job.mask_path is not None), None)
    cutout = None if found is None else cut_out(source, found.read_bytes())
    cutout_path = None if cutout is None else out / CUTOUT_FILE
    if cutout_path is not None and cutout is not None:
        cutout_path.write_bytes(cutout)
    rows = _sheet_rows(source, mask, cutout, jobs)
    title = "imgfarm demo: random-weight models render noise; real weights render the product"
    sheet_png, sheet_html = out / SHEET_PNG, out / SHEET_HTML
    sheet_png.write_bytes(render_png(title, rows))
    sheet_html.write_text(render_html(title, rows, png_href=SHEET_PNG), encoding="utf-8")
    failed = [job for job in jobs if job.path is None]
    # Timed on the drawn cut-out when the worker's is missing: the size sets the cost.
    seconds = preset_seconds(cutout or cut_out(source, mask), WORKFLOW_PRESETS)
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
    if job.auto_mask:  # the source is a product on a plain backdrop: the studio cut-out
        body["mask"] = "auto"
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
    found = None
    if job.auto_mask and result.get("mask_url"):
        found = client.download(result["mask_url"], out / f"{slug(job.name)}-mask.png")
    return replace(job, path=path, mask_path=found, preset_paths=saved)


def _ext(output: dict[str, Any]) -> str:
    return {"image/jpeg": "jpg", "image/webp": "webp"}.get(output["content_type"], "png")


def _sheet_rows(source: bytes, mask: bytes, cutout: bytes | None, jobs: list[DemoJob]) -> list[Row]:
    source_tile = Tile(_open(source), "source", ("the generated product photo",), SOURCE_FILE)

    # Black in a mask keeps: the outline goes around the non-repainted pixels (the given
    # mask's, or the one the worker found).
    def kept(job: DemoJob) -> Image.Image | None:
        if job.mask_path is not None:
            return _keep(job.mask_path.read_bytes())
        return _keep(mask) if job.with_mask else None

    tiles = {job.name: _tile(job, kept(job)) for job in jobs}
    cut_tile = (
        Tile(Image.new("RGB", (SIZE, SIZE), (128, 128, 128)), "Cut-out (none found)", ())
        if cutout is None
        else Tile(
            _on_checkers(cutout),
            "Cut-out",
            ("found by the worker (mask auto, studio)", "the product alone"),
            CUTOUT_FILE,
        )
    )
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
                cut_tile,
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


def _on_checkers(png: bytes, square: int = 4) -> Image.Image:
    """A transparent image over a grey checkerboard, as image editors show transparency."""
    with Image.open(io.BytesIO(png)) as img:
        image = img.convert("RGBA")
    board = Image.new("RGBA", image.size, (255, 255, 255, 255))
    draw = ImageDraw.Draw(board)
    for y in range(0, image.height, square):
        for x in range(0, image.width, square):
            if (x // square + y // square) % 2:
                draw.rectangle((x, y, x + square - 1, y + square - 1), fill=(204, 204, 204, 255))
    return Image.alpha_composite(board, image).convert("RGB")


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

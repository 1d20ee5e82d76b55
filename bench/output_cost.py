"""What the finish stage costs per output, at each size in one run: encoding in each way the
worker can write a result, labelling (the XMP label on every output, the signed C2PA
manifest for teams with a certificate) against plain encoding, fidelity scoring, and the
product workflow's steps (cut-out, presets, upscaling).

    python bench/output_cost.py              # 512² and 1024²: 3 / 25 / 5 runs per measurement
    python bench/output_cost.py --sizes 768 --images a.png b.jpg --rounds 9 --json cost.json

Encoding: five scikit-image sample photos (or ``--images``: real pixels, as random-weight
renders compress like nothing real) resized, through ``shared.images.encode_image`` in each
setting, best of 3 per photo; the mean, against Pillow's default PNG level 6. Labelling: the
astronaut through the worker's step 4 (worker/render.py ``encode_output``) plain, labelled,
labelled and signed (tests/certificates.py), side by side; the thread's CPU time (a busy
machine skews it less), medians. Fidelity: worker/fidelity.py ``score``, four photos each
against its JPEG (q85) re-encode, median per photo; and its colour drift on every second
pixel against every pixel. Workflow: the studio cut-out of a real product photo
(tests/photos.py), each built-in preset (apply, encode) from a render of the size, 2x by
Lanczos, and a Real-ESRGAN x4plus-sized RRDBNet (random weights, the real arithmetic) on
torch's threads, per output Mpx from a 64² tile. All else on one thread, as the io pool.
"""

from __future__ import annotations

import io
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from skimage import data as samples

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import parser, write_json  # noqa: E402
from shared.images import OutputFormat, encode_image  # noqa: E402
from shared.models import Job  # noqa: E402
from shared.registry import BUILTINS  # noqa: E402
from shared.schemas import RenderParams  # noqa: E402
from shared.storage import LocalStorage, source_key  # noqa: E402
from tests.certificates import make_test_signer  # noqa: E402
from worker.content_credentials import ContentCredentials, load_signing_credentials  # noqa: E402
from worker.fidelity import colour_drift, score  # noqa: E402
from worker.pipelines import LoadedModel  # noqa: E402
from worker.render import RenderItem, encode_output  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
SAMPLE_FILES = ("coffee.png", "astronaut.png", "chelsea.png", "motorcycle_left.png", "rocket.jpg")
BASELINE, ENCODE_REPEAT = "png level 6", 3
# label -> (format, zlib level: Pillow's default 6 where the format has none)
SETTINGS: dict[str, tuple[OutputFormat, int]] = {
    **{f"png level {level}": ("png", level) for level in (1, 3, 6, 9)},
    "jpeg (q92)": ("jpeg", 6),
    "webp (q92)": ("webp", 6),
}


def photo(name: str, size: int) -> Image.Image:
    """A scikit-image sample photo, center-cropped square and resized to ``size``²."""
    img = Image.fromarray(getattr(samples, name)()).convert("RGB")
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    square = img.crop((left, top, left + side, top + side))
    return square.resize((size, size), Image.Resampling.LANCZOS)


def best_encode(img: Image.Image, fmt: OutputFormat, level: int) -> tuple[float, int]:
    """(ms, bytes) of the fastest of ``ENCODE_REPEAT`` encodes."""
    times = []
    for _ in range(ENCODE_REPEAT):
        started = time.perf_counter()
        data = encode_image(img, fmt, level)
        times.append((time.perf_counter() - started) * 1000)
    return min(times), len(data)


def encoding(photos: list[Image.Image], size: int) -> list[dict[str, Any]]:
    """One row per setting: mean ms and KiB per image, and both against the baseline's."""
    resized = [p.resize((size, size), Image.Resampling.LANCZOS) for p in photos]
    rows: list[dict[str, Any]] = []
    for label, (fmt, level) in SETTINGS.items():
        best = [best_encode(img, fmt, level) for img in resized]
        ms, kib = statistics.mean(t for t, _ in best), statistics.mean(b for _, b in best) / 1024
        rows.append({"size": size, "label": label, "ms_per_image": ms, "kib_per_image": kib})
    base = next(r for r in rows if r["label"] == BASELINE)
    print(f"encoding {size}²: setting, ms and KiB per image, vs {BASELINE}: time, size")
    for row in rows:
        row["ms_vs_baseline"] = row["ms_per_image"] / base["ms_per_image"]
        row["size_vs_baseline"] = row["kib_per_image"] / base["kib_per_image"]
        print(f"  {row['label']:<14} {row['ms_per_image']:8.1f} {row['kib_per_image']:8.0f}"
              f"   {row['ms_vs_baseline']:5.2f}x, {row['size_vs_baseline']:5.2f}x")  # fmt: skip
    return rows


def labelling(size: int, rounds: int) -> list[dict[str, Any]]:
    """One row per format: median CPU ms and bytes of plain, labelled, labelled + signed."""
    image = Image.fromarray(samples.astronaut()).resize((size, size))
    folder = Path(tempfile.mkdtemp())
    storage = LocalStorage(folder, "http://127.0.0.1", "bench")
    team = uuid.uuid4()
    key = source_key(team, "0" * 64)
    storage.put(key, encode_image(image, "png"), "image/png")
    signer = load_signing_credentials(make_test_signer().write(folder, "bench"))["bench"]
    credentials = ContentCredentials({team: signer})
    # Step 4 reads only the model's spec and revision: no pipeline is loaded.
    model = LoadedModel(BUILTINS["tiny"], None, "cpu", "bench", 0.0)
    rows = []
    for fmt in ("png", "jpeg", "webp"):
        params = RenderParams(
            strength=0.6,
            steps=4,
            guidance_scale=7.5,
            seed=1,
            width=size,
            height=size,
            output_format=fmt,
        )
        job = Job(id=uuid.uuid4(), team_id=team, params=params.model_dump(), source_key=key)
        item = RenderItem(job=job, params=params, source=image)
        ways: dict[str, Callable[[], bytes]] = {
            "plain": partial(encode_image, image, fmt, 1),
            "xmp": partial(encode_output, model, storage, item, image, 1),
            "xmp+c2pa": partial(encode_output, model, storage, item, image, 1, credentials),
        }
        times: dict[str, list[float]] = {way: [] for way in ways}
        sizes: dict[str, int] = {}
        for _ in range(rounds):  # side by side, so drifts in machine load hit all three
            for way, encode in ways.items():
                start = time.thread_time()
                sizes[way] = len(encode())
                times[way].append((time.thread_time() - start) * 1000)
        ms = {way: round(statistics.median(t), 2) for way, t in times.items()}
        rows.append({"format": fmt, "size": size, "ms": ms, "bytes": sizes})
        added = [
            f"+{way} {ms[way] - ms['plain']:+.2f} ms, {sizes[way] - sizes['plain']:+} B"
            for way in ("xmp", "xmp+c2pa")
        ]
        print(
            f"{fmt} {size}²: encode {ms['plain']} ms; {'; '.join(added)} (CPU ms, medians "
            f"of {rounds})"
        )
    return rows


def fidelity(size: int, repeat: int) -> dict[str, Any]:
    """Scoring's wall ms over the photos (median, min, max) and the stride-2 drift error."""
    times, errors = [], []
    for name in PHOTOS:
        src = photo(name, size)
        buf = io.BytesIO()
        src.save(buf, "JPEG", quality=85)
        out = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        for _ in range(repeat):
            started = time.perf_counter()
            score(src, out)
            times.append((time.perf_counter() - started) * 1000)
        a, b = np.asarray(src), np.asarray(out)
        errors.append(abs(colour_drift(a, b, None) - colour_drift(a, b, None, stride=1)))
    f = {
        "size": size,
        "median_ms": round(statistics.median(times), 1),
        "min_ms": round(min(times), 1),
        "max_ms": round(max(times), 1),
        "drift_error": round(max(errors), 4),
    }
    print(
        f"fidelity {size}²: median {f['median_ms']} ms (min {f['min_ms']}, max {f['max_ms']},"
        f" wall, one thread); stride-2 drift within {f['drift_error']} ΔE"
    )
    return f


def _median_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 1)


def workflow(size: int, repeat: int, blocks: int = 23) -> dict[str, Any]:
    """Median wall ms per image of each product-workflow step at ``size`` (long side)."""
    import torch
    from spandrel import ModelLoader
    from spandrel.architectures.ESRGAN import ESRGAN

    from shared.presets import builtin_presets
    from tests.photos import coffee_on_white
    from worker import presets as marketplace
    from worker.cutout import studio_mask

    shot, known = coffee_on_white(jpeg_quality=85)
    scale = size / max(shot.size)
    dims = (round(shot.width * scale), round(shot.height * scale))
    shot = shot.resize(dims, Image.Resampling.LANCZOS)
    mask = Image.fromarray(known).convert("L").resize(dims)
    cutout_ms = _median_ms(partial(studio_mask, shot), repeat)
    row: dict[str, Any] = {"size": size, "cutout studio": cutout_ms}
    cut = marketplace.Cutout(shot, mask)
    for name, preset in builtin_presets().items():
        step = lambda p=preset: marketplace.encode(p, marketplace.apply(p, shot, cut))  # noqa: E731
        row[f"preset {name}"] = _median_ms(step, repeat)
    row["upscale 2x lanczos"] = _median_ms(
        partial(shot.resize, (dims[0] * 2, dims[1] * 2), Image.Resampling.LANCZOS), repeat
    )
    net = ModelLoader().load_from_state_dict(ESRGAN(num_blocks=blocks, scale=4).state_dict()).eval()
    tile = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        tile_ms = _median_ms(partial(net, tile), max(1, repeat // 2))
    # per output megapixel: a 64² tile at 4x is 256² = 0.0655 Mpx out
    row["upscale realesrgan-size ms/out-Mpx"] = round(tile_ms / (256 * 256 / 1e6), 0)
    print(f"workflow {size} px (ms per image, median of {repeat}; upscaler per output Mpx):")
    for step, ms in row.items():
        if step != "size":
            print(f"  {step:<36} {ms:10.1f}")
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    p.add_argument("--images", nargs="+", type=Path, help="photos to encode (default: samples)")
    p.add_argument("--rounds", type=int, default=25, help="labelling rounds per size")
    p.add_argument("--repeat", type=int, default=5, help="scorings per photo and size")
    p.add_argument("--esrgan-blocks", type=int, default=23, help="23: Real-ESRGAN x4plus")
    args = p.parse_args(argv)
    cv2.setNumThreads(1)  # one io thread's cost, as the worker pays it per output
    paths = args.images or [Path(samples.__file__).parent / name for name in SAMPLE_FILES]
    photos = [Image.open(io.BytesIO(path.read_bytes())).convert("RGB") for path in paths]
    print(f"{len(photos)} photos to encode: {', '.join(path.name for path in paths)}")
    result: dict[str, Any] = {"encoding": [], "labelling": [], "fidelity": [], "workflow": []}
    for size in args.sizes:
        result["encoding"] += encoding(photos, size)
        result["labelling"] += labelling(size, args.rounds)
        result["fidelity"].append(fidelity(size, args.repeat))
        result["workflow"].append(workflow(size, args.repeat, args.esrgan_blocks))
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()

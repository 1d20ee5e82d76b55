"""Output encoding: CPU time and size per image for each way the worker can write a result.

Encoding is the biggest CPU cost a worker pays per image (fetch, decode and upload are
smaller), and it depends on what the pixels look like: random-weight test models produce
noise, which compresses like nothing real. So this measures real photographs: by default
five of the sample photos scikit-image ships (public domain or CC0; a worker dependency);
``--images`` measures your own (product shots, real outputs).
Prints figures; never fails on time.

    python bench/encode.py                       # sample photos at 512² and 1024²
    python bench/encode.py --images a.png b.jpg --sizes 768 --json encode.json

Each photo is resized to each size, then encoded by ``shared.images.encode_image`` (what the
worker runs) in every setting, best of ``--repeat`` per photo, single-threaded; the table
gives the mean over the photos and each setting against Pillow's default PNG level (6),
measured side by side in the same run.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import write_json  # noqa: E402
from shared.images import OutputFormat, encode_image  # noqa: E402

SAMPLE_PHOTOS = ("coffee.png", "astronaut.png", "chelsea.png", "motorcycle_left.png", "rocket.jpg")
BASELINE = "png level 6"


@dataclass(frozen=True)
class Setting:
    label: str
    fmt: OutputFormat
    png_compress_level: int = 6


SETTINGS = (
    *(Setting(f"png level {level}", "png", level) for level in (1, 3, 6, 9)),
    Setting("jpeg (q92)", "jpeg"),
    Setting("webp (q92)", "webp"),
)


@dataclass
class Row:
    size: int
    label: str
    ms_per_image: float
    kib_per_image: float
    ms_vs_baseline: float = 1.0
    size_vs_baseline: float = 1.0


def sample_photos() -> list[Path]:
    """The sample photos in scikit-image's package (skimage/data)."""
    import skimage.data

    return [Path(skimage.data.__file__).parent / name for name in SAMPLE_PHOTOS]


def best_encode(img: Image.Image, setting: Setting, repeat: int) -> tuple[float, int]:
    """(seconds, bytes) of the fastest of ``repeat`` encodes."""
    best = float("inf")
    size = 0
    for _ in range(repeat):
        started = time.perf_counter()
        size = len(encode_image(img, setting.fmt, png_compress_level=setting.png_compress_level))
        best = min(best, time.perf_counter() - started)
    return best, size


def measure(photos: list[Image.Image], size: int, repeat: int) -> list[Row]:
    resized = [p.resize((size, size), Image.Resampling.LANCZOS) for p in photos]
    rows = []
    for setting in SETTINGS:
        results = [best_encode(img, setting, repeat) for img in resized]
        rows.append(
            Row(
                size=size,
                label=setting.label,
                ms_per_image=1000 * sum(s for s, _ in results) / len(results),
                kib_per_image=sum(b for _, b in results) / len(results) / 1024,
            )
        )
    base = next(r for r in rows if r.label == BASELINE)
    for row in rows:
        row.ms_vs_baseline = row.ms_per_image / base.ms_per_image
        row.size_vs_baseline = row.kib_per_image / base.kib_per_image
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", nargs="+", type=Path, help="photos to encode (default: samples)")
    p.add_argument("--sizes", default="512,1024", help="square output sizes, comma-separated")
    p.add_argument("--repeat", type=int, default=3, help="encodes per photo and setting")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()

    paths = args.images or sample_photos()
    photos = [Image.open(io.BytesIO(path.read_bytes())).convert("RGB") for path in paths]
    print(f"{len(photos)} photos: {', '.join(path.name for path in paths)}")
    rows: list[Row] = []
    for size in (int(s) for s in args.sizes.split(",")):
        print(f"\n== {size}x{size}, mean per image, one thread ==")
        print(f"  {'setting':<14} {'ms':>8} {'KiB':>8}   vs {BASELINE}: time, size")
        for row in measure(photos, size, args.repeat):
            rows.append(row)
            print(
                f"  {row.label:<14} {row.ms_per_image:8.1f} {row.kib_per_image:8.0f}"
                f"   {row.ms_vs_baseline:5.2f}x, {row.size_vs_baseline:5.2f}x"
            )
    if args.json:
        write_json(args.json, [asdict(r) for r in rows])


if __name__ == "__main__":
    main()

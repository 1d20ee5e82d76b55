"""Fidelity scoring: CPU time per output at 512² and 1024², on scikit-image's sample photos.

The worker scores every output on its io pool (worker/fidelity.py); this says what that
costs per image, single-threaded, median of ``--repeat`` runs per photo and size, each
photo scored against its own JPEG (quality 85) re-encode. It also checks the one shortcut
the scorer takes: colour drift on a grid of every second pixel, against every pixel.
Prints figures; never fails on time.

    python bench/fidelity.py
    python bench/fidelity.py --sizes 512 768 1024 --repeat 9
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.fidelity import colour_drift, score  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def photo(name: str, size: int) -> Image.Image:
    """A scikit-image sample photo, center-cropped square and resized to ``size``²."""
    img = Image.fromarray(getattr(data, name)()).convert("RGB")
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    square = img.crop((left, top, left + side, top + side))
    return square.resize((size, size), Image.Resampling.LANCZOS)


def reencoded(img: Image.Image, quality: int = 85) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    cv2.setNumThreads(1)  # one io thread's cost, as the worker pays it per output
    print(f"{'size':>6} {'median ms':>10} {'min ms':>8} {'max ms':>8}  drift error (stride 2)")
    for size in args.sizes:
        times, errors = [], []
        for name in PHOTOS:
            src = photo(name, size)
            out = reencoded(src)
            for _ in range(args.repeat):
                started = time.perf_counter()
                score(src, out)
                times.append(time.perf_counter() - started)
            a, b = np.asarray(src), np.asarray(out)
            errors.append(abs(colour_drift(a, b, None) - colour_drift(a, b, None, stride=1)))
        ms = [t * 1000 for t in times]
        print(
            f"{size:>5}² {statistics.median(ms):>10.1f} {min(ms):>8.1f} {max(ms):>8.1f}"
            f"  max {max(errors):.4f} ΔE"
        )


if __name__ == "__main__":
    main()

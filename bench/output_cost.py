"""What the finish stage costs per output, at each size in one run: labelling (the XMP label
on every output, the signed C2PA manifest for teams with a certificate) against plain
encoding, in CPU time and bytes, and fidelity scoring.

    python bench/output_cost.py                       # 512² and 1024², 25 rounds, 5 repeats
    python bench/output_cost.py --sizes 512 --rounds 9 --repeat 9 --json cost.json

Labelling: each round encodes scikit-image's astronaut three ways side by side through the
worker's own step 4 (worker/render.py ``encode_output``): plain ``encode_image``, labelled,
and labelled and signed with a test certificate made here (tests/certificates.py). CPU time
of the calling thread, so a busy machine skews it less than wall time; medians over the
rounds. Fidelity: worker/fidelity.py ``score`` on one thread (cv2.setNumThreads(1), as the
io pool pays it per output), each of four sample photos against its own JPEG (quality 85)
re-encode, median of ``--repeat`` runs per photo; and the scorer's one shortcut, colour
drift on every second pixel, against every pixel. Prints figures; never fails on time.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from skimage import data as samples

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import write_json  # noqa: E402
from shared.images import encode_image  # noqa: E402
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


def photo(name: str, size: int) -> Image.Image:
    """A scikit-image sample photo, center-cropped square and resized to ``size``²."""
    img = Image.fromarray(getattr(samples, name)()).convert("RGB")
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    square = img.crop((left, top, left + side, top + side))
    return square.resize((size, size), Image.Resampling.LANCZOS)


def cpu_ms(encode: Callable[[], bytes]) -> tuple[float, int]:
    """CPU milliseconds of one call on this thread, and the bytes it made."""
    start = time.thread_time()
    data = encode()
    return (time.thread_time() - start) * 1000, len(data)


@dataclass(frozen=True)
class Row:
    """One format at one size: median CPU ms and bytes per way of encoding."""

    format: str
    size: int
    ms: dict[str, float]
    bytes: dict[str, int]

    def line(self, rounds: int) -> str:
        added = [
            f"+{way} {self.ms[way] - self.ms['plain']:+.2f} ms, "
            f"{self.bytes[way] - self.bytes['plain']:+} B"
            for way in ("xmp", "xmp+c2pa")
        ]
        return (
            f"{self.format} {self.size}²: encode {self.ms['plain']} ms; {'; '.join(added)} "
            f"(CPU ms, medians of {rounds})"
        )


def labelling(size: int, rounds: int) -> list[Row]:
    """One row per format: plain, labelled, labelled + signed."""
    image = Image.fromarray(samples.astronaut()).resize((size, size))
    folder = Path(tempfile.mkdtemp())
    storage = LocalStorage(folder, "http://127.0.0.1", "bench")
    team = uuid.uuid4()
    storage.put(source_key(team, "0" * 64), encode_image(image, "png"), "image/png")
    signer = load_signing_credentials(make_test_signer().write(folder, "bench"))["bench"]
    credentials = ContentCredentials({team: signer})
    # Step 4 reads only the model's spec and revision: no pipeline is loaded.
    model = LoadedModel(BUILTINS["tiny"], None, "cpu", "bench", 0.0)
    rows = []
    for fmt in ("png", "jpeg", "webp"):
        params = RenderParams(
            strength=0.6, steps=4, guidance_scale=7.5, seed=1, width=size, height=size,
            output_format=fmt,
        )  # fmt: skip
        job = Job(id=uuid.uuid4(), team_id=team, params=params.model_dump(),
                  source_key=source_key(team, "0" * 64))  # fmt: skip
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
                ms, sizes[way] = cpu_ms(encode)
                times[way].append(ms)
        medians = {way: round(statistics.median(t), 2) for way, t in times.items()}
        rows.append(Row(fmt, size, medians, sizes))
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
    return {
        "size": size,
        "median_ms": round(statistics.median(times), 1),
        "min_ms": round(min(times), 1),
        "max_ms": round(max(times), 1),
        "drift_error": round(max(errors), 4),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--rounds", type=int, default=25, help="labelling rounds per size")
    parser.add_argument("--repeat", type=int, default=5, help="scorings per photo and size")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)  # one io thread's cost, as the worker pays it per output
    result: dict[str, Any] = {"labelling": [], "fidelity": []}
    for size in args.sizes:
        for row in labelling(size, args.rounds):
            print(row.line(args.rounds))  # noqa: T201 - a benchmark's output
            result["labelling"].append(asdict(row))
        f = fidelity(size, args.repeat)
        print(  # noqa: T201
            f"fidelity {size}²: median {f['median_ms']} ms (min {f['min_ms']}, max "
            f"{f['max_ms']}, wall, one thread); stride-2 drift within {f['drift_error']} ΔE"
        )
        result["fidelity"].append(f)
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()

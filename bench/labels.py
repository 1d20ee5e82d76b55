"""What labelling costs per output: the XMP label (every output) and the signed C2PA
manifest (teams with a certificate), against plain encoding, in CPU time and bytes.

    python bench/labels.py                    # 512², png, jpeg and webp, 25 rounds
    python bench/labels.py --size 1024 --rounds 9 --json labels.json

Each round encodes one photo (scikit-image's astronaut, resized) three ways side by side,
through the worker's own step 4 (worker/render.py ``encode_output``): plain
``encode_image``, labelled, and labelled and signed with a test certificate made here
(tests/certificates.py). CPU time of the calling thread, so a busy machine skews it less
than wall time; medians over the rounds. Prints figures; never fails on time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.images import encode_image  # noqa: E402
from shared.models import Job  # noqa: E402
from shared.registry import BUILTINS  # noqa: E402
from shared.schemas import RenderParams  # noqa: E402
from shared.storage import LocalStorage, source_key  # noqa: E402
from tests.certificates import make_test_signer  # noqa: E402
from worker.content_credentials import ContentCredentials, load_signing_credentials  # noqa: E402
from worker.pipelines import LoadedModel  # noqa: E402
from worker.render import RenderItem, encode_output  # noqa: E402


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


def measure(size: int, rounds: int) -> list[Row]:
    """One row per format: plain, labelled, labelled + signed."""
    from skimage import data as samples

    photo = Image.fromarray(samples.astronaut()).resize((size, size))
    folder = Path(tempfile.mkdtemp())
    storage = LocalStorage(folder, "http://127.0.0.1", "bench")
    team = uuid.uuid4()
    storage.put(source_key(team, "0" * 64), encode_image(photo, "png"), "image/png")
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
        item = RenderItem(job=job, params=params, source=photo)
        ways: dict[str, Callable[[], bytes]] = {
            "plain": partial(encode_image, photo, fmt, 1),
            "xmp": partial(encode_output, model, storage, item, photo, 1),
            "xmp+c2pa": partial(encode_output, model, storage, item, photo, 1, credentials),
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


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    rows = measure(args.size, args.rounds)
    for row in rows:
        print(row.line(args.rounds))  # noqa: T201 - a benchmark's output
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return rows


if __name__ == "__main__":
    main()

"""Batch submission speed on PostgreSQL: jobs/s of ``POST /v1/batches`` for 1k and 10k
batches, and the latency of ``GET /v1/batches/{id}`` with 200,000 jobs in the table. Prints
figures; never fails on time.

    python bench/submit.py                 # a throwaway database on the local server
    python bench/submit.py --repeat 10 --filler 500000
    python bench/submit.py --sizes 100,200 --repeat 1 --filler 1000 --gets 5   # seconds

It creates (and drops) its own database, like the tests do; the app runs in-process
(FastAPI TestClient: the whole request path, without a network hop) with local storage.
A batch of N jobs is N/100 images x 10 prompts x 10 variants; images are referenced by
upload id, the path the CLI takes for big sets, each uploaded once beforehand.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import Engine, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api.app import create_app  # noqa: E402
from bench.harness import log, percentile, png_bytes, write_json  # noqa: E402
from shared.db import make_engine, make_session_factory, session_scope  # noqa: E402
from shared.migrate import upgrade  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.storage import LocalStorage  # noqa: E402
from shared.teams import create_api_key, ensure_team  # noqa: E402
from tests.services import PostgresDatabase  # noqa: E402

PROMPTS = VARIANTS = 10  # per batch: jobs / 100 images
STATUSES = ("succeeded", "succeeded", "succeeded", "failed", "canceled", "queued", "running")
# One filler batch of :n jobs for team :team (created if new), statuses cycling through
# :statuses; the params are a tiny job's, as the api would store them.
FILLER = """
WITH team AS (
    INSERT INTO teams (id, name, created_at) VALUES (gen_random_uuid(), :team, now())
    ON CONFLICT (name) DO UPDATE SET name = excluded.name RETURNING id
), params AS (
    SELECT CAST('{"strength": 0.75, "steps": 4, "guidance_scale": 7.5, "seed": 1, "width": 64,
                  "height": 64, "output_format": "png"}' AS json) AS p
), batch AS (
    INSERT INTO batches (id, team_id, model, seed, params, image_count, prompt_count, variants,
                         job_count, created_at)
    SELECT gen_random_uuid(), team.id, 'tiny', 1, params.p, :n, 1, 1, :n, now()
    FROM team, params RETURNING id, team_id
)
INSERT INTO jobs (id, team_id, batch_id, model, status, prompt, params, source_key, sku,
                  prompt_name, variant, attempts, created_at, started_at)
SELECT gen_random_uuid(), batch.team_id, batch.id, 'tiny',
       (CAST(:statuses AS text[]))[1 + g % cardinality(CAST(:statuses AS text[]))], 'filler',
       params.p, 'sources/filler', 'F' || g, 'p', 1, 1, now(), now()
FROM batch, params, generate_series(1, CAST(:n AS int)) g
"""


def upload_images(client: TestClient, headers: dict[str, str], count: int) -> list[str]:
    """``count`` distinct images, 50 per ``POST /v1/uploads``; their upload ids."""
    ids: list[str] = []
    for start in range(0, count, 50):
        files = []
        for i in range(start, min(count, start + 50)):
            png = png_bytes(Image.new("RGB", (64, 64), (i % 256, i // 256, 99)))
            files.append(("files", (f"p{i}.png", png, "image/png")))
        response = client.post("/v1/uploads", files=files, headers=headers)
        response.raise_for_status()
        ids += [u["id"] for u in response.json()["uploads"]]
    return ids


def time_submissions(
    client: TestClient, headers: dict[str, str], uploads: list[str], jobs: int, repeat: int
) -> tuple[list[float], str]:
    """Seconds of each of ``repeat`` submissions of ``jobs`` (after one untimed), and the
    last batch's id."""
    body = {
        "model": "tiny",
        "images": [
            {"image": u, "sku": f"SKU-{i:05d}"} for i, u in enumerate(uploads[: jobs // 100])
        ],
        "prompts": [{"name": f"p{i}", "prompt": f"the product, scene {i}"} for i in range(PROMPTS)],
        "variants": VARIANTS,
    }
    client.post("/v1/batches", json=body, headers=headers).raise_for_status()  # warm-up
    seconds: list[float] = []
    batch_id = ""
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.post("/v1/batches", json=body, headers=headers)
        seconds.append(time.perf_counter() - started)
        response.raise_for_status()
        assert response.json()["job_count"] == jobs
        batch_id = response.json()["id"]
    return seconds, batch_id


def add_filler(engine: Engine, total: int, chunk: int = 10_000) -> None:
    """``total`` jobs in 10k-job batches of 5 other teams, mixed statuses, one INSERT ...
    SELECT each (a generated series: the filler is setup, not what is measured)."""
    with engine.begin() as conn:
        for done in range(0, total, chunk):
            n = min(chunk, total - done)
            conn.execute(text(FILLER), {"team": f"filler-{done // chunk % 5}", "n": n,
                                        "statuses": list(STATUSES)})  # fmt: skip


def time_gets(
    client: TestClient, headers: dict[str, str], path: str, calls: int
) -> dict[str, float]:
    """p50, p95 and max milliseconds of ``calls`` GETs of ``path`` (after one untimed)."""
    client.get(path, headers=headers).raise_for_status()
    ms: list[float] = []
    for _ in range(calls):
        started = time.perf_counter()
        response = client.get(path, headers=headers)
        ms.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
    return {
        "p50_ms": round(percentile(ms, 0.5), 2),
        "p95_ms": round(percentile(ms, 0.95), 2),
        "max_ms": round(max(ms), 2),
    }


def measure(args: argparse.Namespace, database_url: str, tmp: Path) -> dict[str, Any]:
    settings = Settings(data_dir=tmp, database_url=database_url, broker_url="redis://127.0.0.1:1/0")
    upgrade(database_url)
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    with session_scope(factory) as session:
        headers = {
            "Authorization": f"Bearer {create_api_key(session, ensure_team(session, 'bench'))}"
        }
    storage = LocalStorage(tmp / "objects", settings.public_url, "bench")
    out: dict[str, Any] = {"submit": {}}
    with TestClient(create_app(settings, storage=storage)) as client:
        uploads = upload_images(client, headers, max(args.sizes) // 100)
        log(f"PostgreSQL {engine.dialect.server_version_info}, app in-process")
        log(f"== POST /v1/batches (best and median of {args.repeat}) ==")
        batch_id = ""
        for jobs in args.sizes:
            seconds, batch_id = time_submissions(client, headers, uploads, jobs, args.repeat)
            median = statistics.median(seconds)
            out["submit"][str(jobs)] = {
                "best_s": round(min(seconds), 4),
                "median_s": round(median, 4),
                "jobs_per_s": round(jobs / median),
            }
            log(
                f"  {jobs:>6,} jobs ({jobs // 100} x {PROMPTS} x {VARIANTS}): best "
                f"{min(seconds) * 1000:7.1f} ms, median {median * 1000:7.1f} ms -> "
                f"{jobs / median:,.0f} jobs/s"
            )
        with engine.connect() as conn:
            have = conn.scalar(text("SELECT count(*) FROM jobs")) or 0
        add_filler(engine, max(0, args.filler - have))
        with engine.connect() as conn:
            conn.execute(text("ANALYZE jobs"))
            conn.commit()
            out["jobs_in_table"] = conn.scalar(text("SELECT count(*) FROM jobs"))
        log(
            f"== GET /v1/batches/{{id}} ({args.sizes[-1]:,}-job batch), "
            f"{out['jobs_in_table']:,} jobs in table =="
        )
        out["status"] = time_gets(client, headers, f"/v1/batches/{batch_id}", args.gets)
        log(f"  {out['status']} over {args.gets} calls")
    engine.dispose()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,10000", help="jobs per batch, multiples of 100")
    p.add_argument("--repeat", type=int, default=5, help="timed submissions per size")
    p.add_argument("--filler", type=int, default=200_000, help="jobs in the table for the GET")
    p.add_argument("--gets", type=int, default=200, help="timed GET /v1/batches/{id} calls")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    args.sizes = [int(n) for n in args.sizes.split(",")]
    if any(n < 100 or n % 100 for n in args.sizes):
        p.error("--sizes must be multiples of 100")
    db = PostgresDatabase(name=f"imgfarm_bench_{uuid.uuid4().hex[:8]}")
    db.create()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = measure(args, db.url, Path(tmp))
    finally:
        db.drop()
    if args.json:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Batch submission speed on PostgreSQL: jobs/s for 1k and 10k batches, and the latency of
``GET /v1/batches/{id}`` with 200,000 jobs in the table. Prints figures; never fails on time.

    python bench/submit.py                 # a throwaway database on the local server
    python bench/submit.py --repeat 10 --filler 500000

It creates (and drops) its own database, like the tests do; the app runs in-process
(FastAPI TestClient: the whole request path, without a network hop) with local storage.
Images are referenced by upload id, the path the CLI takes for big sets; each distinct image
is uploaded once beforehand.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import insert, select, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api.app import create_app  # noqa: E402
from shared.db import make_engine, make_session_factory, session_scope  # noqa: E402
from shared.migrate import upgrade  # noqa: E402
from shared.models import Batch, Job, Team, utcnow  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.storage import LocalStorage  # noqa: E402
from shared.teams import create_api_key, ensure_team  # noqa: E402
from tests.factories import png_bytes  # noqa: E402
from tests.services import PostgresDatabase  # noqa: E402

SHAPES = {1_000: (10, 10, 10), 10_000: (100, 10, 10)}  # images x prompts x variants
STATUSES = ("succeeded", "succeeded", "succeeded", "failed", "canceled", "queued", "running")


def upload_images(client: TestClient, headers: dict[str, str], count: int) -> list[str]:
    ids: list[str] = []
    for start in range(0, count, 50):
        files = [
            ("files", (f"p{i}.png", png_bytes(64, 64, color=(i % 256, i // 256, 99)), "image/png"))
            for i in range(start, min(count, start + 50))
        ]
        response = client.post("/v1/uploads", files=files, headers=headers)
        response.raise_for_status()
        ids += [u["id"] for u in response.json()["uploads"]]
    return ids


def batch_body(upload_ids: list[str], prompts: int, variants: int) -> dict[str, object]:
    return {
        "model": "tiny",
        "images": [{"image": u, "sku": f"SKU-{i:05d}"} for i, u in enumerate(upload_ids)],
        "prompts": [{"name": f"p{i}", "prompt": f"the product, scene {i}"} for i in range(prompts)],
        "variants": variants,
    }


def time_submissions(
    client: TestClient, headers: dict[str, str], uploads: list[str], jobs: int, repeat: int
) -> tuple[list[float], str]:
    images, prompts, variants = SHAPES[jobs]
    body = batch_body(uploads[:images], prompts, variants)
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


def add_filler(session_factory, total: int, chunk: int = 10_000) -> None:
    """``total`` jobs in 10k-job batches of other teams, mixed statuses, straight INSERTs."""
    now = utcnow()
    params = {
        "strength": 0.75,
        "steps": 4,
        "guidance_scale": 7.5,
        "seed": 1,
        "width": 64,
        "height": 64,
        "output_format": "png",
    }
    with session_scope(session_factory) as session:
        teams = [ensure_team(session, f"filler-{i}") for i in range(5)]
    done = 0
    while done < total:
        n = min(chunk, total - done)
        with session_scope(session_factory) as session:
            team: Team = teams[(done // chunk) % len(teams)]
            batch = Batch(
                team_id=team.id,
                model="tiny",
                seed=1,
                params=params,
                image_count=n,
                prompt_count=1,
                variants=1,
                job_count=n,
            )
            session.add(batch)
            session.flush()
            session.execute(
                insert(Job),
                [
                    {
                        "id": uuid.uuid4(),
                        "team_id": team.id,
                        "batch_id": batch.id,
                        "model": "tiny",
                        "status": STATUSES[i % len(STATUSES)],
                        "prompt": "filler",
                        "params": params,
                        "source_key": "sources/filler",
                        "sku": f"F{i:06d}",
                        "prompt_name": "p",
                        "variant": 1,
                        "attempts": 1,
                        "created_at": now,
                        "started_at": now,
                    }
                    for i in range(n)
                ],
            )
        done += n


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=5, help="timed submissions per size")
    p.add_argument("--filler", type=int, default=200_000, help="jobs in the table for the GET")
    p.add_argument("--gets", type=int, default=200, help="timed GET /v1/batches/{id} calls")
    args = p.parse_args(argv)

    db = PostgresDatabase(name=f"imgfarm_bench_{uuid.uuid4().hex[:8]}")
    db.create()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(
                data_dir=Path(tmp), database_url=db.url, broker_url="redis://127.0.0.1:1/0"
            )
            upgrade(settings.database_url)
            engine = make_engine(settings.database_url)
            factory = make_session_factory(engine)
            with session_scope(factory) as session:
                key = create_api_key(session, ensure_team(session, "bench"))
            headers = {"Authorization": f"Bearer {key}"}
            storage = LocalStorage(Path(tmp) / "objects", settings.public_url, "bench")
            with TestClient(create_app(settings, storage=storage)) as client:
                uploads = upload_images(client, headers, max(s[0] for s in SHAPES.values()))
                print(f"PostgreSQL {engine.dialect.server_version_info}, app in-process")
                print(f"== POST /v1/batches (best and median of {args.repeat}) ==")
                batch_id = ""
                for jobs in SHAPES:
                    seconds, batch_id = time_submissions(
                        client, headers, uploads, jobs, args.repeat
                    )
                    best, median = min(seconds), statistics.median(seconds)
                    print(
                        f"  {jobs:>6,} jobs ({' x '.join(map(str, SHAPES[jobs]))}): "
                        f"best {best * 1000:7.1f} ms, median {median * 1000:7.1f} ms "
                        f"-> {jobs / median:,.0f} jobs/s"
                    )

                with factory() as session:
                    have = session.scalar(select(text("count(*)")).select_from(Job))
                add_filler(factory, max(0, args.filler - have))
                with engine.connect() as conn:
                    conn.execute(text("ANALYZE jobs"))
                    conn.commit()
                    total = conn.scalar(text("SELECT count(*) FROM jobs"))
                print(f"== GET /v1/batches/{{id}} (10,000-job batch), {total:,} jobs in table ==")
                client.get(f"/v1/batches/{batch_id}", headers=headers).raise_for_status()
                latencies = []
                for _ in range(args.gets):
                    started = time.perf_counter()
                    response = client.get(f"/v1/batches/{batch_id}", headers=headers)
                    latencies.append((time.perf_counter() - started) * 1000)
                    response.raise_for_status()
                print(
                    f"  p50 {percentile(latencies, 0.5):.1f} ms, p95 "
                    f"{percentile(latencies, 0.95):.1f} ms, max {max(latencies):.1f} ms "
                    f"over {args.gets} calls"
                )
                latencies = []
                for _ in range(max(1, args.gets // 10)):
                    started = time.perf_counter()
                    client.get("/v1/batches", headers=headers).raise_for_status()
                    latencies.append((time.perf_counter() - started) * 1000)
                listed = min(20, len(SHAPES) * (args.repeat + 1))
                print(
                    f"  GET /v1/batches (first page: {listed} batches holding up to "
                    f"{have:,} jobs): p50 {percentile(latencies, 0.5):.1f} ms, "
                    f"max {max(latencies):.1f} ms"
                )
                with engine.connect() as conn:
                    plan = conn.execute(
                        text(
                            "EXPLAIN SELECT status, count(*), min(started_at), max(finished_at) "
                            "FROM jobs WHERE batch_id = :b GROUP BY status"
                        ),
                        {"b": uuid.UUID(batch_id)},
                    ).scalars()
                    print("  counts query plan: " + " / ".join(line.strip() for line in plan))
            engine.dispose()
    finally:
        db.drop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

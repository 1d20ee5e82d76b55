"""Farm overhead: end-to-end jobs/s of the ``echo`` model against raw Celery round trips on
the same Redis, and queued→running latency with an idle worker. Prints figures; never fails
on time.

    python bench/overhead.py                      # 2,000 jobs, S3 on moto_server
    python bench/overhead.py --jobs 500 --storage file --latency-jobs 20
    TMPDIR=/dev/shm python bench/overhead.py --storage file --rounds 3   # objects in RAM

Storage is part of every job (one GET of the source, one PUT of the output), so its cost is
in the farm's figure: moto_server is a Python server sharing the machine's CPUs, and a local
folder costs what the disk's metadata operations cost; a folder on tmpfs shows the farm's
own overhead. The CPU time each process spent per job is printed too: unlike jobs/s, it
hardly moves when other work shares the machine.

Everything runs on this machine, started (and stopped) by the benchmark: a database of its
own on the local PostgreSQL server (like the tests), a ``redis-server`` on a free port, an
S3 endpoint (``moto_server``; ``--storage file`` uses a local folder instead), and real
``imgfarm api``, ``imgfarm dispatcher`` and ``imgfarm worker --model echo`` processes.

* farm: one ``POST /v1/batches`` of N jobs (1 image x 1 prompt x N variants, referenced by
  upload id) → every job ``succeeded`` in Postgres; then each job's output is checked in
  storage (not timed). ``echo`` renders nothing, so this is the farm's own cost per job:
  api, dispatcher, Redis hand-over, claim, source fetch, resize, encode, store, record.
* raw Celery: N no-op tasks (one job id each, the farm's Celery settings: late ack, prefetch
  1, JSON) sent to a ``-P solo`` worker process on the same Redis; the task only counts
  itself in Redis, which is how the benchmark sees it done.
* latency: single jobs through ``POST /v1/jobs``, one at a time with the worker idle;
  ``started_at - created_at`` of each job row (api commit → NOTIFY → dispatcher → Redis →
  worker claim), and the same for a raw Celery task (send → task running).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from PIL import Image
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.broker import make_celery  # noqa: E402
from shared.db import make_engine, make_session_factory, session_scope  # noqa: E402
from shared.migrate import upgrade  # noqa: E402
from shared.models import Job  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.storage import LocalStorage, S3Storage, storage_from_settings  # noqa: E402
from shared.teams import create_api_key, ensure_team  # noqa: E402
from tests.services import (  # noqa: E402
    ImgfarmProcess,
    PostgresDatabase,
    ServerProcess,
    free_port,
    moto_server,
    redis_server,
    wait_for,
)

MODEL = "echo"
NOOP_TASK = "bench.noop"
NOOP_QUEUE = "bench.noop"
COUNTER_KEY = "bench:noop:done"
STARTED_KEY = "bench:noop:started"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}


# --- the services and processes --------------------------------------------------------------


@dataclass
class Farm:
    """What the benchmark started and talks to."""

    env: dict[str, str]
    settings: Settings
    api_url: str
    api_key: str
    team_id: uuid.UUID
    session_factory: sessionmaker[Session]
    redis_url: str
    logs: Path
    pids: dict[str, int]


def settings_from_env(env: dict[str, str]) -> Settings:
    """The Settings the farm's processes build from the same IMGFARM_* variables."""
    prefix = "IMGFARM_"
    return Settings(
        **{k.removeprefix(prefix).lower(): v for k, v in env.items() if k.startswith(prefix)}
    )


def farm_env(tmp: Path, database_url: str, redis_url: str, s3_url: str | None) -> dict[str, str]:
    """IMGFARM_* variables for every process of the run."""
    env = {
        "IMGFARM_DATA_DIR": str(tmp / "data"),
        "IMGFARM_DATABASE_URL": database_url,
        "IMGFARM_BROKER_URL": redis_url,
        # INFO, the production default: Celery says " ready." at INFO.
        "IMGFARM_LOG_LEVEL": "INFO",
        **AWS_ENV,
    }
    if s3_url is None:
        env["IMGFARM_STORAGE_URL"] = f"file://{tmp / 'objects'}"
    else:
        env["IMGFARM_STORAGE_URL"] = "s3://imgfarm-bench/objects"
        env["IMGFARM_S3_ENDPOINT_URL"] = s3_url
    for name in ("IMGFARM_DISPATCH_DEPTH_PER_WORKER", "IMGFARM_MODELS"):
        if name in os.environ:  # tuning knobs pass through
            env[name] = os.environ[name]
    return env


def start_process(
    stack: contextlib.ExitStack, args: list[str], env: dict[str, str], log: Path
) -> ImgfarmProcess:
    """An ``imgfarm`` subcommand, stopped (SIGTERM, then SIGKILL) when ``stack`` closes."""
    proc = ImgfarmProcess(args, {**os.environ, **env}, log).start()
    stack.callback(proc.stop)
    return proc


def start_server(stack: contextlib.ExitStack, server: ServerProcess) -> ServerProcess:
    server.start()
    stack.callback(server.stop)
    return server


def api_healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def running_farm(args: argparse.Namespace) -> Iterator[Farm]:
    """Start every service and process; stop them and drop the database on the way out."""
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="imgfarm-bench-")))
        db = PostgresDatabase(name=f"imgfarm_bench_{uuid.uuid4().hex[:8]}")
        db.create()
        stack.callback(db.drop)
        redis = start_server(stack, redis_server(free_port(), tmp))
        redis_url = f"redis://127.0.0.1:{redis.port}/0"
        s3_url, moto = None, None
        if args.storage == "s3":
            os.environ.update(AWS_ENV)
            moto = start_server(stack, moto_server(free_port(), tmp))
            s3_url = f"http://127.0.0.1:{moto.port}"
        env = farm_env(tmp, db.url, redis_url, s3_url)
        settings = settings_from_env(env)
        upgrade(settings.database_url)
        storage = storage_from_settings(settings)
        if isinstance(storage, S3Storage):
            storage.ensure_bucket()
        engine = make_engine(settings.database_url)
        stack.callback(engine.dispose)
        factory = make_session_factory(engine)
        with session_scope(factory) as session:
            team = ensure_team(session, "bench")
            key, team_id = create_api_key(session, team), team.id

        port = free_port()
        logs = args.logs or tmp
        logs.mkdir(parents=True, exist_ok=True)
        api = start_process(stack, ["api", "--port", str(port)], env, logs / "api.log")
        dispatcher = start_process(stack, ["dispatcher"], env, logs / "dispatcher.log")
        worker = start_process(stack, ["worker", "--model", MODEL], env, logs / "worker.log")
        noop = start_noop_worker(stack, env, logs / "noop-worker.log")
        api_url = f"http://127.0.0.1:{port}"
        wait_for(lambda: api_healthy(api_url), 60, "imgfarm api")
        dispatcher.wait_log("dispatcher started", timeout=60)
        worker.wait_log(" ready.", timeout=120)
        noop.wait_log(" ready.", timeout=60)
        pids = {
            name: proc.proc.pid
            for name, proc in (("api", api), ("dispatcher", dispatcher), ("worker", worker))
            if proc.proc is not None
        }
        if noop.proc is not None and redis.proc is not None:
            pids.update({"noop worker": noop.proc.pid, "redis": redis.proc.pid})
        if moto is not None and moto.proc is not None:
            pids["moto"] = moto.proc.pid
        yield Farm(env, settings, api_url, key, team_id, factory, redis_url, logs, pids)


# --- raw Celery: the no-op worker (this same file, run with --noop-worker) -------------------


def start_noop_worker(stack: contextlib.ExitStack, env: dict[str, str], log: Path) -> NoopWorker:
    """``python bench/overhead.py --noop-worker``: a solo-pool Celery worker of no-op tasks."""
    proc = NoopWorker([], {**os.environ, **env}, log).start()
    stack.callback(proc.stop)
    return proc


class NoopWorker(ImgfarmProcess):
    """Like an ``imgfarm`` process (same start, log and stop), running this file instead."""

    def start(self) -> NoopWorker:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--noop-worker"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return self


def run_noop_worker() -> None:
    """Serve ``bench.noop`` with the farm's Celery settings and the farm worker's flags."""
    import redis

    settings = Settings()
    counter = redis.Redis.from_url(settings.broker_url)
    app = make_celery(settings, "imgfarm-bench-noop")

    @app.task(name=NOOP_TASK, acks_late=True, reject_on_worker_lost=True)
    def noop(job_ids: list[str], sent_at: float | None = None) -> None:
        if sent_at is not None:  # a latency probe: when did it start running?
            counter.rpush(STARTED_KEY, time.time() - sent_at)
        counter.incr(COUNTER_KEY, len(job_ids))

    app.worker_main(
        [
            "worker",
            "--pool=solo",
            "--concurrency=1",
            f"--queues={NOOP_QUEUE}",
            f"--hostname=noop-{os.getpid()}@bench",
            "--task-events",
            "--without-gossip",
            "--without-mingle",
            f"--loglevel={settings.log_level}",
        ]
    )


def raw_celery_round_trips(farm: Farm, jobs: int, timeout: float) -> tuple[int, float]:
    """Send ``jobs`` no-op tasks, one job id each; (tasks done, seconds until the last ran)."""
    import redis

    counter = redis.Redis.from_url(farm.redis_url)
    counter.set(COUNTER_KEY, 0)
    app = make_celery(farm.settings, "imgfarm-bench-client")
    started = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for _ in range(jobs):
            app.send_task(
                NOOP_TASK, args=[[str(uuid.uuid4())]], queue=NOOP_QUEUE, producer=producer
            )
    done = wait_count(lambda: int(counter.get(COUNTER_KEY) or 0), jobs, timeout)
    return done, time.perf_counter() - started


def raw_celery_latency(farm: Farm, probes: int, gap: float) -> list[float]:
    """Send → running of single no-op tasks, one at a time, the worker idle in between."""
    import redis

    counter = redis.Redis.from_url(farm.redis_url)
    counter.delete(STARTED_KEY)
    app = make_celery(farm.settings, "imgfarm-bench-client")
    for i in range(probes):
        time.sleep(gap)
        probe = {"sent_at": time.time()}
        app.send_task(NOOP_TASK, args=[["probe"]], kwargs=probe, queue=NOOP_QUEUE)
        wait_for(lambda i=i: counter.llen(STARTED_KEY) > i, 30, "a no-op probe to run", 0.001)
    return [float(v) for v in counter.lrange(STARTED_KEY, 0, -1)]


def wait_count(
    count: Callable[[], int], target: int, timeout: float, interval: float = 0.01
) -> int:
    """Poll ``count`` until it reaches ``target`` or ``timeout`` passes; the last count."""
    deadline = time.monotonic() + timeout
    seen = count()
    while seen < target and time.monotonic() < deadline:
        time.sleep(interval)
        seen = count()
    return seen


# --- the farm -------------------------------------------------------------------------------


def png(size: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (200, 40, 40)).save(buf, format="PNG")
    return buf.getvalue()


def upload_source(client: httpx.Client, size: int) -> str:
    files = [("files", ("bench.png", png(size), "image/png"))]
    response = client.post("/v1/uploads", files=files)
    response.raise_for_status()
    return str(response.json()["uploads"][0]["id"])


def submit_batch(client: httpx.Client, upload_id: str, jobs: int, size: int) -> uuid.UUID:
    body = {
        "model": MODEL,
        "images": [upload_id],
        "prompts": ["overhead"],
        "variants": jobs,
        "width": size,
        "height": size,
    }
    response = client.post("/v1/batches", json=body, timeout=120)
    response.raise_for_status()
    return uuid.UUID(response.json()["id"])


def count_jobs(factory: sessionmaker[Session], batch_id: uuid.UUID, status: str) -> int:
    with factory() as session:
        query = select(func.count()).where(Job.batch_id == batch_id, Job.status == status)
        return int(session.scalar(query) or 0)


def farm_round_trip(
    farm: Farm, client: httpx.Client, upload_id: str, jobs: int, size: int, timeout: float
) -> tuple[int, float, uuid.UUID]:
    """Submit a batch of ``jobs``; (jobs succeeded, seconds until the last did, batch id)."""
    started = time.perf_counter()
    batch_id = submit_batch(client, upload_id, jobs, size)
    done = wait_count(
        lambda: count_jobs(farm.session_factory, batch_id, "succeeded"), jobs, timeout, 0.02
    )
    return done, time.perf_counter() - started, batch_id


def missing_outputs(farm: Farm, batch_id: uuid.UUID) -> int:
    """Succeeded jobs of the batch whose output object is not in storage."""
    with farm.session_factory() as session:
        keys = [
            o["key"]
            for outputs in session.scalars(
                select(Job.outputs).where(Job.batch_id == batch_id, Job.status == "succeeded")
            )
            for o in outputs or []
        ]
    return len(set(keys) - stored_keys(farm.settings, f"outputs/{farm.team_id}/"))


def stored_keys(settings: Settings, prefix: str) -> set[str]:
    """Every key under ``prefix`` (one listing, not a request per object)."""
    storage = storage_from_settings(settings)
    if isinstance(storage, LocalStorage):
        root = storage.root / prefix
        return {str(p.relative_to(storage.root)) for p in root.rglob("*") if p.is_file()}
    base = f"{storage.prefix}/" if storage.prefix else ""
    keys: set[str] = set()
    pages = storage.client.get_paginator("list_objects_v2")
    for page in pages.paginate(Bucket=storage.bucket, Prefix=base + prefix):
        keys.update(o["Key"].removeprefix(base) for o in page.get("Contents", []))
    return keys


def farm_latency(
    farm: Farm, client: httpx.Client, upload_id: str, probes: int, size: int, gap: float
) -> list[float]:
    """created_at → started_at of single jobs, one at a time, the worker idle in between."""
    seconds: list[float] = []
    body = {"model": MODEL, "prompt": "latency", "image": upload_id, "width": size, "height": size}
    for _ in range(probes):
        time.sleep(gap)
        response = client.post("/v1/jobs", json=body)
        response.raise_for_status()
        job_id = uuid.UUID(response.json()["id"])
        job = wait_for(lambda j=job_id: finished_job(farm, j), 30, "a latency probe", 0.005)
        seconds.append((job.started_at - job.created_at).total_seconds())
    return seconds


def finished_job(farm: Farm, job_id: uuid.UUID) -> Job | None:
    with farm.session_factory() as session:
        job = session.get(Job, job_id)
        return job if job is not None and job.finished_at is not None else None


# --- CPU time per process (Linux /proc), to see where a job's cost goes --------------------


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` so far; None where /proc cannot tell."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_pids(farm: Farm) -> dict[str, int]:
    """The benchmark database's server backends (the pools keep them for the whole run)."""
    query = "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
    with farm.session_factory() as session:
        return {f"postgres {pid}": pid for pid in session.scalars(text(query))}


def cpu_snapshot(farm: Farm) -> dict[str, float]:
    pids = {**farm.pids, **postgres_pids(farm)}
    found = {name: cpu_seconds(pid) for name, pid in pids.items()}
    return {name: seconds for name, seconds in found.items() if seconds is not None}


def cpu_used(before: dict[str, float], after: dict[str, float]) -> Counter[str]:
    """CPU seconds per process between two snapshots, all Postgres backends as one."""
    used: Counter[str] = Counter()
    for name in before.keys() & after.keys():
        used["postgres" if name.startswith("postgres") else name] += after[name] - before[name]
    return used


def cpu_line(name: str, used: Counter[str], jobs: int, names: tuple[str, ...]) -> str:
    parts = ", ".join(f"{n} {used[n] * 1000 / jobs:.2f}" for n in names)
    return f"  {name:<11} {parts}"


# --- report ---------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def rate_line(name: str, done: int, jobs: int, seconds: float) -> str:
    partial = "" if done == jobs else f" (TIMED OUT: {done}/{jobs} done)"
    rate = done / seconds
    return f"  {name:<11} {done:>6,} jobs in {seconds:7.2f} s -> {rate:8.1f} jobs/s{partial}"


def latency_line(name: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (
        f"  {name:<11} p50 {percentile(ms, 0.5):6.1f} ms, p99 {percentile(ms, 0.99):6.1f} ms, "
        f"max {max(ms):6.1f} ms over {len(ms)} jobs"
    )


def rounds_line(runs: list[tuple[int, float]]) -> str:
    return ", ".join(f"{done / seconds:.0f}" for done, seconds in runs)


def best_of(runs: list[tuple[int, float]]) -> tuple[int, float]:
    """The fastest complete run (most done first, then least time)."""
    return max(runs, key=lambda r: (r[0], -r[1]))


def measure(farm: Farm, args: argparse.Namespace) -> int:
    headers = {"Authorization": f"Bearer {farm.api_key}"}
    with httpx.Client(base_url=farm.api_url, headers=headers, timeout=30) as client:
        upload_id = upload_source(client, args.source_size)
        # warm-up: connections, imports and the first batch's plans on both sides
        farm_round_trip(farm, client, upload_id, min(64, args.jobs), args.size, args.timeout)
        raw_celery_round_trips(farm, min(64, args.jobs), args.timeout)

        raw_runs: list[tuple[int, float]] = []
        farm_runs: list[tuple[int, float]] = []
        raw_cpu: Counter[str] = Counter()
        farm_cpu: Counter[str] = Counter()
        missing = 0
        for _ in range(args.rounds):
            before = cpu_snapshot(farm)
            raw_runs.append(raw_celery_round_trips(farm, args.jobs, args.timeout))
            middle = cpu_snapshot(farm)
            done, seconds, batch_id = farm_round_trip(
                farm, client, upload_id, args.jobs, args.size, args.timeout
            )
            raw_cpu += cpu_used(before, middle)
            farm_cpu += cpu_used(middle, cpu_snapshot(farm))
            farm_runs.append((done, seconds))
            missing += missing_outputs(farm, batch_id)
        farm_lat = farm_latency(
            farm, client, upload_id, args.latency_jobs, args.size, args.latency_gap
        )
    raw_lat = raw_celery_latency(farm, args.latency_jobs, args.latency_gap)

    raw_done, raw_s = best_of(raw_runs)
    farm_done, farm_s = best_of(farm_runs)
    raw_rate, farm_rate = raw_done / raw_s, farm_done / farm_s
    print(f"== throughput: {args.jobs:,} jobs, best of {args.rounds} ==")
    print(rate_line("raw Celery", raw_done, args.jobs, raw_s))
    print(rate_line("farm", farm_done, args.jobs, farm_s))
    print(f"  ratio       farm / raw Celery = {farm_rate / raw_rate:.1%} (target >= 50%)")
    if args.rounds > 1:
        print(f"  each round  raw Celery {rounds_line(raw_runs)}; farm {rounds_line(farm_runs)}")
    print(f"  outputs     {missing} succeeded job(s) without their output in storage")
    total = args.jobs * args.rounds
    print("== CPU ms per job, by process (all rounds) ==")
    print(cpu_line("raw Celery", raw_cpu, total, ("noop worker", "redis")))
    farm_names = ("worker", "dispatcher", "api", "postgres", "redis", "moto")
    print(cpu_line("farm", farm_cpu, total, farm_names[: 6 if "moto" in farm.pids else 5]))
    print("== queued -> running latency, idle worker ==")
    print(latency_line("farm", farm_lat))
    print(latency_line("raw Celery", raw_lat))
    return 0


def describe(farm: Farm, args: argparse.Namespace) -> None:
    with farm.session_factory() as session:
        version = session.get_bind().dialect.server_version_info  # type: ignore[union-attr]
    depth = farm.env.get("IMGFARM_DISPATCH_DEPTH_PER_WORKER", "default")
    storage = "S3 (moto_server over HTTP)" if args.storage == "s3" else "local folder (file://)"
    print(
        f"imgfarm overhead: PostgreSQL {version}, redis-server, storage {storage}; "
        f"model {MODEL}, {args.size}x{args.size} png outputs; dispatch depth/worker {depth}; "
        f"{os.cpu_count()} CPUs"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=2000, help="jobs per throughput run (<= 10,000)")
    p.add_argument("--rounds", type=int, default=1, help="throughput runs of each (best shown)")
    p.add_argument("--latency-jobs", type=int, default=50, help="single jobs for the latency")
    p.add_argument("--latency-gap", type=float, default=0.1, help="idle seconds before each")
    p.add_argument("--size", type=int, default=64, help="output width and height (multiple of 8)")
    p.add_argument("--source-size", type=int, default=64, help="source image width and height")
    p.add_argument("--storage", choices=("s3", "file"), default="s3")
    p.add_argument("--timeout", type=float, default=600, help="give up on a run after this")
    p.add_argument("--logs", type=Path, help="keep the processes' logs in this folder")
    p.add_argument("--noop-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not 1 <= args.jobs <= 10_000:
        p.error("--jobs must be 1..10,000 (one batch)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.noop_worker:
        run_noop_worker()
        return 0
    with running_farm(args) as farm:
        describe(farm, args)
        return measure(farm, args)


if __name__ == "__main__":
    sys.exit(main())

"""The whole farm on this machine, as the end-to-end benchmarks run it.

A database of its own on the local PostgreSQL server, a ``redis-server``, an S3 endpoint
(``moto_server``; ``storage="file"``: a local folder), a team with an API key, and real
``imgfarm api`` and ``imgfarm dispatcher`` processes; each bench starts its workers. All is
stopped (the database dropped) when the bench leaves ``running_services``. Also here: how
the benches drive and read the farm (uploads, batches, CPU seconds per process).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import log  # noqa: E402
from shared.db import make_engine, make_session_factory, session_scope  # noqa: E402
from shared.migrate import upgrade  # noqa: E402
from shared.models import Batch  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.storage import S3Storage, storage_from_settings  # noqa: E402
from shared.teams import create_api_key, ensure_team  # noqa: E402
from tests.services import (  # noqa: E402
    ImgfarmProcess,
    PostgresDatabase,
    ServerProcess,
    free_port,
    moto_server,
    redis_server,
    wait_answers,
)

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}
BUSY_METRIC = "imgfarm_worker_device_busy_seconds"


@dataclass
class Farm:
    """What the benchmark started and talks to; processes it starts stop with it."""

    env: dict[str, str]
    settings: Settings
    api_url: str
    api_key: str
    team_id: uuid.UUID
    session_factory: sessionmaker[Session]
    redis_url: str
    logs: Path
    stack: contextlib.ExitStack
    pids: dict[str, int] = field(default_factory=dict)
    processes: dict[str, tuple[ImgfarmProcess, str, float]] = field(default_factory=dict)

    def start(
        self,
        name: str,
        args: list[str],
        *,
        ready: str,
        env: Mapping[str, str] | None = None,
        log: str | None = None,
        timeout: float = 120,
    ) -> ImgfarmProcess:
        """``imgfarm ARGS`` with the farm's environment (plus ``env``); ``wait_ready``
        then waits for ``ready`` in its log."""
        proc = ImgfarmProcess(
            args, {**os.environ, **self.env, **(env or {})}, self.logs / (log or f"{name}.log")
        )
        return self.adopt(name, proc.start(), ready=ready, timeout=timeout)

    def adopt(
        self, name: str, proc: ImgfarmProcess, *, ready: str, timeout: float
    ) -> ImgfarmProcess:
        """Track a process started elsewhere (same log and stop as an ``imgfarm`` one)."""
        self.stack.callback(proc.stop)
        self.processes[name] = (proc, ready, timeout)
        if proc.proc is not None:
            self.pids[name] = proc.proc.pid
        return proc

    def wait_ready(self) -> None:
        """The api answers and every started process has logged its ready line."""
        wait_answers(f"{self.api_url}/healthz", 60, "imgfarm api")
        for proc, ready, timeout in self.processes.values():
            proc.wait_log(ready, timeout=timeout)

    def stop(self, name: str) -> None:
        """Stop one process now (SIGTERM: a worker finishes its running tasks first)."""
        self.processes.pop(name)[0].stop()
        self.pids.pop(name, None)


@contextlib.contextmanager
def running_services(
    storage: str, logs: Path | None, extra_env: Mapping[str, str] | None = None
) -> Iterator[Farm]:
    """Start the services, the api and the dispatcher (not waited for: call
    ``Farm.wait_ready`` once the bench's own processes are started too, so they all boot
    side by side); stop them and drop the database on the way out. The IMGFARM_* variables
    go over the caller's environment (which passes tuning knobs on); ``extra_env`` wins."""
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="imgfarm-bench-")))
        db = PostgresDatabase(name=f"imgfarm_bench_{uuid.uuid4().hex[:8]}")
        db.create()
        stack.callback(db.drop)
        servers: list[ServerProcess] = [redis_server(free_port(), tmp)]
        redis_url = f"redis://127.0.0.1:{servers[0].port}/0"
        env = {
            "IMGFARM_DATA_DIR": str(tmp / "data"),
            "IMGFARM_DATABASE_URL": db.url,
            "IMGFARM_BROKER_URL": redis_url,
            "IMGFARM_LOG_LEVEL": "INFO",  # the production default: Celery says " ready." at INFO
            "IMGFARM_STORAGE_URL": f"file://{tmp / 'objects'}",
            **AWS_ENV,
        }
        if storage == "s3":
            os.environ.update(AWS_ENV)
            servers.append(moto_server(free_port(), tmp))
            env["IMGFARM_STORAGE_URL"] = "s3://imgfarm-bench/objects"
            env["IMGFARM_S3_ENDPOINT_URL"] = f"http://127.0.0.1:{servers[1].port}"
        env.update(extra_env or {})
        for server in servers:
            server.start()
            stack.callback(server.stop)
        # The Settings the farm's processes build from the same IMGFARM_* variables (and
        # the caller's environment).
        fields = {k[8:].lower(): v for k, v in env.items() if k.startswith("IMGFARM_")}
        settings = Settings(**fields)  # type: ignore[arg-type]
        upgrade(settings.database_url)
        if isinstance(objects := storage_from_settings(settings), S3Storage):
            objects.ensure_bucket()
        engine = make_engine(settings.database_url)
        stack.callback(engine.dispose)
        factory = make_session_factory(engine)
        with session_scope(factory) as session:
            team = ensure_team(session, "bench")
            key, team_id = create_api_key(session, team), team.id
        port, logs = free_port(), logs or tmp
        logs.mkdir(parents=True, exist_ok=True)
        farm = Farm(
            env, settings, f"http://127.0.0.1:{port}", key, team_id, factory, redis_url, logs, stack
        )
        farm.start("api", ["api", "--port", str(port)], ready="", timeout=60)
        farm.start("dispatcher", ["dispatcher"], ready="dispatcher started", timeout=60)
        for name, server in zip(("redis", "moto"), servers, strict=False):
            if server.proc is not None:
                farm.pids[name] = server.proc.pid
        yield farm


def start_worker(
    farm: Farm, model: str, env: Mapping[str, str] | None = None, log: str | None = None
) -> str:
    """``imgfarm worker --model MODEL`` (plus ``env``), serving its metrics on a free port:
    their URL, once the worker is ready and they answer."""
    port = free_port()
    metrics = {"IMGFARM_METRICS_PORT": str(port), "IMGFARM_METRICS_ADDRESS": "127.0.0.1"}
    worker = farm.start(
        "worker",
        ["worker", "--model", model],
        ready=" ready.",
        env={**(env or {}), **metrics},
        log=log,
    )
    worker.wait_log(" ready.", timeout=120)
    url = f"http://127.0.0.1:{port}/metrics"
    wait_answers(url, 60, "the worker's metrics")
    return url


def device_busy_seconds(metrics_url: str, alias: str) -> float:
    """The worker's ``imgfarm_worker_device_busy_seconds_total{model=alias}`` (0 before its
    first pipeline call); an error if its metrics do not answer, never a silent 0."""
    from prometheus_client.parser import text_string_to_metric_families

    response = httpx.get(metrics_url, timeout=5)
    response.raise_for_status()
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples if family.name == BUSY_METRIC else []:
            if sample.name == f"{BUSY_METRIC}_total" and sample.labels.get("model") == alias:
                return float(sample.value)
    return 0.0


def describe(farm: Farm, bench: str, details: str) -> None:
    """One line on what the run stood on: the figures mean little without it."""
    with farm.session_factory() as session:
        version = session.get_bind().dialect.server_version_info  # type: ignore[union-attr]
    local = farm.env["IMGFARM_STORAGE_URL"].startswith("file:")
    storage = "local folder (file://)" if local else "S3 (moto_server over HTTP)"
    where = f"PostgreSQL {version}, redis-server, storage {storage}; {details}"
    log(f"imgfarm {bench}: {where}; {os.cpu_count()} CPUs")


# --- submitting work and watching it in Postgres ---------------------------------------------


def upload_image(client: httpx.Client, data: bytes, name: str = "bench.png") -> str:
    """``POST /v1/uploads`` of one image; its upload id."""
    response = client.post("/v1/uploads", files=[("files", (name, data, "image/png"))])
    response.raise_for_status()
    return str(response.json()["uploads"][0]["id"])


def run_batch(
    farm: Farm,
    client: httpx.Client,
    model: str,
    upload_id: str,
    jobs: int,
    size: int,
    timeout: float,
) -> tuple[uuid.UUID, float]:
    """One ``POST /v1/batches`` of 1 image x 1 prompt x ``jobs`` variants at the same params
    (full batches for the dispatcher), then wait until every job is finished (or
    ``timeout``): (batch id, wall seconds from submit to the last job finished)."""
    body = {
        "model": model,
        "images": [upload_id],
        "prompts": ["bench"],
        "variants": jobs,
        "width": size,
        "height": size,
    }
    started = time.perf_counter()
    response = client.post("/v1/batches", json=body, timeout=120)
    response.raise_for_status()
    batch_id = uuid.UUID(response.json()["id"])

    def finished() -> int:
        # The batch row's completed_at (set with the last job's final state): a primary-key
        # probe. Counting the batch's jobs by status every 20 ms was a fifth of the
        # Postgres CPU the summary put on the farm. Ended with a commit, as the farm's own
        # reads (shared/db.py session_scope), so the probe stays a prepared statement.
        with session_scope(farm.session_factory) as session:
            done = session.scalar(select(Batch.completed_at).where(Batch.id == batch_id))
        return jobs if done is not None else 0

    wait_count(finished, jobs, timeout, 0.02)
    return batch_id, time.perf_counter() - started


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


# --- CPU time per process (Linux /proc), to see where a job's cost goes --------------------


def cpu_snapshot(farm: Farm) -> dict[str, float]:
    """CPU seconds so far of each process, the benchmark database's server backends too
    (the pools keep them for the whole run)."""
    query = "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
    with farm.session_factory() as session:
        backends = {f"postgres {pid}": pid for pid in session.scalars(text(query))}
    found = {name: cpu_seconds(pid) for name, pid in {**farm.pids, **backends}.items()}
    return {name: seconds for name, seconds in found.items() if seconds is not None}


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` so far; None where /proc cannot tell."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_used(before: dict[str, float], after: dict[str, float]) -> Counter[str]:
    """CPU seconds per process between two snapshots, all Postgres backends as one. A
    backend first seen after counts whole: a pool opened it during the run (the farm's
    processes all exist before), and leaving it out had the figure depend on how many
    connections each pool happened to hold when the run began."""
    used: Counter[str] = Counter()
    for name, seconds in after.items():
        backend = name.startswith("postgres")
        if name in before or backend:
            used["postgres" if backend else name] += seconds - before.get(name, 0.0)
    return used

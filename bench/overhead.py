"""Farm overhead: end-to-end jobs/s of the ``echo`` model against raw Celery round trips on
the same Redis, and queued→running latency with an idle worker. Prints figures; never fails
on time.

    python bench/overhead.py                      # 2,000 jobs, S3 on moto_server
    python bench/overhead.py --jobs 500 --storage file --latency-jobs 20 --json out.json
    TMPDIR=/dev/shm python bench/overhead.py --storage file --rounds 3   # objects in RAM
    python bench/overhead.py --source-size 1024 --rounds 2 \
        --compare-env IMGFARM_WORKER_PREPARED_CACHE_BYTES=0     # a worker setting's effect
    IMGFARM_WORKER_PIPELINE_DEPTH=1 python bench/overhead.py --model gpu-sim --jobs 192 \
        --rounds 2 --compare-env IMGFARM_WORKER_PIPELINE_DEPTH=3  # GPU duty cycle, depth 1 vs 3

The farm runs on this machine (bench/farm.py) with ``imgfarm worker --model echo``, which
renders nothing: a job costs only the farm's own work (api, dispatcher, Redis hand-over,
claim, source fetch, resize, encode, store, record) and storage's (moto_server shares the
CPUs; a local folder on tmpfs shows the farm alone). CPU ms per job per process are in the
summary too: unlike jobs/s, they hardly move when other work shares the machine.

* farm: one ``POST /v1/batches`` of N jobs → every job finished in Postgres; each output is
  then checked in storage (not timed).
* raw Celery: N no-op tasks (the farm's Celery settings: late ack, prefetch 1, JSON) sent to
  a ``-P solo`` worker on the same Redis; each task counts itself in Redis.
* raw Celery + output (echo): N tasks of one job each, each doing what the farm's worker does
  for one output (fetch and decode the source through the worker's caches, encode, label,
  score, store: worker/render.py) with no database, dispatcher or batching around it. The
  farm against this is what its orchestration costs or saves; against the no-op, what the
  output work itself costs too.
* latency: single jobs through ``POST /v1/jobs``, one at a time with the worker idle,
  ``started_at - created_at`` (api commit → NOTIFY → dispatcher → Redis → claim); and for a
  raw Celery task, send → running.
* ``--compare-env NAME=VALUE``: each round also runs the farm with the worker restarted with
  that variable ("farm B"), in alternating order (A B, B A, ...), on the same services.
* duty cycle: the rise of the worker's device-busy metric over a run's wall time. With
  ``--model gpu-sim`` (a GPU stand-in: an ``echo`` alias whose pipeline call holds the
  device lane S s per image, asleep, as a GPU leaves the CPU to the other stages; S = 1 /
  the farm's SD1.5 images/s on an H200, bench/results/) outputs are the photo-like source
  at 512², so encoding costs what a render's does; 1 - duty cycle is the share off the GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image
from sqlalchemy import select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.farm import (  # noqa: E402
    Farm,
    cpu_snapshot,
    cpu_used,
    describe,
    device_busy_seconds,
    run_batch,
    running_services,
    start_worker,
    upload_image,
    wait_count,
)
from bench.harness import (  # noqa: E402
    missing_outputs,
    percentile,
    photo_like,
    png_bytes,
    print_summary,
    status_counts,
    write_json,
)
from shared.broker import make_celery  # noqa: E402
from shared.models import Job  # noqa: E402
from shared.settings import Settings  # noqa: E402
from tests.services import ImgfarmProcess, wait_for  # noqa: E402

SIM_ALIAS = "gpu-sim"
H200_RESULTS = ROOT / "bench" / "results" / "h200-2026-11-28.json"
NOOP_TASK = "bench.noop"
OUTPUT_TASK = "bench.echo_output"
RAW_OUTPUT = "raw Celery + output"  # one task per job, each doing the job's output work
NOOP_QUEUE = "bench.noop"
COUNTER_KEY = "bench:noop:done"
STARTED_KEY = "bench:noop:started"


def h200_seconds_per_image() -> float:
    """1 / the farm path's SD1.5 images/s at batch 16 as measured on an H200."""
    summary = json.loads(H200_RESULTS.read_text())["summary"]
    return round(1 / summary["sd15"]["b_images_per_s"], 3)


def sim_registry(seconds_per_image: float) -> str:
    """``gpu-sim``: an ``echo`` alias at the H200 run's size and batch (its steps, strength
    and guidance only keep the params honest: echo never denoises)."""
    return f"""\
[models.{SIM_ALIAS}]
source = "builtin:echo"
kind = "echo"
device = "cpu"
max_batch = 16
width = 512
height = 512
steps = 1
max_steps = 1
strength = 1.0
guidance_scale = 0.0
options = {{ device_seconds_per_image = {seconds_per_image!r} }}
"""


@contextlib.contextmanager
def running_farm(args: argparse.Namespace) -> Iterator[Farm]:
    """The farm (bench/farm.py) with a no-op Celery worker beside it (and ``gpu-sim`` in
    its registry); ``measure`` starts the model's worker."""
    with contextlib.ExitStack() as stack:
        env = {}
        if args.model == SIM_ALIAS:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            (folder / "models.toml").write_text(sim_registry(args.sim_seconds_per_image))
            env["IMGFARM_MODELS"] = str(folder / "models.toml")
        farm = stack.enter_context(running_services(args.storage, args.logs, env))
        noop = NoopWorker([], {**os.environ, **farm.env}, farm.logs / "noop-worker.log")
        farm.adopt("noop worker", noop.start(), ready=" ready.", timeout=60)
        farm.wait_ready()
        yield farm


# --- raw Celery: the no-op worker (this same file, run with --noop-worker) -------------------


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

    finish = echo_output(settings)

    @app.task(name=OUTPUT_TASK, acks_late=True, reject_on_worker_lost=True)
    def output(job_ids: list[str], job: dict[str, Any]) -> None:
        for job_id in job_ids:
            finish(
                Job(
                    id=uuid.UUID(job_id),
                    team_id=uuid.UUID(job["team_id"]),
                    source_key=job["source_key"],
                    params=job["params"],
                    history=[],
                )
            )
        counter.incr(COUNTER_KEY, len(job_ids))

    app.worker_main(
        ["worker", "--pool=solo", "--concurrency=1", f"--queues={NOOP_QUEUE}",
         f"--hostname=noop-{os.getpid()}@bench", "--task-events", "--without-gossip",
         "--without-mingle", f"--loglevel={settings.log_level}"]
    )  # fmt: skip


def echo_output(settings: Settings) -> Callable[[Job], object]:
    """The worker's own steps for one echo job, with no farm around them: fetch and decode
    the source (through the worker's caches), "render", encode, label, score and store
    (worker/render.py), as the farm's io pool runs them for each job it claimed."""
    from shared.registry import BUILTINS
    from shared.storage import storage_from_settings
    from worker.pipelines import LoadedModel
    from worker.prepared_cache import PreparedCache
    from worker.render import prepare, render, store_output
    from worker.source_cache import CachingStorage

    model = LoadedModel(BUILTINS["echo"], None, "cpu", "bench", 0.0)
    storage = CachingStorage(storage_from_settings(settings), settings.worker_source_cache_bytes)
    cache = PreparedCache(settings.worker_prepared_cache_bytes)

    def finish(job: Job) -> object:
        item = prepare(model, storage, job, cache)
        rendered = render(model, [item])
        return store_output(model, storage, item, rendered.images[0], worker="bench",
                            batch_size=1, render_seconds=rendered.seconds)  # fmt: skip

    return finish


def raw_celery_round_trips(
    farm: Farm, jobs: int, timeout: float, job: dict[str, Any] | None = None
) -> tuple[int, float]:
    """Send ``jobs`` tasks, one job id each: no-ops, or given a farm ``job`` (its team,
    source and params) each doing that job's output work (``echo_output``); (tasks done,
    seconds until the last ran)."""
    import redis

    counter = redis.Redis.from_url(farm.redis_url)
    counter.set(COUNTER_KEY, 0)
    app = make_celery(farm.settings, "imgfarm-bench-client")
    task, extra = (NOOP_TASK, []) if job is None else (OUTPUT_TASK, [job])
    started = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for _ in range(jobs):
            app.send_task(
                task, args=[[str(uuid.uuid4())], *extra], queue=NOOP_QUEUE, producer=producer
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


# --- the farm -------------------------------------------------------------------------------


def farm_latency(
    farm: Farm, client: httpx.Client, upload_id: str, args: argparse.Namespace
) -> list[float]:
    """created_at → started_at of single jobs, one at a time, the worker idle in between."""
    seconds: list[float] = []
    probes, size, gap = args.latency_jobs, args.size, args.latency_gap
    body: dict[str, Any] = {"model": args.model, "prompt": "latency", "image": upload_id}
    body |= {"width": size, "height": size}
    for _ in range(probes):
        time.sleep(gap)
        response = client.post("/v1/jobs", json=body)
        response.raise_for_status()
        job_id = uuid.UUID(response.json()["id"])
        job = wait_for(lambda j=job_id: finished_job(farm, j), 30, "a latency probe", 0.005)
        seconds.append((job.started_at - job.created_at).total_seconds())
    return seconds


def sample_job(farm: Farm) -> dict[str, Any]:
    """A finished farm job's team, source and params, for ``echo_output``'s tasks."""
    with farm.session_factory() as session:
        job = session.scalars(select(Job).where(Job.status == "succeeded").limit(1)).one()
        return {"team_id": str(job.team_id), "source_key": job.source_key, "params": job.params}


def finished_job(farm: Farm, job_id: uuid.UUID) -> Job | None:
    """The job once it has finished, else None."""
    with farm.session_factory() as session:
        job = session.get(Job, job_id)
        return job if job is not None and job.finished_at is not None else None


# --- report ---------------------------------------------------------------------------------


def best_of(runs: list[tuple[int, float]]) -> tuple[int, float]:
    """The fastest complete run (most done first, then least time)."""
    return max(runs, key=lambda r: (r[0], -r[1]))


def latency(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {q: round(percentile(ms, v), 1) for q, v in (("p50", 0.5), ("p99", 0.99), ("max", 1))}


@dataclass
class Variant:
    """One way of running the farm's worker (its extra environment), with its rounds."""

    name: str
    env: dict[str, str]
    runs: list[tuple[int, float]] = field(default_factory=list)
    cpu: Counter[str] = field(default_factory=Counter)
    busy: list[float] = field(default_factory=list)  # device-busy seconds of each run


def variants(args: argparse.Namespace) -> list[Variant]:
    """The worker as configured, and with ``--compare-env`` if given."""
    if args.compare_env is None:
        return [Variant("farm", {})]
    name, _, value = args.compare_env.partition("=")
    return [Variant("farm", {}), Variant("farm B", {name: value})]


def restart_worker(farm: Farm, model: str, variant: Variant, warm_up: Callable[[], object]) -> str:
    """Replace the worker by one with ``variant``'s environment, ready and warm; the URL
    of its metrics."""
    farm.stop("worker")
    log = f"worker-{uuid.uuid4().hex[:6]}.log"  # its own log: the ready line is its own
    url = start_worker(farm, model, variant.env, log)
    warm_up()
    return url


def measure(farm: Farm, args: argparse.Namespace) -> int:
    """Warm-ups, the farm's latency, each round (raw Celery, then the farm's variants), then
    raw Celery's latency."""
    headers = {"Authorization": f"Bearer {farm.api_key}"}
    configs = variants(args)
    raw = Variant("raw Celery", {})
    raw_output = Variant(RAW_OUTPUT, {})
    missing = 0
    model, side = args.model, args.source_size
    url = start_worker(farm, model)
    with httpx.Client(base_url=farm.api_url, headers=headers, timeout=30) as client:
        # echo: a flat source, echo only resizes and encodes it (the farm's own cost is the
        # figure); gpu-sim: photo-like, so its outputs encode as a render's do.
        flat = Image.new("RGB", (side, side), (200, 40, 40))
        source = photo_like(side, side) if model == SIM_ALIAS else flat
        upload_id = upload_image(client, png_bytes(source))

        def warm_up() -> None:  # connections, imports and the first batch's plans
            run_batch(farm, client, model, upload_id, min(64, args.jobs), args.size, args.timeout)

        warm_up()
        job = sample_job(farm)  # the params, team and source the farm's batches render
        raw_celery_round_trips(farm, min(64, args.jobs), args.timeout)
        raw_celery_round_trips(farm, min(64, args.jobs), args.timeout, job)
        # Latency first, with the worker as configured (farm A) warm and idle.
        farm_lat = farm_latency(farm, client, upload_id, args)
        running = configs[0]
        for round_ in range(args.rounds):
            before = cpu_snapshot(farm)
            raw.runs.append(raw_celery_round_trips(farm, args.jobs, args.timeout))
            raw.cpu += cpu_used(before, cpu_snapshot(farm))
            if args.model == "echo":  # gpu-sim measures the GPU's duty cycle, not this
                before = cpu_snapshot(farm)
                raw_output.runs.append(raw_celery_round_trips(farm, args.jobs, args.timeout, job))
                raw_output.cpu += cpu_used(before, cpu_snapshot(farm))
            for config in configs if round_ % 2 == 0 else configs[::-1]:
                if config is not running:
                    url = restart_worker(farm, model, config, warm_up)
                    running = config
                before, busy = cpu_snapshot(farm), device_busy_seconds(url, model)
                batch_id, seconds = run_batch(
                    farm, client, model, upload_id, args.jobs, args.size, args.timeout
                )
                config.cpu += cpu_used(before, cpu_snapshot(farm))
                config.busy.append(device_busy_seconds(url, model) - busy)
                done = status_counts(farm.session_factory, batch_id)["succeeded"]
                config.runs.append((done, seconds))
                missing += missing_outputs(farm.session_factory, farm.settings, batch_id)
    raw_lat = raw_celery_latency(farm, args.latency_jobs, args.latency_gap)
    ran = [raw, *([raw_output] if raw_output.runs else []), *configs]
    summary = summarize(args, ran, missing)
    summary["latency_ms"] = {"farm": latency(farm_lat), "raw Celery": latency(raw_lat)}
    if args.json:
        write_json(args.json, {"summary": summary})
    print_summary("overhead", {"summary": summary})
    return 0


def summarize(args: argparse.Namespace, ran: list[Variant], missing: int) -> dict[str, Any]:
    """Jobs/s (best round of each), the farm's share of raw Celery's (target >= 50%), farm
    B's of the farm's, and CPU ms per job and process over all rounds."""
    best = {v.name: best_of(v.runs) for v in ran}
    rates = {name: round(done / seconds, 1) for name, (done, seconds) in best.items()}
    names = ("worker", "dispatcher", "api", "postgres", "redis", "moto", "noop worker")
    total = args.jobs * args.rounds
    out: dict[str, Any] = {
        "jobs": args.jobs,
        "rounds": args.rounds,
        "done": {name: done for name, (done, _) in best.items()},
        "jobs_per_s": rates,
        "farm / raw Celery": round(rates["farm"] / rates["raw Celery"], 3),
        **(
            {"farm / " + RAW_OUTPUT: round(rates["farm"] / rates[RAW_OUTPUT], 3)}
            if RAW_OUTPUT in rates
            else {}
        ),
        "each round jobs/s": {v.name: [round(d / s) for d, s in v.runs] for v in ran},
        "cpu_ms_per_job": {
            v.name: {n: round(v.cpu[n] * 1000 / total, 2) for n in names if n in v.cpu} for v in ran
        },
        "missing_outputs": missing,
        # The best run's device-busy seconds over its wall time (gpu-sim: the GPU's).
        "duty_cycle": {
            v.name: round(v.busy[v.runs.index(best[v.name])] / best[v.name][1], 4)
            for v in ran
            if v.busy
        },
    }
    if "farm B" in rates:
        out["farm B / farm"] = round(rates["farm B"] / rates["farm"], 3)
        out["farm B"] = args.compare_env
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=2000, help="jobs per throughput run (<= 10,000)")
    p.add_argument("--rounds", type=int, default=1, help="throughput runs of each (best shown)")
    p.add_argument("--latency-jobs", type=int, default=50, help="single jobs for the latency")
    p.add_argument("--latency-gap", type=float, default=0.1, help="idle seconds before each")
    p.add_argument("--model", choices=("echo", SIM_ALIAS), default="echo", help="see the header")
    p.add_argument(
        "--sim-seconds-per-image",
        type=float,
        help="gpu-sim's device seconds per image (default: the H200's, 0.084)",
    )
    p.add_argument("--size", type=int, help="output width and height (echo 64, gpu-sim 512)")
    p.add_argument("--source-size", type=int, help="source width and height (as --size)")
    p.add_argument("--storage", choices=("s3", "file"), default="s3")
    p.add_argument("--timeout", type=float, default=600, help="give up on a run after this")
    p.add_argument("--logs", type=Path, help="keep the processes' logs in this folder")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument(
        "--compare-env",
        metavar="NAME=VALUE",
        help="also run each round with the worker restarted with this variable (farm B)",
    )
    p.add_argument("--noop-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not 1 <= args.jobs <= 10_000:
        p.error("--jobs must be 1..10,000 (one batch)")
    if args.compare_env is not None and "=" not in args.compare_env:
        p.error("--compare-env takes NAME=VALUE")
    args.size = args.size or (512 if args.model == SIM_ALIAS else 64)
    args.source_size = args.source_size or args.size
    if args.sim_seconds_per_image is None:
        args.sim_seconds_per_image = h200_seconds_per_image()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.noop_worker:
        run_noop_worker()
        return 0
    with running_farm(args) as farm:
        depth = os.environ.get("IMGFARM_DISPATCH_DEPTH_PER_WORKER", "default")
        details = f"model {args.model}, {args.size}² png outputs, dispatch depth {depth}"
        describe(farm, "overhead", details)
        return measure(farm, args)


if __name__ == "__main__":
    sys.exit(main())

"""Pipeline overlap: how busy a render worker keeps its GPU, end to end, at pipeline depth 1
(every batch's outputs encoded and uploaded before the next batch renders) against depth N
(the next batch on the device while the last one's outputs are stored). Prints figures;
never fails on time.

    python bench/pipeline_overlap.py                  # 192 jobs, depths 1 and 3, 2 rounds, S3
    python bench/pipeline_overlap.py --storage file --depths 1,2,3,4 --json out.json
    python bench/pipeline_overlap.py --smoke          # 32 jobs, 0.02 s/image, 1 round (tests)
    python bench/pipeline_overlap.py --model tiny     # the real tiny model on the CPU instead
    python bench/pipeline_overlap.py --in-process --model sd15 --device cuda --jobs 96

Models: ``gpu-sim`` (the default) stands in for a GPU on a machine without one. It is an
alias, in a registry TOML the benchmark writes (IMGFARM_MODELS), of the ``echo`` kind with
``options = { device_seconds_per_image = S }``: each pipeline call holds the worker's device
lane for S x batch size seconds, asleep, so the CPU stays free for the other stages exactly
as while a GPU renders. S defaults to 1 / the images/s the farm's SD1.5 path measured on an
H200 (512², 20 steps, batch 16; bench/results/h200-2026-11-28.json): 0.084 s. Everything else
is real: the outputs are the 512x512 photo-like source encoded as PNG (what encoding a real
render costs; a flat image would be nearly free) and uploaded to storage. ``tiny`` renders
with the built-in random-weight model on the CPU: there the "GPU" competes with the CPU
stages for the same cores, so overlapping them gains less. ``sd15`` is full-size SD1.5 with
random weights (bench/sd15_config.py; the tiny components with ``--smoke``), saved once under
``--workdir`` and compiled on CUDA, as bench/worker_path.py loads it.

Farms: by default every job goes through the api, Postgres, the dispatcher, Redis and the
worker's claim and record (below). ``--in-process`` needs no services, for a machine that has
none (the GPU session, bench/gpu_session.sh): the worker's own render task
(``worker.tasks.run_render``: claim, prepare on the io pool, render on the device lane, store
and record on the io pool) called by ``depth`` threads as Celery's pool calls it, in this
process, on SQLite and a local folder; the jobs are inserted straight into the database and
the duty cycle is read from the lane. Only the model's one bucket the runs use is warmed.

Per run, a fresh worker with ``IMGFARM_WORKER_PIPELINE_DEPTH`` = depth and
``IMGFARM_METRICS_PORT`` set, a warm-up batch (not timed), then one ``POST /v1/batches`` of N
jobs (1 source x 1 prompt x N variants at the same params, so they render in full batches)
→ every job ``succeeded`` in Postgres. Figures:

* images/s, against the ideal: 1 / S, the rate of a GPU that never waits (for a real
  model, each run's images per second of device-lane time: its pipeline alone);
* device duty cycle: the rise of ``imgfarm_worker_device_busy_seconds_total``, scraped from
  the worker before and after, over the run's wall seconds (submit → last job succeeded;
  so the api's insert of the batch and the last batch's upload are in it, as for a client);
* device idle: wall minus busy seconds. At depth 1 that is every batch's CPU stages; at
  best it is one batch's worth, the first batch's fetch and the last batch's upload, which
  nothing can overlap in a run of one batch (so longer runs get closer to 100 %);
* farm CPU (the farm's processes and this one, from /proc) and machine CPU (/proc/stat)
  over all cores' time, and CPU ms per image by process: when the CPU stages of the batches
  in flight and the services need every core, no depth keeps the GPU busy, and these say
  so. Machine above farm is other work on this machine.

Depths alternate within each round and their order flips every other round (1,3 then 3,1),
so drift and noise hit every depth alike; the best run of each depth and every round are
shown. Then each job's output is checked in storage (not timed).

Everything runs on this machine, started and stopped by the benchmark (bench/farm.py): a
database of its own on the local PostgreSQL server, a ``redis-server`` on a free port, an
S3 endpoint (``moto_server``; ``--storage file`` uses a local folder instead), and real
``imgfarm api``, ``imgfarm dispatcher`` and ``imgfarm worker`` processes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.harness import (  # noqa: E402
    cpu_seconds,
    cpu_used,
    machine_cpu_seconds,
    missing_outputs,
    photo_like,
    png_bytes,
    render_job,
    status_counts,
    write_json,
)
from shared.db import make_engine, make_session_factory, session_scope  # noqa: E402
from shared.models import Base, Batch, Job  # noqa: E402
from shared.registry import ModelSpec, load_registry  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.storage import source_key, storage_from_settings  # noqa: E402
from shared.teams import ensure_team  # noqa: E402

# What only the services need (httpx, bench.farm, tests.services: Postgres, Redis, moto) is
# imported where it is used, so that --in-process runs with the GPU session's few wheels.
if TYPE_CHECKING:
    import httpx

    from bench.farm import Farm
    from worker.context import WorkerContext

SIM_ALIAS = "gpu-sim"
SD15_ALIAS = "sd15-random"
# The farm path's figures on an H200 (bench/gpu_throughput.py): the stand-in's speed.
H200_RESULTS = ROOT / "bench" / "results" / "h200-2026-11-28.json"
BUSY_METRIC = "imgfarm_worker_device_busy_seconds"
PROMPT = "pipeline overlap"
TERMINAL = ("succeeded", "failed", "canceled")
# "bench": this process, which submits and polls Postgres for the batch's progress
# (--in-process: the worker itself).
PROCESSES = ("worker", "api", "dispatcher", "postgres", "redis", "moto", "bench")


# --- the model: a GPU stand-in, the real tiny model, or SD1.5 ---------------------------------


def h200_seconds_per_image() -> float:
    """1 / the farm path's SD1.5 images/s at batch 16 as measured on an H200."""
    summary = json.loads(H200_RESULTS.read_text())["summary"]
    return round(1 / summary["sd15"]["b_images_per_s"], 3)


def registry_toml(args: argparse.Namespace) -> str:
    """``gpu-sim``: an ``echo`` alias with the sizes and batch of the SD1.5 path measured on
    the H200, whose pipeline call sleeps ``--device-seconds`` per image on the device lane;
    ``sd15-random``: the checkpoint under ``--workdir``, as bench/worker_path.py's spec."""
    size, batch, steps = (64, 4, 4) if args.smoke else (512, 16, 20)
    return f"""\
[models.{SIM_ALIAS}]
source = "builtin:echo"
kind = "echo"
device = "cpu"
description = "GPU stand-in: holds the device lane {args.device_seconds} s per image"
max_batch = 16
width = 512
height = 512
# echo never denoises: these only keep the recorded params honest.
steps = 1
max_steps = 1
strength = 1.0
guidance_scale = 0.0
options = {{ device_seconds_per_image = {args.device_seconds!r} }}
""" + (
        ""
        if args.model != "sd15"
        else f"""
[models.{SD15_ALIAS}]
source = "{checkpoint_folder(args)}"
dtype = "bfloat16"
device = "{args.device}"
max_batch = {batch}
width = {size}
height = {size}
steps = {steps}
options = {{ compile = true }}
"""
    )


def checkpoint_folder(args: argparse.Namespace) -> Path:
    """bench/worker_path.py's folder for the same checkpoint: one build serves both."""
    return Path(args.workdir) / ("tiny-random" if args.smoke else "sd15-random")


def model_spec(args: argparse.Namespace, registry_path: Path) -> ModelSpec:
    """The alias the workers pin, as the farm's processes will read it."""
    alias = {"gpu-sim": SIM_ALIAS, "sd15": SD15_ALIAS}.get(args.model, args.model)
    spec = load_registry(registry_path)[alias]
    if args.model == "sd15":
        from bench.harness import saved_img2img  # imports torch: only where needed
        from worker.accel import resolve_device

        saved_img2img(checkpoint_folder(args), resolve_device(args.device), args.smoke)
    return spec


def photo_png(size: int) -> bytes:
    """The source: photo-like (gradient, soft shapes, sensor noise), so that encoding each
    output as PNG costs what it costs on a real render."""
    return png_bytes(photo_like(size, size))


# --- one run: a worker at one depth, one batch -----------------------------------------------


@dataclass
class Run:
    """One timed batch at one depth."""

    depth: int
    round: int
    jobs: int
    seconds: float
    statuses: dict[str, int]
    missing_outputs: int
    device_busy_seconds: float
    # Submit → first job claimed: the api's insert of the batch and the hand-over, which no
    # depth can overlap (the GPU has nothing yet).
    first_claim_seconds: float | None
    machine_cpu_busy: float | None
    cpu_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def succeeded(self) -> int:
        return self.statuses.get("succeeded", 0)

    @property
    def unfinished(self) -> int:
        return self.jobs - sum(self.statuses.get(s, 0) for s in TERMINAL)

    @property
    def images_per_second(self) -> float:
        return self.succeeded / self.seconds

    @property
    def duty_cycle(self) -> float:
        return self.device_busy_seconds / self.seconds

    @property
    def device_idle_seconds(self) -> float:
        return self.seconds - self.device_busy_seconds

    @property
    def farm_cpu_busy(self) -> float:
        """The farm's own processes' CPU over all cores' time (the rest of the machine's
        busy share is other work on this machine)."""
        return sum(self.cpu_seconds.values()) / (self.seconds * (os.cpu_count() or 1))

    def figures(self, ideal: float | None) -> dict[str, object]:
        return {
            **asdict(self),
            "succeeded": self.succeeded,
            "failed": self.statuses.get("failed", 0),
            "unfinished": self.unfinished,
            "images_per_second": round(self.images_per_second, 3),
            "ideal_images_per_second": None if ideal is None else round(ideal, 3),
            "of_ideal": None if ideal is None else round(self.images_per_second / ideal, 4),
            "duty_cycle": round(self.duty_cycle, 4),
            "device_idle_seconds": round(self.device_idle_seconds, 3),
            "farm_cpu_busy": round(self.farm_cpu_busy, 4),
        }


def device_busy_seconds(metrics_url: str, alias: str) -> float | None:
    """The worker's ``imgfarm_worker_device_busy_seconds_total{model=alias}``; None while
    its metrics port does not answer."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    try:
        response = httpx.get(metrics_url, timeout=5)
        response.raise_for_status()
    except httpx.HTTPError:
        return None
    for family in text_string_to_metric_families(response.text):
        if family.name != BUSY_METRIC:
            continue
        for sample in family.samples:
            if sample.name == f"{BUSY_METRIC}_total" and sample.labels.get("model") == alias:
                return float(sample.value)
    return 0.0  # no pipeline call counted yet


def scrape_busy(metrics_url: str, alias: str) -> float:
    """``device_busy_seconds`` of a worker that must be up: a reading that silently became
    0 would turn into a wrong duty cycle."""
    busy = device_busy_seconds(metrics_url, alias)
    if busy is None:
        raise RuntimeError(f"the worker's metrics at {metrics_url} did not answer")
    return busy


def start_worker(farm: Farm, alias: str, depth: int, round_no: int) -> str:
    """``imgfarm worker --model ALIAS`` at ``depth``, ready; the URL of its metrics."""
    from tests.services import free_port, wait_for

    port = free_port()
    env = {
        "IMGFARM_WORKER_PIPELINE_DEPTH": str(depth),
        "IMGFARM_METRICS_PORT": str(port),
        "IMGFARM_METRICS_ADDRESS": "127.0.0.1",
    }
    log = f"worker-depth{depth}-round{round_no}.log"
    # The first start of ``tiny`` builds and saves the model: give it time.
    farm.start("worker", ["worker", "--model", alias], ready=" ready.", env=env, log=log)
    farm.wait_ready()
    url = f"http://127.0.0.1:{port}/metrics"
    wait_for(lambda: device_busy_seconds(url, alias) is not None, 60, "the worker's metrics")
    return url


def wait_finished(farm: Farm, batch_id: uuid.UUID, jobs: int, timeout: float) -> Counter[str]:
    """Poll Postgres until every job of the batch is finished (or ``timeout``); by status."""
    deadline = time.monotonic() + timeout
    while True:
        counts = status_counts(farm.session_factory, batch_id)
        if sum(counts[s] for s in TERMINAL) >= jobs or time.monotonic() > deadline:
            return counts
        time.sleep(0.02)


def run_batch(
    farm: Farm, client: httpx.Client, spec: ModelSpec, upload_id: str, jobs: int, timeout: float
) -> tuple[uuid.UUID, float, Counter[str], float]:
    """Submit ``jobs`` and wait for them: (batch id, wall seconds, statuses, submit time)."""
    from bench.farm import submit_batch

    submitted = time.time()
    started = time.perf_counter()
    batch_id = submit_batch(client, spec.alias, upload_id, jobs, spec.width, PROMPT)
    counts = wait_finished(farm, batch_id, jobs, timeout)
    return batch_id, time.perf_counter() - started, counts, submitted


def first_claim_seconds(
    factory: sessionmaker[Session], batch_id: uuid.UUID, submitted: float
) -> float | None:
    """Seconds from submit to the batch's first claim (job times are UTC, same clock)."""
    with factory() as session:
        first = session.scalar(select(func.min(Job.started_at)).where(Job.batch_id == batch_id))
    return None if first is None else first.timestamp() - submitted


def measure_depth(
    farm: Farm,
    client: httpx.Client,
    spec: ModelSpec,
    upload_id: str,
    depth: int,
    round_no: int,
    args: argparse.Namespace,
) -> Run:
    """A fresh worker at ``depth``: warm it up, time one batch, stop it."""
    from bench.farm import cpu_snapshot

    metrics_url = start_worker(farm, spec.alias, depth, round_no)
    try:
        # Warm-up: the worker's connections (database, storage) and first encodes.
        run_batch(farm, client, spec, upload_id, args.warmup_jobs, args.timeout)
        busy_before = scrape_busy(metrics_url, spec.alias)
        cpu_before, machine_before = cpu_snapshot(farm), machine_cpu_seconds()
        batch_id, seconds, counts, submitted = run_batch(
            farm, client, spec, upload_id, args.jobs, args.timeout
        )
        machine_after, cpu_after = machine_cpu_seconds(), cpu_snapshot(farm)
        busy_after = scrape_busy(metrics_url, spec.alias)
    finally:
        farm.stop("worker")
    return Run(
        depth=depth,
        round=round_no,
        jobs=args.jobs,
        seconds=seconds,
        statuses=dict(counts),
        # after the clock stopped
        missing_outputs=missing_outputs(farm.session_factory, farm.settings, batch_id),
        device_busy_seconds=busy_after - busy_before,
        first_claim_seconds=first_claim_seconds(farm.session_factory, batch_id, submitted),
        machine_cpu_busy=busy_share(machine_before, machine_after),
        cpu_seconds=dict(cpu_used(cpu_before, cpu_after)),
    )


def busy_share(
    before: tuple[float, float] | None, after: tuple[float, float] | None
) -> float | None:
    """The machine's busy CPU share between two ``machine_cpu_seconds`` readings."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def measure(
    run_one: Callable[[int, int], Run],
    args: argparse.Namespace,
    on_run: Callable[[list[Run]], None],
) -> list[Run]:
    """Every depth in every round, the order flipped every other round."""
    runs: list[Run] = []
    for round_no in range(1, args.rounds + 1):
        for depth in args.depths if round_no % 2 else args.depths[::-1]:
            run = run_one(depth, round_no)
            print(f"  round {round_no}, depth {depth}: {run_line(run)}", flush=True)
            runs.append(run)
            on_run(runs)
    return runs


@contextlib.contextmanager
def on_services(spec: ModelSpec, args: argparse.Namespace) -> Iterator[Callable[[int, int], Run]]:
    """The farm on this machine's services (bench/farm.py); a fresh worker per run."""
    import httpx

    from bench.farm import running_services, upload_image

    extra_env = {"IMGFARM_MODELS": str(args.registry)}
    with running_services(args.storage, args.logs, extra_env) as farm:
        farm.wait_ready()
        farm.pids["bench"] = os.getpid()
        describe(farm, spec, args)
        headers = {"Authorization": f"Bearer {farm.api_key}"}
        with httpx.Client(base_url=farm.api_url, headers=headers, timeout=30) as client:
            upload_id = upload_image(client, photo_png(args.source_size))
            yield lambda depth, round_no: measure_depth(
                farm, client, spec, upload_id, depth, round_no, args
            )


# --- in process: the worker's render task without services ------------------------------------


@contextlib.contextmanager
def in_process(spec: ModelSpec, args: argparse.Namespace) -> Iterator[Callable[[int, int], Run]]:
    """A worker's context as worker/boot.py builds it (minus Celery and metrics), on SQLite
    and a local folder; the model loaded and its one bucket warmed on the device lane."""
    from worker.context import WorkerContext
    from worker.device import DeviceLane
    from worker.pipelines import load_model
    from worker.prepared_cache import PreparedCache
    from worker.source_cache import CachingStorage

    with tempfile.TemporaryDirectory(prefix="imgfarm-bench-inproc-") as folder:
        root = Path(folder)
        settings = Settings(
            data_dir=root,
            database_url=f"sqlite:///{root / 'bench.db'}",
            storage_url=(root / "objects").as_uri(),
            models=args.registry,
        )
        engine = make_engine(settings.database_url)
        Base.metadata.create_all(engine)
        lane = DeviceLane()
        model = lane.run(load_model, spec, settings, warm=False)
        if model.pipe is not None:
            from bench.harness import warm_bucket

            warm = lane.run(warm_bucket, model, model.pipeline_batch_size(spec.max_batch))
            print(f"  warmed batch {spec.max_batch} in {warm.seconds:.1f} s", flush=True)
        ctx = WorkerContext(
            settings=settings,
            model=model,
            storage=CachingStorage(
                storage_from_settings(settings), settings.worker_source_cache_bytes
            ),
            session_factory=make_session_factory(engine),
            name="bench-in-process",
            device=lane,
            io=ThreadPoolExecutor(settings.worker_io_threads, thread_name_prefix="imgfarm-io"),
            prepared=PreparedCache(settings.worker_prepared_cache_bytes),
        )
        try:
            print(
                f"imgfarm pipeline overlap, in process: SQLite, local folder; model {spec.alias}"
                f" ({spec.kind} on {model.device}), max_batch {spec.max_batch}, {spec.width}x"
                f"{spec.height}; depths {args.depths}, io threads {settings.worker_io_threads};"
                f" {os.cpu_count()} CPUs",
                flush=True,
            )
            with session_scope(ctx.session_factory) as session:
                team_id = ensure_team(session, "bench").id
            key = source_key(team_id, "bench")
            ctx.storage.put(key, photo_png(args.source_size), "image/png")
            render_jobs(ctx, spec, team_id, key, args.warmup_jobs, 1)
            yield lambda depth, round_no: in_process_run(
                ctx, spec, team_id, key, depth, round_no, args
            )
        finally:
            ctx.close()
            engine.dispose()


def render_jobs(
    ctx: WorkerContext, spec: ModelSpec, team_id: uuid.UUID, key: str, jobs: int, depth: int
) -> tuple[uuid.UUID, float]:
    """``jobs`` jobs of one batch inserted ``queued``, then rendered by ``depth`` threads
    calling ``run_render`` on max_batch jobs each, in order, as Celery's pool takes the
    dispatcher's messages; (batch id, wall seconds)."""
    from worker.tasks import run_render

    with session_scope(ctx.session_factory) as session:
        batch = Batch(
            team_id=team_id,
            model=spec.alias,
            seed=0,
            params={},
            image_count=1,
            prompt_count=1,
            variants=jobs,
            job_count=jobs,
        )
        session.add(batch)
        session.flush()
        rows = [render_job(spec, team_id, key, seed) for seed in range(jobs)]
        for row in rows:
            row.batch_id = batch.id
        session.add_all(rows)
        ids, batch_id = [row.id for row in rows], batch.id
    chunks = [ids[i : i + spec.max_batch] for i in range(0, jobs, spec.max_batch)]
    started = time.perf_counter()
    with ThreadPoolExecutor(depth, thread_name_prefix="bench-task") as pool:
        list(pool.map(lambda chunk: run_render(ctx, chunk), chunks))
    return batch_id, time.perf_counter() - started


def in_process_run(
    ctx: WorkerContext,
    spec: ModelSpec,
    team_id: uuid.UUID,
    key: str,
    depth: int,
    round_no: int,
    args: argparse.Namespace,
) -> Run:
    """One timed batch at ``depth``; the device's busy seconds are the lane's own count."""
    busy, machine, cpu = ctx.device.busy_seconds, machine_cpu_seconds(), cpu_seconds(os.getpid())
    submitted = time.time()
    batch_id, seconds = render_jobs(ctx, spec, team_id, key, args.jobs, depth)
    machine_after, cpu_after = machine_cpu_seconds(), cpu_seconds(os.getpid())
    return Run(
        depth=depth,
        round=round_no,
        jobs=args.jobs,
        seconds=seconds,
        statuses=dict(status_counts(ctx.session_factory, batch_id)),
        missing_outputs=missing_outputs(ctx.session_factory, ctx.settings, batch_id),
        device_busy_seconds=ctx.device.busy_seconds - busy,
        first_claim_seconds=first_claim_seconds(ctx.session_factory, batch_id, submitted),
        machine_cpu_busy=busy_share(machine, machine_after),
        cpu_seconds={} if cpu is None or cpu_after is None else {"worker": cpu_after - cpu},
    )


# --- report ---------------------------------------------------------------------------------


def stand_in_rate(spec: ModelSpec) -> float | None:
    """1 / S: the images/s of the stand-in GPU if it never waited; None for a real model."""
    per_image = float(spec.options.get("device_seconds_per_image", 0.0))
    return 1.0 / per_image if spec.kind == "echo" and per_image > 0 else None


def ideal_rate(spec: ModelSpec, run: Run) -> float | None:
    """Images/s of a device that never waits: the stand-in's 1 / S; for a real model, the
    run's images per device-busy second (on a shared CPU its speed varies run to run)."""
    fixed = stand_in_rate(spec)
    if fixed is not None:
        return fixed
    return run.succeeded / run.device_busy_seconds if run.device_busy_seconds > 0 else None


def of_ideal(spec: ModelSpec, run: Run) -> float | None:
    ideal = ideal_rate(spec, run)
    return None if ideal is None else run.images_per_second / ideal


def best_of(runs: list[Run]) -> Run:
    """The fastest complete run (most succeeded first, then least time)."""
    return max(runs, key=lambda r: (r.succeeded, -r.seconds))


def percent(share: float | None) -> str:
    return "n/a" if share is None else f"{share:.1%}"


def run_line(run: Run) -> str:
    partial = "" if run.succeeded == run.jobs else f" ({run.succeeded}/{run.jobs} succeeded)"
    return (
        f"{run.images_per_second:.2f} images/s in {run.seconds:.2f} s, duty cycle "
        f"{percent(run.duty_cycle)}, machine CPU busy {percent(run.machine_cpu_busy)}{partial}"
    )


def report(spec: ModelSpec, runs: list[Run], args: argparse.Namespace) -> dict[str, object]:
    """Print the side-by-side table; return the figures for ``--json``."""
    out = figures(spec, runs, args)
    by_depth = {d: [r for r in runs if r.depth == d] for d in args.depths}
    best = {d: best_of(rs) for d, rs in by_depth.items()}
    print(f"== pipeline overlap: {args.jobs} jobs, best of {args.rounds} ==")
    print(
        f"  {'depth':>5}  {'images/s':>8}  {'of ideal':>8}  {'duty cycle':>10}  "
        f"{'device idle':>11}  {'farm CPU':>8}  {'machine CPU':>11}   "
        "each round: images/s (duty cycle)"
    )
    for depth, run in best.items():
        rounds = ", ".join(
            f"{r.images_per_second:.2f} ({percent(r.duty_cycle)})" for r in by_depth[depth]
        )
        print(
            f"  {depth:>5}  {run.images_per_second:>8.2f}  "
            f"{percent(of_ideal(spec, run)):>8}  {percent(run.duty_cycle):>10}  "
            f"{run.device_idle_seconds:>9.2f} s  {percent(run.farm_cpu_busy):>8}  "
            f"{percent(run.machine_cpu_busy):>11}   {rounds}"
        )
    print(f"  ideal  {ideal_line(spec, best)}")
    for depth, ratio in out["ratios"].items():  # type: ignore[attr-defined]
        print(f"  ratio  depth {depth} / depth {args.depths[0]} images/s = {ratio:.2f}x")
    print(
        f"  jobs   {sum(r.jobs for r in runs)} timed: {sum(r.succeeded for r in runs)} "
        f"succeeded, {out['failed']} failed, {out['unfinished']} unfinished; "
        f"{out['missing_outputs']} succeeded job(s) without their output in storage"
    )
    others = [r.machine_cpu_busy - r.farm_cpu_busy for r in runs if r.machine_cpu_busy is not None]
    if others and max(others) > 0.1:
        # The figures are only as good as the machine is quiet: say when it was not.
        print(
            f"  note   other processes used up to {max(others):.0%} of this machine's CPU during "
            "the runs: figures are lower than on a quiet machine"
        )
    print("== CPU ms per image, by process (all rounds) ==")
    seen = {n for r in runs for n in r.cpu_seconds}
    names = [n for n in PROCESSES if n in seen or (n != "moto" and not args.in_process)]
    for depth, rs in by_depth.items():
        used: Counter[str] = Counter()
        for r in rs:
            used.update(r.cpu_seconds)
        images = sum(r.jobs for r in rs)
        parts = ", ".join(f"{n} {used[n] * 1000 / images:.1f}" for n in names)
        print(f"  depth {depth:<3} {parts}; total {sum(used.values()) * 1000 / images:.1f}")
    return out


def figures(spec: ModelSpec, runs: list[Run], args: argparse.Namespace) -> dict[str, object]:
    """What ``--json`` holds: the runs so far, the best of each depth and their ratios."""
    best = {d: best_of(rs) for d in args.depths if (rs := [r for r in runs if r.depth == d])}
    base = args.depths[0]
    ratios = {
        str(d): round(r.images_per_second / best[base].images_per_second, 4)
        for d, r in best.items()
        if d != base and base in best
    }
    return {
        "model": spec.alias,
        "kind": spec.kind,
        "in_process": args.in_process,
        "device_seconds_per_image": spec.options.get("device_seconds_per_image"),
        "max_batch": spec.max_batch,
        "size": spec.width,
        "jobs": args.jobs,
        "rounds": args.rounds,
        "depths": args.depths,
        "storage": "file" if args.in_process else args.storage,
        "cpus": os.cpu_count(),
        "ideal_images_per_second": stand_in_rate(spec),
        "best": {str(d): r.figures(ideal_rate(spec, r)) for d, r in best.items()},
        "ratio_vs_depth": base,
        "ratios": ratios,
        "runs": [r.figures(ideal_rate(spec, r)) for r in runs],
        "failed": sum(r.statuses.get("failed", 0) for r in runs),
        "unfinished": sum(r.unfinished for r in runs),
        "missing_outputs": sum(r.missing_outputs for r in runs),
    }


def ideal_line(spec: ModelSpec, best: dict[int, Run]) -> str:
    fixed = stand_in_rate(spec)
    if fixed is not None:
        per_image = spec.options["device_seconds_per_image"]
        return f"{fixed:.2f} images/s (1 / {per_image} device s per image)"
    rates = ", ".join(
        f"depth {d} {rate:.2f}" for d, r in best.items() if (rate := ideal_rate(spec, r))
    )
    return f"each run's images per device-busy second (best runs: {rates})"


def describe(farm: Farm, spec: ModelSpec, args: argparse.Namespace) -> None:
    with farm.session_factory() as session:
        version = session.get_bind().dialect.server_version_info  # type: ignore[union-attr]
    storage = "S3 (moto_server over HTTP)" if args.storage == "s3" else "local folder (file://)"
    per_image = spec.options.get("device_seconds_per_image")
    device = f"GPU stand-in {per_image} s/image" if per_image else f"{spec.kind} on the CPU"
    io_threads = farm.env.get("IMGFARM_WORKER_IO_THREADS", "default")
    print(
        f"imgfarm pipeline overlap: PostgreSQL {version}, redis-server, storage {storage}; "
        f"model {spec.alias} ({device}), max_batch {spec.max_batch}, {spec.width}x{spec.height} "
        f"png outputs of a {args.source_size}² photo-like source; depths {args.depths}, "
        f"io threads {io_threads}; {os.cpu_count()} CPUs",
        flush=True,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, help="jobs per timed batch (default 192; smoke 32)")
    p.add_argument(
        "--depths",
        default="1,3",
        help="pipeline depths, comma-separated; the first is the baseline of the ratios",
    )
    p.add_argument("--rounds", type=int, help="runs of each depth (default 2; smoke 1)")
    p.add_argument(
        "--device-seconds",
        type=float,
        help="gpu-sim device seconds per image (default: the H200's, 0.084; smoke 0.02)",
    )
    p.add_argument("--model", default="gpu-sim", choices=("gpu-sim", "tiny", "sd15"))
    p.add_argument("--device", default="auto", help="sd15's device: auto, cpu or cuda[:N]")
    p.add_argument("--in-process", action="store_true", help="no services: see the header")
    p.add_argument("--workdir", default="/tmp/imgfarm-worker-path", help="sd15's checkpoint")
    p.add_argument("--warmup-jobs", type=int, help="untimed jobs after each worker start")
    p.add_argument("--source-size", type=int, default=512, help="source width and height")
    p.add_argument("--storage", choices=("s3", "file"), default="s3")
    p.add_argument("--timeout", type=float, default=600, help="give up on a batch after this")
    p.add_argument("--json", type=Path, help="also write the figures to this file (each run)")
    p.add_argument("--logs", type=Path, help="keep the processes' logs in this folder")
    p.add_argument("--smoke", action="store_true", help="small and fast, for tests")
    args = p.parse_args(argv)
    smoke = args.smoke
    args.jobs = args.jobs or (32 if smoke else 192)
    args.rounds = args.rounds or (1 if smoke else 2)
    if args.device_seconds is None:
        args.device_seconds = 0.02 if smoke else h200_seconds_per_image()
    try:
        args.depths = [int(d) for d in args.depths.split(",")]
    except ValueError:
        p.error(f"--depths must be comma-separated integers, got {args.depths!r}")
    if not args.depths or not all(1 <= d <= 16 for d in args.depths):
        p.error("--depths must be 1..16 each")
    if not 1 <= args.jobs <= 10_000:
        p.error("--jobs must be 1..10,000 (one batch)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="imgfarm-bench-models-") as folder:
        args.registry = Path(folder) / "models.toml"
        args.registry.write_text(registry_toml(args))
        spec = model_spec(args, args.registry)
        # Two full batches: every stage has run at least once before the clock starts.
        args.warmup_jobs = args.warmup_jobs or 2 * spec.max_batch

        def on_run(runs: list[Run]) -> None:  # a run cut short by a timeout keeps these
            if args.json is not None:
                write_json(args.json, figures(spec, runs, args))

        farm = in_process if args.in_process else on_services
        with farm(spec, args) as run_one:
            out = report(spec, measure(run_one, args, on_run), args)
    if args.json is not None:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

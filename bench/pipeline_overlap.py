"""Pipeline overlap: how busy a render worker keeps its GPU, end to end, at pipeline depth 1
(each batch stored before the next renders) against depth N (the next batch on the device
while the last one's outputs are encoded and uploaded). Prints figures; never fails on time.

    python bench/pipeline_overlap.py                  # 192 jobs, depths 1 and 3, 2 rounds, S3
    python bench/pipeline_overlap.py --storage file --depths 1,2,3,4 --json out.json
    python bench/pipeline_overlap.py --smoke          # 32 jobs, 0.02 s/image, 1 round (tests)
    python bench/pipeline_overlap.py --in-process --model sd15 --device cuda --jobs 96

``gpu-sim`` (the default model) stands in for a GPU: an ``echo`` alias whose pipeline call
holds the worker's device lane for S seconds per image, asleep, leaving the CPU to the other
stages as a GPU does; S = 1 / the farm's SD1.5 images/s on an H200 (bench/results/). Its
outputs are the photo-like source encoded as PNG, so encoding costs what a render's does.
``sd15`` is SD1.5 with random weights (tiny with ``--smoke``), saved under ``--workdir`` and
compiled on CUDA as bench/worker_path.py loads it.

By default jobs go through the api, Postgres, the dispatcher, Redis and a fresh ``imgfarm
worker`` per run (bench/farm.py); the duty cycle is the rise of the worker's device-busy
metric over the run's wall time (submit → last job finished). ``--in-process`` needs no
services (the GPU session, bench/gpu_session.sh): ``depth`` threads call the worker's own
render task as Celery's pool would, on SQLite and a local folder, the duty cycle read from
its device lane. Each run: an untimed warm-up batch, then N jobs (1 source x 1 prompt x N
variants: full batches). The ideal is a device that never waits (1 / S; for a real model the
run's images per device-busy second). Depths alternate, their order flipped every other
round, so drift hits each alike; outputs are checked in storage after the clock stops.
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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.harness import (  # noqa: E402
    TERMINAL,
    log,
    missing_outputs,
    photo_like,
    png_bytes,
    render_job,
    status_counts,
    write_json,
)
from shared.db import make_engine, make_session_factory, session_scope  # noqa: E402
from shared.models import Base, Batch  # noqa: E402
from shared.registry import ModelSpec, load_registry  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.storage import source_key, storage_from_settings  # noqa: E402
from shared.teams import ensure_team  # noqa: E402

# What only the services need (httpx, bench.farm, tests.services: Postgres, Redis, moto) is
# imported where it is used, so that --in-process runs with the GPU session's few wheels.
if TYPE_CHECKING:
    from bench.farm import Farm
    from worker.context import WorkerContext

SIM_ALIAS = "gpu-sim"
H200_RESULTS = ROOT / "bench" / "results" / "h200-2026-11-28.json"
BUSY_METRIC = "imgfarm_worker_device_busy_seconds"
SUMMARY = ("jobs", "images_per_second", "duty_cycle", "of_ideal")


# --- the model: a GPU stand-in or SD1.5 --------------------------------------------------------


def h200_seconds_per_image() -> float:
    """1 / the farm path's SD1.5 images/s at batch 16 as measured on an H200."""
    summary = json.loads(H200_RESULTS.read_text())["summary"]
    return round(1 / summary["sd15"]["b_images_per_s"], 3)


def registry_toml(args: argparse.Namespace) -> str:
    """``gpu-sim``: an ``echo`` alias at the H200 run's size and batch, whose pipeline call
    sleeps ``--device-seconds`` per image on the device lane."""
    # echo never denoises: its steps, strength and guidance only keep the params honest.
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
options = {{ device_seconds_per_image = {args.device_seconds!r} }}
"""


def model_spec(args: argparse.Namespace) -> ModelSpec:
    """The alias the worker pins: gpu-sim as the farm's processes read it, or the random
    SD1.5 checkpoint bench/worker_path.py loads too (built and saved on first use)."""
    if args.model != "sd15":
        return load_registry(args.registry)[SIM_ALIAS]
    from bench.harness import saved_img2img, sd15_spec  # imports torch: only where needed
    from worker.accel import resolve_device

    device = resolve_device(args.device)
    spec = sd15_spec(Path(args.workdir), args.smoke, device, 4 if args.smoke else 16)
    saved_img2img(Path(spec.source), device, args.smoke)
    return spec


def source_png(args: argparse.Namespace) -> bytes:
    return png_bytes(photo_like(args.source_size, args.source_size))


# --- one run: one batch at one depth ----------------------------------------------------------


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

    def ideal(self, spec: ModelSpec) -> float | None:
        """Images/s of a device that never waits: the stand-in's 1 / S; for a real model,
        this run's images per device-busy second (on a shared CPU its speed varies)."""
        per_image = float(spec.options.get("device_seconds_per_image", 0.0))
        if spec.kind == "echo" and per_image > 0:
            return 1.0 / per_image
        return self.succeeded / self.device_busy_seconds if self.device_busy_seconds else None

    def figures(self, spec: ModelSpec) -> dict[str, object]:
        ideal = self.ideal(spec)
        return {
            **asdict(self),
            "succeeded": self.succeeded,
            "unfinished": self.unfinished,
            "images_per_second": round(self.images_per_second, 3),
            "ideal_images_per_second": None if ideal is None else round(ideal, 3),
            "of_ideal": None if ideal is None else round(self.images_per_second / ideal, 4),
            "duty_cycle": round(self.duty_cycle, 4),
            "device_idle_seconds": round(self.seconds - self.device_busy_seconds, 3),
        }


@dataclass
class Timed:
    """What a farm yields: ``run(depth, round)`` times one batch, (batch id, wall seconds,
    device-busy seconds); the rest is read from the farm's database and storage after."""

    run: Callable[[int, int], tuple[uuid.UUID, float, float]]
    session_factory: sessionmaker[Session]
    settings: Settings


def measure(timed: Timed, args: argparse.Namespace, spec: ModelSpec) -> list[Run]:
    """Every depth in every round, the order flipped every other round; the JSON rewritten
    after each run, so a run cut short by a timeout keeps the ones before."""
    runs: list[Run] = []
    factory = timed.session_factory
    for round_no in range(1, args.rounds + 1):
        for depth in args.depths if round_no % 2 else args.depths[::-1]:
            batch_id, seconds, busy = timed.run(depth, round_no)
            run = Run(
                depth=depth,
                round=round_no,
                jobs=args.jobs,
                seconds=seconds,
                statuses=dict(status_counts(factory, batch_id)),
                missing_outputs=missing_outputs(factory, timed.settings, batch_id),
                device_busy_seconds=busy,
            )
            log(
                f"  round {round_no}, depth {depth}: {run.images_per_second:.2f} images/s in "
                f"{run.seconds:.2f} s, duty cycle {run.duty_cycle:.1%}, "
                f"{run.succeeded}/{run.jobs} succeeded"
            )
            runs.append(run)
            if args.json is not None:
                write_json(args.json, figures(spec, runs, args))
    return runs


# --- on the services: a fresh worker process per run --------------------------------------------


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
        for sample in family.samples if family.name == BUSY_METRIC else []:
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
    log_name = f"worker-depth{depth}-round{round_no}.log"
    farm.start("worker", ["worker", "--model", alias], ready=" ready.", env=env, log=log_name)
    farm.wait_ready()
    url = f"http://127.0.0.1:{port}/metrics"
    wait_for(lambda: device_busy_seconds(url, alias) is not None, 60, "the worker's metrics")
    return url


@contextlib.contextmanager
def on_services(spec: ModelSpec, args: argparse.Namespace) -> Iterator[Timed]:
    """The farm on this machine's services (bench/farm.py)."""
    import httpx

    from bench.farm import describe, run_batch, running_services, upload_image

    with running_services(args.storage, args.logs, {"IMGFARM_MODELS": str(args.registry)}) as farm:
        farm.wait_ready()
        describe(farm, "pipeline overlap", f"model {spec.alias}, {spec.width}² png outputs")
        headers = {"Authorization": f"Bearer {farm.api_key}"}
        with httpx.Client(base_url=farm.api_url, headers=headers, timeout=30) as client:
            model = (spec.alias, upload_image(client, source_png(args)))

            def run_one(depth: int, round_no: int) -> tuple[uuid.UUID, float, float]:
                metrics_url = start_worker(farm, spec.alias, depth, round_no)
                try:
                    # Warm-up: the worker's connections (database, storage), first encodes.
                    run_batch(farm, client, *model, args.warmup_jobs, spec.width, args.timeout)
                    busy = scrape_busy(metrics_url, spec.alias)
                    batch_id, seconds = run_batch(
                        farm, client, *model, args.jobs, spec.width, args.timeout
                    )
                    busy = scrape_busy(metrics_url, spec.alias) - busy
                finally:
                    farm.stop("worker")
                return batch_id, seconds, busy

            yield Timed(run_one, farm.session_factory, farm.settings)


# --- in process: the worker's render task without services ------------------------------------


@contextlib.contextmanager
def in_process(spec: ModelSpec, args: argparse.Namespace) -> Iterator[Timed]:
    """A worker's context as worker/boot.py builds it (minus Celery and metrics), on SQLite
    and a local folder; the model loaded and its one bucket the runs use warmed."""
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
            log(f"  warmed batch {spec.max_batch} in {warm.seconds:.1f} s")
        storage = CachingStorage(
            storage_from_settings(settings), settings.worker_source_cache_bytes
        )
        ctx = WorkerContext(
            settings=settings,
            model=model,
            storage=storage,
            session_factory=make_session_factory(engine),
            name="bench-in-process",
            device=lane,
            io=ThreadPoolExecutor(settings.worker_io_threads, thread_name_prefix="imgfarm-io"),
            prepared=PreparedCache(settings.worker_prepared_cache_bytes),
        )
        try:
            log(
                f"imgfarm pipeline overlap, in process: SQLite, local folder; model {spec.alias}"
                f" ({spec.kind} on {model.device}), max_batch {spec.max_batch}, {spec.width}²; "
                f"io threads {settings.worker_io_threads}; {os.cpu_count()} CPUs"
            )
            with session_scope(ctx.session_factory) as session:
                team_id = ensure_team(session, "bench").id
            key = source_key(team_id, "bench")
            ctx.storage.put(key, source_png(args), "image/png")
            render_jobs(ctx, spec, team_id, key, args.warmup_jobs, 1)

            def run_one(depth: int, _round: int) -> tuple[uuid.UUID, float, float]:
                busy = ctx.device.busy_seconds
                batch_id, seconds = render_jobs(ctx, spec, team_id, key, args.jobs, depth)
                busy = ctx.device.busy_seconds - busy
                return batch_id, seconds, busy

            yield Timed(run_one, ctx.session_factory, settings)
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


# --- report ---------------------------------------------------------------------------------


def best_of(runs: list[Run]) -> Run:
    """The fastest complete run (most succeeded first, then least time)."""
    return max(runs, key=lambda r: (r.succeeded, -r.seconds))


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
        # What bench/gpu_session.sh prints: per depth images/s, duty cycle, of the ideal.
        "summary": {
            **{f"depth {d}": {k: r.figures(spec)[k] for k in SUMMARY} for d, r in best.items()},
            f"ratios vs depth {base}": ratios,
        },
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
        "ideal_images_per_second": runs[0].ideal(spec) if spec.kind == "echo" and runs else None,
        "best": {str(d): r.figures(spec) for d, r in best.items()},
        "ratio_vs_depth": base,
        "ratios": ratios,
        "runs": [r.figures(spec) for r in runs],
        "failed": sum(r.statuses.get("failed", 0) for r in runs),
        "unfinished": sum(r.unfinished for r in runs),
        "missing_outputs": sum(r.missing_outputs for r in runs),
    }


def print_report(out: dict[str, object]) -> None:
    """The side-by-side table of the best run of each depth."""
    log(f"== pipeline overlap: {out['jobs']} jobs, best of {out['rounds']} ==")
    log(
        f"  {'depth':>5}  {'images/s':>8}  {'of ideal':>8}  {'duty cycle':>10}  {'device idle':>11}"
    )
    for depth, r in out["best"].items():  # type: ignore[attr-defined]
        of_ideal = "n/a" if r["of_ideal"] is None else f"{r['of_ideal']:.1%}"
        log(
            f"  {depth:>5}  {r['images_per_second']:>8.2f}  {of_ideal:>8}  "
            f"{r['duty_cycle']:>10.1%}  {r['device_idle_seconds']:>9.2f} s"
        )
    for depth, ratio in out["ratios"].items():  # type: ignore[attr-defined]
        log(f"  ratio  depth {depth} / depth {out['ratio_vs_depth']} images/s = {ratio:.2f}x")
    log(
        f"  jobs   {out['failed']} failed, {out['unfinished']} unfinished; "
        f"{out['missing_outputs']} succeeded job(s) without their output in storage"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, help="jobs per timed batch (default 192; smoke 32)")
    p.add_argument("--depths", default="1,3", help="comma-separated; the first is the baseline")
    p.add_argument("--rounds", type=int, help="runs of each depth (default 2; smoke 1)")
    p.add_argument(
        "--device-seconds",
        type=float,
        help="gpu-sim device seconds per image (default: the H200's, 0.084; smoke 0.02)",
    )
    p.add_argument("--model", default="gpu-sim", choices=("gpu-sim", "sd15"))
    p.add_argument("--device", default="auto", help="sd15's device: auto, cpu or cuda[:N]")
    p.add_argument("--in-process", action="store_true", help="no services: see the header")
    p.add_argument("--workdir", default="/tmp/imgfarm-worker-path", help="sd15's checkpoint")
    p.add_argument("--warmup-jobs", type=int, help="untimed jobs before each run (2 batches)")
    p.add_argument("--source-size", type=int, default=512, help="source width and height")
    p.add_argument("--storage", choices=("s3", "file"), default="s3")
    p.add_argument("--timeout", type=float, default=600, help="give up on a batch after this")
    p.add_argument("--json", type=Path, help="also write the figures to this file (each run)")
    p.add_argument("--logs", type=Path, help="keep the processes' logs in this folder")
    p.add_argument("--smoke", action="store_true", help="small and fast, for tests")
    args = p.parse_args(argv)
    args.jobs = args.jobs or (32 if args.smoke else 192)
    args.rounds = args.rounds or (1 if args.smoke else 2)
    if args.device_seconds is None:
        args.device_seconds = 0.02 if args.smoke else h200_seconds_per_image()
    try:
        args.depths = [int(d) for d in args.depths.split(",")]
    except ValueError:
        p.error(f"--depths must be comma-separated integers, got {args.depths!r}")
    if not args.depths or not all(1 <= d <= 16 for d in args.depths):
        p.error("--depths must be 1..16 each")
    if args.model == "sd15" and not args.in_process:
        p.error("--model sd15 runs --in-process only (the services farm serves gpu-sim)")
    if not 1 <= args.jobs <= 10_000:
        p.error("--jobs must be 1..10,000 (one batch)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="imgfarm-bench-models-") as folder:
        args.registry = Path(folder) / "models.toml"
        args.registry.write_text(registry_toml(args))
        spec = model_spec(args)
        # Two full batches: every stage has run at least once before the clock starts.
        args.warmup_jobs = args.warmup_jobs or 2 * spec.max_batch
        farm = in_process if args.in_process else on_services
        with farm(spec, args) as timed:
            out = figures(spec, measure(timed, args, spec), args)
    print_report(out)
    if args.json is not None:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

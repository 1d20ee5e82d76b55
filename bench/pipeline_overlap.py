"""Pipeline overlap, in process: how busy the worker's own render task keeps the device with
a real model at pipeline depth 1 (each batch stored before the next renders) against depth N
(the next batch on the device while the last one's outputs are stored), and the worker's
start. Prints figures; never fails on time. (End to end on the services, with a GPU
stand-in: ``bench/overhead.py --model gpu-sim``.)

    python bench/pipeline_overlap.py --device cuda --jobs 96 --warm-plan   # the GPU session
    python bench/pipeline_overlap.py --smoke --jobs 7 --depths 1,3         # CPU, tiny model

SD1.5 with random weights (tiny with ``--smoke``), saved under ``--workdir`` and loaded by
``worker.pipelines.load_model`` with a worker's spec (compiled on CUDA). No services (the GPU
session, bench/gpu_session.sh): ``depth`` threads call the worker's render task as Celery's
pool would, on SQLite and a local folder, the duty cycle read from its device lane. Each
run: an untimed warm-up batch, then N jobs (1 source x 1 prompt x N variants: full batches;
compiled, a short last one is padded to its bucket). The ideal is the images per
device-busy second (the pipeline call alone), so 1 - the duty cycle at depth 1 is the
task's share off the device (claim, fetch, encode, store, record). Depths alternate, their
order flipped every other round, so drift hits each alike; outputs are checked in storage
after the clock stops.

It also reports the worker's start: ``load_model`` seconds, each warm-up (the buckets the
runs use first, then with ``--warm-plan`` the rest of the worker's plan: load + all is its
start time) and the graphs torch.compile added during the timed runs (none if the warm-up
covers them). On the CPU the farm never compiles; ``--smoke`` compiles the UNet with
dynamo's ``eager`` backend (no code generation, same guards) to count them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.harness import (  # noqa: E402
    SD15_GUIDANCE,
    TERMINAL,
    Report,
    environment,
    log,
    missing_outputs,
    photo_like,
    png_bytes,
    print_summary,
    render_job,
    status_counts,
)
from shared.db import make_engine, make_session_factory, session_scope  # noqa: E402
from shared.models import Base, Batch  # noqa: E402
from shared.registry import ModelSpec  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.storage import source_key, storage_from_settings  # noqa: E402
from shared.teams import ensure_team  # noqa: E402

if TYPE_CHECKING:
    from worker.context import WorkerContext
    from worker.pipelines import LoadedModel

SUMMARY = ("jobs", "images_per_second", "duty_cycle", "of_ideal", "device_idle_seconds")


def model_spec(args: argparse.Namespace) -> ModelSpec:
    """The random SD1.5 checkpoint's spec (the checkpoint built and saved on first use)."""
    from bench.harness import saved_img2img, sd15_spec  # imports torch: only where needed

    spec = sd15_spec(Path(args.workdir), args.smoke, args.device, 4 if args.smoke else 16)
    saved_img2img(Path(spec.source), args.device, args.smoke)
    return spec


def chunk_sizes(jobs: int, max_batch: int) -> set[int]:
    """The batch sizes the dispatcher sends for one batch of ``jobs``."""
    return {min(max_batch, jobs - start) for start in range(0, jobs, max_batch)}


# --- one run: one batch at one depth ----------------------------------------------------------


def run_figures(run: dict[str, Any]) -> dict[str, Any]:
    """One timed batch's record, with images/s against a device that never waits: the
    run's images per device-busy second."""
    busy, wall = run["device_busy_seconds"], run["seconds"]
    done = run["statuses"].get("succeeded", 0)
    ideal = done / busy if busy else 0
    return {
        **run,
        "unfinished": run["jobs"] - sum(run["statuses"].get(s, 0) for s in TERMINAL),
        "images_per_second": round(done / wall, 3),
        "ideal_images_per_second": round(ideal, 3) if ideal else None,
        "of_ideal": round(done / wall / ideal, 4) if ideal else None,
        "duty_cycle": round(busy / wall, 4),
        "device_idle_seconds": round(wall - busy, 3),
    }


def measure(
    run_one: Callable[[int], tuple[uuid.UUID, float, float, int]],
    factory: sessionmaker[Session],
    settings: Settings,
    args: argparse.Namespace,
    report: Report,
) -> None:
    """Every depth in every round, the order flipped every other round; ``run_one(depth)``
    times one batch: (batch id, wall seconds, device-busy seconds, graphs compiled). The
    JSON is rewritten after each run, so a run cut short by a timeout keeps the ones before."""

    def one(depth: int, round_no: int) -> None:
        batch_id, seconds, busy, graphs = run_one(depth)
        run = run_figures({
            "depth": depth, "round": round_no, "jobs": args.jobs, "seconds": seconds,
            "statuses": dict(status_counts(factory, batch_id)),
            "missing_outputs": missing_outputs(factory, settings, batch_id),
            "device_busy_seconds": busy, "graphs_compiled": graphs,
        })  # fmt: skip
        log(
            f"  {run['images_per_second']:.2f} images/s in {seconds:.2f} s, duty cycle "
            f"{run['duty_cycle']:.1%}, {run['statuses']}"
        )
        report.data["runs"].append(run)
        if graphs:
            report.finding(f"depth {depth}: {graphs} graphs compiled while timing")

    for round_no in range(1, args.rounds + 1):
        for depth in args.depths if round_no % 2 else args.depths[::-1]:
            report.step(f"round {round_no}, depth {depth}", lambda d=depth, r=round_no: one(d, r))


def summarize(data: dict[str, Any], depths: list[int]) -> dict[str, Any]:
    """The best run of each depth (most succeeded, then least time), their images/s against
    the first depth's, every run's job outcomes, and the worker's start."""
    runs, base = data["runs"], depths[0]
    best = {
        d: max(rs, key=lambda r: (r["statuses"].get("succeeded", 0), -r["seconds"]))
        for d in depths
        if (rs := [r for r in runs if r["depth"] == d])
    }
    ratios = {
        str(d): round(r["images_per_second"] / best[base]["images_per_second"], 4)
        for d, r in best.items()
        if d != base and base in best
    }
    summary: dict[str, Any] = {f"depth {d}": {k: r[k] for k in SUMMARY} for d, r in best.items()}
    summary[f"ratios vs depth {base}"] = ratios
    summary["jobs"] = {
        "failed": sum(r["statuses"].get("failed", 0) for r in runs),
        "unfinished": sum(r["unfinished"] for r in runs),
        "missing_outputs": sum(r["missing_outputs"] for r in runs),
    }
    if "load_model_s" in data:
        summary.update(worker_start(data))
    return {"summary": summary}


def worker_start(data: dict[str, Any]) -> dict[str, Any]:
    """load_model and each warm-up; their sum once every entry of the warm plan is warmed."""
    warm = data["warmup"]
    missing = {tuple(e) for e in data["warm_plan"]} - {(w["bucket"], w["guidance"]) for w in warm}
    start = data["load_model_s"] + sum(w["seconds"] for w in warm)
    return {
        "load_model_s": data["load_model_s"],
        "warmup_s_by_bucket": {
            str(w["bucket"])
            + ("" if w["guidance"] == SD15_GUIDANCE else f" (g {w['guidance']})"): w["seconds"]
            for w in warm
        },
        "worker_start_s": None if missing or not data["warm_plan"] else round(start, 1),
        "buckets_not_warmed": sorted(missing),
        "graphs_compiled_while_timing": sum(r["graphs_compiled"] for r in data["runs"]),
    }


# --- the worker's render task, in process -----------------------------------------------------


def compile_eager_backend(model: LoadedModel) -> LoadedModel:
    """CPU smoke only: the UNet compiled as worker.accel does, with dynamo's no-codegen
    backend (the VAE too would only double the smoke's tracing time)."""
    from worker.pipelines import batch_buckets

    model.pipe.unet.compile(backend="eager", fullgraph=True, dynamic=False)
    return replace(model, compiled=True, buckets=batch_buckets(model.spec.max_batch))


def load_and_warm(
    spec: ModelSpec, settings: Settings, args: argparse.Namespace, report: Report, lane: Any
) -> tuple[LoadedModel, Callable[[tuple[int, float]], None]]:
    """``load_model(warm=False)`` on the lane, then the warm-ups the runs need; the model
    and a function that warms one more (batch, guidance) entry of the worker's plan."""
    from bench.harness import graph_count, warm_bucket
    from worker.pipelines import load_model, warm_plan

    t = time.perf_counter()
    model = lane.run(load_model, spec, settings, warm=False)
    if args.smoke and model.device == "cpu":
        model = compile_eager_backend(model)
    plan = warm_plan(model.buckets, spec.guidance_scale) if model.compiled else []
    report.data.update(load_model_s=round(time.perf_counter() - t, 2), warm_plan=plan, warmup=[])
    log(f"  loaded in {report.data['load_model_s']} s; buckets {model.buckets}, plan {plan}")

    def warm(entry: tuple[int, float]) -> None:
        g0 = graph_count()
        res = lane.run(warm_bucket, model, *entry)
        done = {"bucket": entry[0], "guidance": entry[1], "seconds": round(res.seconds, 2)}
        report.data["warmup"].append({**done, "graphs_added": graph_count() - g0})
        log(f"  warmed batch {entry[0]} guidance {entry[1]} in {res.seconds:.1f} s")
        if res.compile_error:
            report.finding(f"compile failed warming batch {entry[0]}: {res.compile_error}")

    sizes = chunk_sizes(args.jobs, spec.max_batch) | chunk_sizes(args.warmup_jobs, spec.max_batch)
    needed = sorted({model.pipeline_batch_size(n) for n in sizes}, reverse=True)
    for batch in needed if model.compiled else [spec.max_batch]:
        report.step(f"warm-up batch {batch}", lambda b=batch: warm((b, spec.guidance_scale)))
    return model, warm


def in_process(spec: ModelSpec, args: argparse.Namespace, report: Report) -> None:
    """A worker's context as worker/boot.py builds it (minus Celery and metrics), on SQLite
    and a local folder; the model loaded, the buckets the runs use warmed, then the runs and
    with ``--warm-plan`` the rest of the worker's plan (its start time)."""
    from bench.harness import graph_count
    from worker.context import WorkerContext
    from worker.device import DeviceLane
    from worker.prepared_cache import PreparedCache
    from worker.source_cache import CachingStorage

    with tempfile.TemporaryDirectory(prefix="imgfarm-bench-inproc-") as folder:
        root = Path(folder)
        settings = Settings(
            data_dir=root,
            database_url=f"sqlite:///{root / 'bench.db'}",
            storage_url=(root / "objects").as_uri(),
        )
        engine = make_engine(settings.database_url)
        Base.metadata.create_all(engine)
        lane = DeviceLane()
        model, warm = load_and_warm(spec, settings, args, report, lane)
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
            ctx.storage.put(key, png_bytes(photo_like(512, 512)), "image/png")
            render_jobs(ctx, spec, team_id, key, args.warmup_jobs, 1)

            def run_one(depth: int) -> tuple[uuid.UUID, float, float, int]:
                busy, g0 = ctx.device.busy_seconds, graph_count()
                batch_id, seconds = render_jobs(ctx, spec, team_id, key, args.jobs, depth)
                return batch_id, seconds, ctx.device.busy_seconds - busy, graph_count() - g0

            measure(run_one, ctx.session_factory, settings, args, report)
            warmed = {(w["bucket"], w["guidance"]) for w in report.data["warmup"]}
            for b, g in report.data["warm_plan"] if args.warm_plan else []:
                if (b, g) not in warmed:
                    report.step(f"warm-up batch {b} guidance {g}", lambda e=(b, g): warm(e))
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


# --- the command ------------------------------------------------------------------------------


def depth_list(text: str) -> list[int]:
    return [int(d) for d in text.split(",")]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, help="jobs per timed batch (default 192; smoke 32)")
    p.add_argument("--depths", default="1,3", type=depth_list, help="the first is the baseline")
    p.add_argument("--rounds", type=int, help="runs of each depth (default 2; smoke 1)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--warm-plan", action="store_true", help="warm the whole plan: its start")
    p.add_argument("--workdir", default="/tmp/imgfarm-bench-sd15", help="sd15's checkpoint")
    p.add_argument("--warmup-jobs", type=int, help="untimed jobs before each run (2 batches)")
    p.add_argument("--json", type=Path, help="also write the figures to this file (each run)")
    p.add_argument("--smoke", action="store_true", help="small and fast, for tests")
    args = p.parse_args(argv)
    args.jobs = args.jobs or (32 if args.smoke else 192)
    args.rounds = args.rounds or (1 if args.smoke else 2)
    if not args.depths or not all(1 <= d <= 16 for d in args.depths):
        p.error("--depths must be 1..16 each")
    if not 1 <= args.jobs <= 10_000:
        p.error("--jobs must be 1..10,000 (one batch)")
    return args


def main(argv: list[str] | None = None) -> int:
    from worker.accel import resolve_device

    args = parse_args(argv)
    args.device = resolve_device(args.device)
    log("== environment ==")
    report = Report(
        args.json,
        summarize=lambda data: summarize(data, args.depths),
        env=environment(args.device),
        args=vars(args),
        runs=[],
    )
    spec = model_spec(args)
    report.data.update(model=spec.alias, kind=spec.kind, max_batch=spec.max_batch)
    # Two full batches: every stage has run at least once before the clock starts.
    args.warmup_jobs = args.warmup_jobs or 2 * spec.max_batch
    in_process(spec, args, report)
    report.dump()
    print_summary("pipeline_overlap", report.data)
    return 1 if report.data["errors"] or not report.data["runs"] else 0


if __name__ == "__main__":
    sys.exit(main())

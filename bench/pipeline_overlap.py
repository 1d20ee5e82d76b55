"""Pipeline overlap, in process: how busy the worker's own render task keeps the device with
a real model at pipeline depth 1 (each batch stored before the next renders) against depth N
(the next batch on the device while the last one's outputs are stored), and the worker's
start. Prints figures; never fails on time. (End to end on the services, with a GPU
stand-in: ``bench/overhead.py --model gpu-sim``.)

    python bench/pipeline_overlap.py --device cuda --jobs 96 --warm-plan   # the GPU session
    python bench/pipeline_overlap.py --smoke --jobs 3 --depths 1,3         # CPU, tiny model

SD1.5 with random weights (tiny with ``--smoke``, its UNet compiled with dynamo's no-codegen
backend to count graphs) loaded by ``worker.pipelines.load_model``. On SQLite and a local
folder, ``depth`` threads call the worker's render task as Celery's pool would; depths
alternate, the order flipped every other round. 1 - the duty cycle at depth 1 is the task's
share off the device. The worker's start: ``load_model``, each warm-up (the runs' buckets
first, the rest of the plan with ``--warm-plan``), graphs compiled while timing.
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import harness as h  # noqa: E402
from shared.db import make_engine, make_session_factory, session_scope  # noqa: E402
from shared.models import Base, Batch  # noqa: E402
from shared.registry import ModelSpec  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.storage import source_key, storage_from_settings  # noqa: E402
from shared.teams import ensure_team  # noqa: E402

if TYPE_CHECKING:
    import argparse

    from worker.context import WorkerContext
    from worker.pipelines import LoadedModel

SUMMARY = ("jobs", "images_per_second", "duty_cycle", "of_ideal", "device_idle_seconds")


def chunk_sizes(jobs: int, max_batch: int) -> set[int]:
    """The batch sizes the dispatcher sends for one batch of ``jobs``."""
    return {min(max_batch, jobs - start) for start in range(0, jobs, max_batch)}


def run_figures(run: dict[str, Any]) -> dict[str, Any]:
    """One timed batch's record, with images/s against a device that never waits: the
    run's images per device-busy second."""
    busy, wall = run["device_busy_seconds"], run["seconds"]
    done = run["statuses"].get("succeeded", 0)
    ideal = done / busy if busy else 0
    return {
        **run,
        "unfinished": run["jobs"] - sum(run["statuses"].get(s, 0) for s in h.TERMINAL),
        "images_per_second": round(done / wall, 3),
        "ideal_images_per_second": round(ideal, 3) if ideal else None,
        "of_ideal": round(done / wall / ideal, 4) if ideal else None,
        "duty_cycle": round(busy / wall, 4),
        "device_idle_seconds": round(wall - busy, 3),
    }


def summarize(data: dict[str, Any], depths: list[int]) -> dict[str, Any]:
    """The best run of each depth (most succeeded, then least time), their images/s against
    the first depth's, every run's job outcomes, and the worker's start."""
    runs, base = data["runs"], depths[0]
    best = {
        d: max(rs, key=lambda r: (r["statuses"].get("succeeded", 0), -r["seconds"]))
        for d in depths
        if (rs := [r for r in runs if r["depth"] == d])
    }
    summary: dict[str, Any] = {f"depth {d}": {k: r[k] for k in SUMMARY} for d, r in best.items()}
    summary[f"ratios vs depth {base}"] = {
        str(d): round(r["images_per_second"] / best[base]["images_per_second"], 4)
        for d, r in best.items()
        if d != base and base in best
    }
    summary["jobs"] = {
        "failed": sum(r["statuses"].get("failed", 0) for r in runs),
        "unfinished": sum(r["unfinished"] for r in runs),
        "missing_outputs": sum(r["missing_outputs"] for r in runs),
    }
    if "load_model_s" not in data:
        return {"summary": summary}
    warm = data["warmup"]
    missing = {tuple(e) for e in data["warm_plan"]} - {(w["bucket"], w["guidance"]) for w in warm}
    start = data["load_model_s"] + sum(w["seconds"] for w in warm)
    summary.update(
        {
            "load_model_s": data["load_model_s"],
            "warmup_s_by_bucket": {
                str(w["bucket"])
                + ("" if w["guidance"] == h.SD15_GUIDANCE else f" (g {w['guidance']})"): w[
                    "seconds"
                ]
                for w in warm
            },
            "worker_start_s": None if missing or not data["warm_plan"] else round(start, 1),
            "buckets_not_warmed": sorted(missing),
            "graphs_compiled_while_timing": sum(r["graphs_compiled"] for r in runs),
        }
    )
    return {"summary": summary}


def load_model(spec: ModelSpec, settings: Settings, smoke: bool, lane: Any) -> LoadedModel:
    """``load_model(warm=False)`` on the lane; on the CPU with ``smoke``, the UNet compiled
    as worker.accel does but with dynamo's no-codegen backend (the VAE would only double
    the smoke's tracing time)."""
    from worker.pipelines import batch_buckets
    from worker.pipelines import load_model as load

    model = lane.run(load, spec, settings, warm=False)
    if smoke and model.device == "cpu":
        model.pipe.unet.compile(backend="eager", fullgraph=True, dynamic=False)
        model = replace(model, compiled=True, buckets=batch_buckets(spec.max_batch))
    return model


def in_process(args: argparse.Namespace, report: h.Report) -> None:
    """A worker's context as worker/boot.py builds it (minus Celery and metrics), on SQLite
    and a local folder; the model loaded, the buckets the runs use warmed, then the runs and
    with ``--warm-plan`` the rest of the worker's plan (its start time)."""
    from worker.context import WorkerContext
    from worker.device import DeviceLane
    from worker.pipelines import warm_plan
    from worker.prepared_cache import PreparedCache
    from worker.source_cache import CachingStorage

    spec = h.sd15_checkpoint(args.workdir, args.smoke, args.device, 2 if args.smoke else 16)
    report.data.update(model=spec.alias, kind=spec.kind, max_batch=spec.max_batch)
    # Two full batches: every stage has run at least once before the clock starts.
    warmup_jobs = args.warmup_jobs or 2 * spec.max_batch
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
        t = time.perf_counter()
        model = load_model(spec, settings, args.smoke, lane)
        plan = warm_plan(model.buckets, spec.guidance_scale) if model.compiled else []
        report.data.update(load_model_s=round(time.perf_counter() - t, 2), warm_plan=plan)
        h.log(f"  loaded in {report.data['load_model_s']} s; buckets {model.buckets}, {plan=}")

        def warm(batch: int, guidance: float) -> None:
            g0 = h.graph_count()
            res = lane.run(h.warm_bucket, model, batch, guidance)
            done = {"bucket": batch, "guidance": guidance, "seconds": round(res.seconds, 2)}
            report.data["warmup"].append({**done, "graphs_added": h.graph_count() - g0})
            if res.compile_error:
                report.finding(f"compile failed warming batch {batch}: {res.compile_error}")

        sizes = chunk_sizes(args.jobs, spec.max_batch) | chunk_sizes(warmup_jobs, spec.max_batch)
        needed = sorted({model.pipeline_batch_size(n) for n in sizes}, reverse=True)
        for b in needed if model.compiled else [spec.max_batch]:
            report.step(f"warm-up batch {b}", partial(warm, b, spec.guidance_scale))
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
            h.log(
                f"imgfarm pipeline overlap, in process: SQLite, local folder; {spec.alias} on"
                f" {model.device}, max_batch {spec.max_batch}, {spec.width}²; io threads "
                f"{settings.worker_io_threads}"
            )
            with session_scope(ctx.session_factory) as session:
                team_id = ensure_team(session, "bench").id
            key = source_key(team_id, "bench")
            ctx.storage.put(key, h.png_bytes(h.photo_like(512, 512)), "image/png")
            render_jobs(ctx, spec, team_id, key, warmup_jobs, 1)
            for round_no in range(1, args.rounds + 1):
                for depth in args.depths if round_no % 2 else args.depths[::-1]:
                    run = partial(timed_run, ctx, team_id, key, depth, round_no, args, report)
                    report.step(f"round {round_no}, depth {depth}", run)
            warmed = {(w["bucket"], w["guidance"]) for w in report.data["warmup"]}
            for b, g in plan if args.warm_plan else []:
                if (b, g) not in warmed:
                    report.step(f"warm-up batch {b} guidance {g}", partial(warm, b, g))
        finally:
            ctx.close()
            engine.dispose()


def timed_run(
    ctx: WorkerContext,
    team_id: uuid.UUID,
    key: str,
    depth: int,
    round_no: int,
    args: argparse.Namespace,
    report: h.Report,
) -> None:
    """One timed batch at ``depth``; its outputs checked in storage after the clock stops."""
    busy, g0 = ctx.device.busy_seconds, h.graph_count()
    batch_id, seconds = render_jobs(ctx, ctx.model.spec, team_id, key, args.jobs, depth)
    graphs = h.graph_count() - g0
    run = run_figures(
        {
            "depth": depth,
            "round": round_no,
            "jobs": args.jobs,
            "seconds": seconds,
            "statuses": dict(h.status_counts(ctx.session_factory, batch_id)),
            "missing_outputs": h.missing_outputs(ctx.session_factory, ctx.settings, batch_id),
            "device_busy_seconds": ctx.device.busy_seconds - busy,
            "graphs_compiled": graphs,
        }
    )
    h.log(
        f"  {run['images_per_second']:.2f} images/s in {seconds:.2f} s, duty cycle "
        f"{run['duty_cycle']:.1%}, {run['statuses']}"
    )
    report.data["runs"].append(run)
    if graphs:
        report.finding(f"depth {depth}: {graphs} graphs compiled while timing")


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
        rows = [h.render_job(spec, team_id, key, seed) for seed in range(jobs)]
        for row in rows:
            row.batch_id = batch.id
        session.add_all(rows)
        ids, batch_id = [row.id for row in rows], batch.id
    chunks = [ids[i : i + spec.max_batch] for i in range(0, jobs, spec.max_batch)]
    started = time.perf_counter()
    with ThreadPoolExecutor(depth, thread_name_prefix="bench-task") as pool:
        list(pool.map(lambda chunk: run_render(ctx, chunk), chunks))
    return batch_id, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    from worker.accel import resolve_device

    p = h.parser(__doc__, model=True)
    p.add_argument("--jobs", type=int, help="jobs per timed batch (default 192; smoke 32)")
    p.add_argument("--depths", default="1,3", help="comma-separated; the first is the baseline")
    p.add_argument("--rounds", type=int, help="runs of each depth (default 2; smoke 1)")
    p.add_argument("--warm-plan", action="store_true", help="warm the whole plan: its start")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/imgfarm-bench-sd15"))
    p.add_argument("--warmup-jobs", type=int, help="untimed jobs first (2 full batches)")
    args = p.parse_args(argv)
    args.jobs = args.jobs or (32 if args.smoke else 192)
    args.rounds = args.rounds or (1 if args.smoke else 2)
    args.depths = [int(d) for d in args.depths.split(",")]
    if not all(1 <= d <= 16 for d in args.depths) or not 1 <= args.jobs <= 10_000:
        p.error("--depths must be 1..16 each, --jobs 1..10,000 (one batch)")
    args.device = resolve_device(args.device)
    report = h.Report(
        args.json,
        summarize=lambda data: summarize(data, args.depths),
        env=h.environment(args.device),
        args=vars(args),
        runs=[],
        warmup=[],
    )
    in_process(args, report)
    return 0 if report.finish("pipeline_overlap") and report.data["runs"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""Throughput of the worker's render path per batch bucket, on one machine, no services.

A random-weight img2img checkpoint (full-size SD1.5, bench/sd15_config.py; the tiny model with
``--smoke``) is saved with ``save_pretrained`` and loaded through ``worker.pipelines.load_model``
with the spec a worker gets from the registry (bfloat16, max_batch 16, 20 steps, strength
0.75, guidance 7.5, 512², ``options = {compile = true}``). Every step runs on one
``DeviceLane`` thread, where a worker loads, warms and calls its model. Per batch size:

  (a) ``worker.render.run_pipeline``   the pipeline call, padded to its warm bucket
  (b) ``worker.render.render_batch``   (a) + PNG encode + store of each output, one thread

images/s (median of several calls), the share of (b) spent on the CPU after the pipeline
returned, and the first call after the bucket's warm-up with the graphs torch.compile added
in it (none: the warm-up exists for that). Warm-up: ``load_model(warm=False)``, then each
entry of the worker's warm plan alone, those the measurements need first, so a short lease
still yields per-bucket warm-up seconds; load + every entry is the worker's start time.

    python bench/worker_path.py --device cuda --budget-s 300 --json out.json
    python bench/worker_path.py --device cpu --smoke     # tiny model, 64 px, seconds

On the CPU the farm never compiles (worker/pipelines.py); ``--smoke`` still exercises the
bucket logic by compiling the UNet and VAE with dynamo's ``eager`` backend (no code
generation, same guards), so recompiles show up in the counters there too.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.harness import (  # noqa: E402
    SD15_GUIDANCE,
    Report,
    environment,
    graph_count,
    log,
    median_rate,
    photo_like,
    png_bytes,
    print_summary,
    render_job,
    saved_img2img,
    sd15_spec,
    timed_calls,
    warm_bucket,
)
from shared.settings import Settings  # noqa: E402
from shared.storage import LocalStorage, source_key  # noqa: E402
from worker.accel import resolve_device, synchronize  # noqa: E402
from worker.device import DeviceLane  # noqa: E402
from worker.pipelines import LoadedModel, batch_buckets, load_model, warm_plan  # noqa: E402
from worker.render import RenderItem, prepare, render_batch, run_pipeline  # noqa: E402

WORKER = "bench-worker-path"


def make_items(
    model: LoadedModel, storage: LocalStorage, n: int, source_size: int
) -> list[RenderItem]:
    """``n`` jobs as the api stores them, each through ``worker.render.prepare``."""
    team = uuid.uuid4()
    items = []
    for i in range(n):
        key = source_key(team, f"bench{i:04d}")
        storage.put(key, png_bytes(photo_like(source_size, source_size, seed=i)), "image/png")
        items.append(prepare(model, storage, render_job(model.spec, team, key, 1000 + i)))
    return items


def compile_eager_backend(model: LoadedModel) -> LoadedModel:
    """CPU smoke only: what worker.accel compiles, with dynamo's no-codegen backend."""
    for module in (model.pipe.unet, model.pipe.vae.encoder, model.pipe.vae.decoder):
        module.compile(backend="eager", fullgraph=True, dynamic=False)
    return replace(model, compiled=True, buckets=batch_buckets(model.spec.max_batch))


def time_path(
    report: Report, model: LoadedModel, storage: LocalStorage, items: list[RenderItem]
) -> None:
    """The first call after this bucket's warm-up (a worker's first job at this size), then
    (a) and (b) timed. (b)'s pipeline seconds are the ones render_batch records in each
    output's provenance, so its CPU share needs no second clock."""
    args, device, n = report.data["args"], model.device, len(items)

    def sync() -> None:
        synchronize(device)

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    g0 = graph_count()
    first = timed_calls(
        lambda: run_pipeline(model, items), iters=1, min_iters=1, max_seconds=0, sync=sync
    )[0]
    g1 = graph_count()
    iters = {k: args[k] for k in ("iters", "min_iters", "max_seconds")}
    a = timed_calls(lambda: run_pipeline(model, items), **iters, sync=sync)
    inner: list[float] = []

    def b_call() -> None:
        results = render_batch(model, storage, items, worker=WORKER)
        inner.append(results[0].provenance["render_seconds"])

    b = timed_calls(b_call, **iters, sync=sync)
    cpu = statistics.median(bt - pt for bt, pt in zip(b, inner, strict=True))
    m = {
        "label": f"{model.spec.alias} {n}",
        "items": n,
        "pipeline_batch": model.pipeline_batch_size(n),
        "first_call_s": round(first, 4),
        "first_call_graphs_added": g1 - g0,
        "run_pipeline_times_s": [round(x, 4) for x in a],
        "render_batch_times_s": [round(x, 4) for x in b],
        "run_pipeline_img_s": median_rate(n, a),
        "render_batch_img_s": median_rate(n, b),
        "median_call_s": round(statistics.median(a), 4),
        "cpu_after_pipeline_s": round(cpu, 4),
        "cpu_fraction": round(cpu / statistics.median(b), 4),
        "graphs_added_while_timing": graph_count() - g1,
        "peak_mem_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        if device.startswith("cuda")
        else None,
    }
    report.data["measurements"].append(m)
    log(
        f"  {n} items (batch {m['pipeline_batch']}): (a) {m['run_pipeline_img_s']} img/s, "
        f"(b) {m['render_batch_img_s']} img/s, CPU after pipeline {100 * m['cpu_fraction']:.1f}%"
        f"; first call {first:.2f} s ({m['first_call_graphs_added']} graphs compiled in it)"
    )
    for when, added in (("its first call", g1 - g0), ("timing", m["graphs_added_while_timing"])):
        if added:
            report.finding(f"{m['label']}: {added} graphs compiled during {when} after warm-up")


def run(args: argparse.Namespace, report: Report, lane: DeviceLane) -> None:
    work = Path(args.workdir)
    settings = Settings(data_dir=work / "data")
    storage = LocalStorage(work / "objects", settings.public_url, settings.secret_key)
    spec = sd15_spec(work, args.smoke, args.device, args.max_batch)
    cuda = args.device.startswith("cuda")
    save = lambda: saved_img2img(Path(spec.source), args.device, args.smoke)  # noqa: E731
    report.data["load"]["checkpoint"] = report.step("build + save_pretrained", save)

    def load() -> LoadedModel:
        t = time.perf_counter()
        model = load_model(spec, settings, warm=False)
        if args.smoke and not cuda:
            model = compile_eager_backend(model)
        synchronize(args.device)
        plan = warm_plan(model.buckets, spec.guidance_scale) if model.compiled else []
        report.data["load"].update(
            load_model_s=round(time.perf_counter() - t, 2),
            compiled=model.compiled,
            buckets=list(model.buckets),
            warm_plan=plan,
            revision=model.revision,
        )
        log(f"  compiled={model.compiled}, buckets={model.buckets}, warm plan {plan}")
        if cuda and not model.compiled:
            report.finding("the spec asked for compile but the loaded model is not compiled")
        return model

    model: LoadedModel | None = report.step("load_model", lambda: lane.run(load))
    if model is None:
        return
    loaded = model
    items = report.step(
        "jobs through prepare()",
        lambda: make_items(loaded, storage, spec.max_batch, args.source_size),
    )
    warmed: set[tuple[int, float]] = set()

    def warm(entry: tuple[int, float]) -> None:
        if entry in warmed or not loaded.compiled:
            return
        g0 = graph_count()
        res = warm_bucket(loaded, *entry)
        warmed.add(entry)
        report.data["warmup"].append(
            {
                "bucket": entry[0],
                "guidance": entry[1],
                "seconds": round(res.seconds, 2),
                "compiled": res.compiled,
                "compile_error": res.compile_error,
                "graphs_added": graph_count() - g0,
            }
        )
        log(f"  warmed batch {entry[0]} guidance {entry[1]}: {res.seconds:.1f} s")
        if res.compile_error:
            report.finding(f"compile failed warming batch {entry[0]}: {res.compile_error}")

    for n in args.batch_sizes if items else []:
        if n > len(items):
            continue
        entry = (loaded.pipeline_batch_size(n), spec.guidance_scale)
        kind = "measure" if entry in warmed or not loaded.compiled else "warm"

        def one(n: int = n, entry: tuple[int, float] = entry) -> None:
            warm(entry)
            time_path(report, loaded, storage, items[:n])

        report.step(f"{n} items", lambda one=one: lane.run(one), kind)
    # The rest of the worker's plan: its start time, and every bucket's warm-up seconds.
    if args.start_figure:
        for b, g in report.data["load"].get("warm_plan", []):
            if (b, g) not in warmed:
                report.step(
                    f"warm-up batch {b} guidance {g}", lambda e=(b, g): lane.run(warm, e), "warm"
                )


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    load, warm = data["load"], data["warmup"]
    plan = {tuple(e) for e in load.get("warm_plan", [])}
    missing = plan - {(w["bucket"], w["guidance"]) for w in warm}
    start = None
    if load.get("load_model_s") is not None and not missing:
        start = round(load["load_model_s"] + sum(w["seconds"] for w in warm), 1)
    keys = (
        "pipeline_batch",
        "run_pipeline_img_s",
        "render_batch_img_s",
        "cpu_fraction",
        "first_call_s",
        "median_call_s",
        "first_call_graphs_added",
    )
    return {
        "summary": {
            "load_model_s": load.get("load_model_s"),
            "warmup_s_by_bucket": {
                str(w["bucket"])
                + ("" if w["guidance"] == SD15_GUIDANCE else f" (g {w['guidance']})"): w["seconds"]
                for w in warm
            },
            "worker_start_s": start,
            "buckets_not_warmed": sorted(missing),
            "by_batch": {m["label"]: {k: m[k] for k in keys} for m in data["measurements"]},
        }
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--smoke", action="store_true", help="tiny model, 64 px, 4 steps")
    p.add_argument("--max-batch", type=int, help="spec max_batch (16; smoke 4)")
    p.add_argument("--batch-sizes", help="items per call, in order (16,8,5; smoke 4,2,3)")
    p.add_argument("--source-size", type=int, help="source photo side (768; smoke 96)")
    p.add_argument(
        "--no-start-figure",
        dest="start_figure",
        action="store_false",
        help="do not warm the plan's entries no measurement needed (the worker's start time)",
    )
    p.add_argument("--iters", type=int, default=5, help="most timed calls per path")
    p.add_argument("--min-iters", type=int, default=3, help="fewest timed calls per path")
    p.add_argument("--max-seconds", type=float, default=6.0, help="stop timing a path after")
    p.add_argument("--budget-s", type=float, default=0.0, help="skip steps past this (0: none)")
    p.add_argument("--workdir", default="/tmp/imgfarm-worker-path", help="weights, storage")
    p.add_argument("--json", default=None, help="write all figures to this path")
    args = p.parse_args(argv)
    args.device = resolve_device(args.device)
    smoke = args.smoke
    args.max_batch = args.max_batch or (4 if smoke else 16)
    args.batch_sizes = [
        int(x)
        for x in (args.batch_sizes or ("4,2,3" if smoke else "16,8,5")).split(",")
        if x.strip()
    ]
    args.source_size = args.source_size or (96 if smoke else 768)
    if smoke:
        # One timed call a path: the smoke proves the figures exist, not their spread.
        args.iters, args.min_iters, args.max_seconds = 1, 1, 0.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Random weights in low precision can give NaN pixels; PIL conversion warns, harmlessly.
    warnings.filterwarnings("ignore", message="invalid value encountered in cast")
    # Why each recompile happened goes to the log (dynamo's guard-failure reasons).
    torch._logging.set_logs(recompiles=True)
    log("== environment ==")
    report = Report(
        args.json,
        budget_s=args.budget_s,
        summarize=summarize,
        env=environment(args.device),
        args=vars(args),
        load={},
        warmup=[],
        measurements=[],
    )
    lane = DeviceLane()
    try:
        run(args, report, lane)
    finally:
        lane.shutdown()
        report.dump()
    print_summary("worker_path", report.data)
    return 0 if report.data["measurements"] else 1


if __name__ == "__main__":
    sys.exit(main())

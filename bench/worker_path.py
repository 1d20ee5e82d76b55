"""Throughput of the farm's real worker render path, not just the pipeline.

A full-size SD1.5 img2img checkpoint with random weights (bench/sd15_config.py) is saved with
``save_pretrained`` to a local folder and loaded through ``worker.pipelines.load_model`` with
the spec a worker would get from the registry (bfloat16, cuda, max_batch 16, 20 steps,
strength 0.75, guidance 7.5, 512², ``options = {compile = true}``). Then, per batch size:

  (a) ``worker.render.run_pipeline``   GPU work + PIL in/out, padded to the warm bucket
  (b) ``worker.render.render_batch``   (a) + PNG encode + LocalStorage put, per image

images/s (median of several calls after warm-up), the share of (b)'s wall time spent on the
CPU after the pipeline returns (what overlapping CPU work with GPU compute could win), the
first call after each bucket's warm-up (it must not compile: the warm-up exists for that) and
how many graphs torch.compile added during it. After the first batch size:

  (c) pipelined worker   K batches of photo-like PNG jobs through ``depth`` render tasks at
      once, staged as worker/tasks.py runs them (prepare on an io pool, ``lane.run(render)``
      on a ``DeviceLane``, ``store_output`` on the io pool), no Postgres and no Celery

for each depth (1 and 3 by default, alternating round by round): images/s, the lane's duty
cycle (busy seconds / wall seconds: how much of the time the GPU had a call to run) and the
ratio between the depths. Every step of the bench runs on that one lane thread, so the model
is loaded, warmed and called there, as in a worker (worker/boot.py).

Warm-up: ``--warmup-plan worker`` calls ``load_model(spec, settings)`` exactly as a worker does
(every bucket 1, 2, 4, 8, 16 at start, ascending). The default ``staged`` loads with
``warm=False`` and runs the same per-bucket warm-up call as ``warm_model`` in the order the
measurements need them (16, 8, then the rest while the time budget lasts), so a short device
lease still yields per-bucket warm-up seconds and the throughput figures; load + the
per-bucket seconds adds up to the worker's start time once every bucket is done.

    python bench/worker_path.py --device cuda --budget-s 300 --json out.json
    python bench/worker_path.py --device cpu --smoke     # tiny model, 64 px, seconds

On the CPU the farm never compiles (worker/pipelines.py); ``--smoke`` still exercises the
bucket logic by compiling the UNet and VAE halves with dynamo's ``eager`` backend (no code
generation, same guards), so recompiles show up in the counters there too.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import worker.render as render_mod  # noqa: E402
from shared.images import encode_image  # noqa: E402
from shared.models import Job  # noqa: E402
from shared.registry import BUILTINS, ModelSpec  # noqa: E402
from shared.schemas import RenderParams  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.storage import LocalStorage, source_key  # noqa: E402
from worker.accel import is_compiled, resolve_device, synchronize, warm_up  # noqa: E402
from worker.device import DeviceLane  # noqa: E402
from worker.pipelines import (  # noqa: E402
    LoadedModel,
    batch_buckets,
    load_model,
    warm_up_inputs,
)
from worker.render import (  # noqa: E402
    RenderItem,
    RenderResult,
    prepare,
    render,
    render_batch,
    run_pipeline,
    store_output,
)

PROMPTS = [
    "a red sneaker on a snowy porch, winter morning light",
    "a red sneaker on a sunny beach, summer afternoon",
    "a red sneaker on autumn leaves in a park",
    "a red sneaker on a spring meadow with flowers",
]
WORKER = "bench-worker-path"


def log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------- images and jobs


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """A product-photo stand-in: smooth gradient, a few soft shapes, mild sensor noise.

    Random-weight models render noise or flat colour, which PNG compresses far worse or far
    better than a real photo; encode times are reported for this image too, as the
    realistic case.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.empty((height, width, 3), np.float32)
    for c, (a, b) in enumerate([(210, 30), (200, 20), (190, 10)]):
        img[..., c] = a - b * (y / height) + 10 * np.sin(x / width * 3.1 + c)
    for _ in range(4):
        cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
        rx, ry = rng.uniform(0.08, 0.25) * width, rng.uniform(0.08, 0.25) * height
        inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0
        colour = rng.uniform(20, 235, 3)
        shade = 0.75 + 0.25 * (1 - (y - cy) / (2 * ry))
        img[inside] = colour * shade[inside, None]
    img += rng.normal(0.0, 3.0, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def png_bytes(img: Image.Image, compress_level: int = 6) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def encode_in_threads(images: list[Image.Image]) -> list[bytes]:
    """What a thread pool would do with a batch's PNG encodes (PIL releases the GIL)."""
    with ThreadPoolExecutor(min(len(images), os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda im: encode_image(im, "png"), images))


def make_items(
    model: LoadedModel,
    storage: LocalStorage,
    n: int,
    *,
    source_size: int,
    rgba: bool = False,
) -> tuple[list[RenderItem], float]:
    """``n`` jobs as the api stores them (source uploaded, params resolved), each through
    ``worker.render.prepare`` (fetch, decode, resize, conditioning). Returns the items and
    the seconds ``prepare`` took per item (median)."""
    spec = model.spec
    team = uuid.uuid4()
    items: list[RenderItem] = []
    times: list[float] = []
    for i in range(n):
        img = photo_like(source_size, source_size, seed=i)
        if rgba:  # a cut-out: transparent border -> keep mask for inpaint
            alpha = Image.new("L", img.size, 0)
            inner = Image.new("L", (source_size // 2, source_size // 2), 255)
            alpha.paste(inner, (source_size // 4, source_size // 4))
            img = img.convert("RGBA")
            img.putalpha(alpha)
            data = png_bytes(img)
        else:
            data = jpeg_bytes(img)
        key = source_key(team, f"bench{i:04d}")
        storage.put(key, data, "image/png" if rgba else "image/jpeg")
        job = bench_job(spec, team, key, i)
        t = time.perf_counter()
        items.append(prepare(model, storage, job))
        times.append(time.perf_counter() - t)
    return items, statistics.median(times)


def bench_job(spec: ModelSpec, team: uuid.UUID, key: str, i: int) -> Job:
    """A claimed job as the api stores it: params resolved from the spec, seed from ``i``."""
    params = RenderParams(
        strength=spec.strength,
        steps=spec.steps,
        guidance_scale=spec.guidance_scale,
        seed=1000 + i,
        width=spec.width,
        height=spec.height,
        output_format="png",
    )
    return Job(
        id=uuid.uuid4(),
        team_id=team,
        model=spec.alias,
        status="running",
        prompt=PROMPTS[i % len(PROMPTS)],
        negative_prompt=None,
        params=params.model_dump(),
        source_key=key,
        mask_key=None,
    )


# ---------------------------------------------------------------- compile bookkeeping


def graph_count() -> int:
    """Graphs torch.compile has produced so far in this process (dynamo's own counter)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def compile_eager_backend(pipe: Any) -> None:
    """CPU smoke only: what worker.accel._compile does, with dynamo's no-codegen backend."""
    kwargs = {"backend": "eager", "fullgraph": True, "dynamic": False}
    pipe.unet.compile(**kwargs)
    pipe.vae.encoder.compile(**kwargs)
    pipe.vae.decoder.compile(**kwargs)


@contextmanager
def timed_pipeline(sink: list[float]) -> Iterator[None]:
    """Within the block, ``render_batch``'s own ``run_pipeline`` call is timed into ``sink``
    (render_batch looks the name up in worker.render at call time)."""
    original = render_mod.run_pipeline

    def wrapper(*a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return original(*a, **kw)
        finally:
            sink.append(time.perf_counter() - t)

    render_mod.run_pipeline = wrapper
    try:
        yield
    finally:
        render_mod.run_pipeline = original


# ---------------------------------------------------------------- the bench


class Bench:
    """Steps under a wall-clock budget; every figure kept, the JSON rewritten after each."""

    def __init__(self, args: argparse.Namespace, env: dict[str, Any]) -> None:
        self.args = args
        self.start = time.monotonic()
        # Every step runs on this one thread, as every model call runs on a worker's lane:
        # the model is loaded, warmed and called where the worker would do it.
        self.lane = DeviceLane()
        self.data: dict[str, Any] = {
            "env": env,
            "args": {k: v for k, v in vars(args).items()},
            "load": {},
            "warmup": [],
            "measurements": [],
            "cpu_side": {},
            "pipelined": {},
            "tiny": {},
            "errors": [],
            "skipped": [],
            "findings": [],
        }

    def remaining_s(self) -> float:
        if not self.args.budget_s:
            return float("inf")
        return self.args.budget_s - (time.monotonic() - self.start)

    def step(self, name: str, est_s: float, fn: Callable[[], Any], *, on_lane: bool = True) -> Any:
        """Run ``fn`` (on the device lane unless told not to: a step that submits to the lane
        itself) unless less than ``est_s`` (or the reserve) is left; never raise."""
        left = self.remaining_s()
        if left < max(est_s, self.args.reserve_s):
            log(f"SKIP {name}: {left:.0f} s left, needs ~{est_s:.0f} s")
            self.data["skipped"].append(name)
            self.dump()
            return None
        log(f"\n== {name} ({left:.0f} s of budget left) ==")
        t = time.perf_counter()
        try:
            return self.lane.run(fn) if on_lane else fn()
        except Exception as exc:  # a failed section is a finding too: report it, go on
            log(f"FAILED {name} after {time.perf_counter() - t:.1f} s: {exc!r}")
            traceback.print_exc()
            sys.stderr.flush()
            self.data["errors"].append({"step": name, "error": repr(exc)})
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return None
        finally:
            self.dump()

    def finding(self, text: str) -> None:
        log(f"FINDING: {text}")
        self.data["findings"].append(text)

    def dump(self) -> None:
        self.data["elapsed_s"] = round(time.monotonic() - self.start, 1)
        self.data["summary"] = summarize(self.data)
        if not self.args.json:
            return
        path = Path(self.args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        tmp.replace(path)


@dataclass
class PathTiming:
    """One batch size through (a) run_pipeline and (b) render_batch."""

    workload: str
    items: int
    pipeline_batch: int
    first_call_s: float | None = None
    first_call_graphs_added: int | None = None
    a_times_s: list[float] = field(default_factory=list)
    b_times_s: list[float] = field(default_factory=list)
    b_pipeline_s: list[float] = field(default_factory=list)
    a_median_s: float | None = None
    a_images_per_s: float | None = None
    b_median_s: float | None = None
    b_images_per_s: float | None = None
    b_cpu_after_pipeline_s: float | None = None
    b_cpu_fraction: float | None = None
    overlap_images_per_s: float | None = None
    prepare_s_per_item: float | None = None
    peak_mem_gb: float | None = None
    graphs_added_while_timing: int | None = None


def time_path(
    bench: Bench,
    model: LoadedModel,
    storage: LocalStorage,
    items: list[RenderItem],
    workload: str,
    prepare_s: float,
) -> tuple[PathTiming, list[Any]]:
    """Returns the timings and the first call's images."""
    args = bench.args
    device = model.device
    m = PathTiming(
        workload=workload,
        items=len(items),
        pipeline_batch=model.pipeline_batch_size(len(items)),
        prepare_s_per_item=round(prepare_s, 5),
    )
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    # The first call after this bucket's warm-up: a worker's first job at this size.
    synchronize(device)
    g0 = graph_count()
    t = time.perf_counter()
    images = run_pipeline(model, items)
    synchronize(device)
    m.first_call_s = round(time.perf_counter() - t, 4)
    m.first_call_graphs_added = graph_count() - g0
    log(
        f"  first call after warm-up ({len(items)} items -> batch {m.pipeline_batch}): "
        f"{m.first_call_s:.2f} s, graphs compiled during it: {m.first_call_graphs_added}"
    )
    if args.extra_warmup:
        run_pipeline(model, items)
    g1 = graph_count()

    def timed(fn: Callable[[], Any]) -> list[float]:
        times: list[float] = []
        while len(times) < args.iters:
            if len(times) >= args.min_iters and sum(times) >= args.max_seconds:
                break
            synchronize(device)
            t = time.perf_counter()
            fn()
            synchronize(device)
            times.append(time.perf_counter() - t)
        return times

    m.a_times_s = [round(x, 4) for x in timed(lambda: run_pipeline(model, items))]
    inner: list[float] = []
    with timed_pipeline(inner):
        b = timed(lambda: render_batch(model, storage, items, worker=WORKER))
    m.b_times_s = [round(x, 4) for x in b]
    m.b_pipeline_s = [round(x, 4) for x in inner]
    m.graphs_added_while_timing = graph_count() - g1
    n = len(items)
    m.a_median_s = round(statistics.median(m.a_times_s), 4)
    m.a_images_per_s = round(n / m.a_median_s, 3)
    m.b_median_s = round(statistics.median(m.b_times_s), 4)
    m.b_images_per_s = round(n / m.b_median_s, 3)
    cpu = statistics.median(bt - pt for bt, pt in zip(b, inner, strict=True))
    m.b_cpu_after_pipeline_s = round(cpu, 4)
    m.b_cpu_fraction = round(cpu / m.b_median_s, 4)
    # Encode/store overlapped with the next batch's pipeline call: the slower of the two.
    m.overlap_images_per_s = round(n / max(statistics.median(inner), cpu), 3)
    if device.startswith("cuda"):
        m.peak_mem_gb = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    log(
        f"  [{workload}] {n} items (batch {m.pipeline_batch}): "
        f"(a) run_pipeline {m.a_images_per_s} img/s (median {m.a_median_s:.3f} s of "
        f"{len(m.a_times_s)}); (b) render_batch {m.b_images_per_s} img/s (median "
        f"{m.b_median_s:.3f} s, CPU after pipeline {cpu:.3f} s = "
        f"{100 * m.b_cpu_fraction:.1f}%); overlapped would be {m.overlap_images_per_s} img/s; "
        f"first call {m.first_call_s:.2f} s vs median {m.a_median_s:.3f} s"
    )
    if m.graphs_added_while_timing:
        bench.finding(
            f"{workload} {n} items: {m.graphs_added_while_timing} graphs compiled while timing"
        )
    bench.data["measurements"].append(dataclasses.asdict(m))
    if m.first_call_graphs_added:
        bench.finding(
            f"{workload}: the first job at batch {m.pipeline_batch} after its warm-up compiled "
            f"{m.first_call_graphs_added} new graphs and took {m.first_call_s:.1f} s against a "
            f"{m.a_median_s:.2f} s median"
        )
    return m, images


def warm_bucket(bench: Bench, model: LoadedModel, size: int, mode: str) -> float:
    """The body of ``worker.pipelines.warm_model`` for one bucket; ``mode`` "worker" calls it
    as the worker does, "inference_mode" inside ``torch.inference_mode()`` (an experiment:
    ``run_pipeline`` renders under no_grad, as warm-up does, so that mode now recompiles)."""
    spec = model.spec
    g0 = graph_count()
    ctx = torch.inference_mode() if mode == "inference_mode" else nullcontext()
    with ctx:
        result = warm_up(
            model.pipe,
            width=spec.width,
            height=spec.height,
            steps=spec.steps,
            batch_size=size,
            strength=spec.strength,
            guidance_scale=spec.guidance_scale,
            extra_inputs=warm_up_inputs(spec, size),
        )
    entry = {
        "model": spec.alias,
        "bucket": size,
        "seconds": round(result.seconds, 2),
        "compiled": result.compiled,
        "compile_error": result.compile_error,
        "mode": mode,
        "graphs_added": graph_count() - g0,
    }
    bench.data["warmup"].append(entry)
    log(
        f"  warmed {spec.alias} at batch {size} ({mode}): {result.seconds:.1f} s, "
        f"compiled={result.compiled}, graphs added {entry['graphs_added']}"
    )
    if result.compile_error:
        bench.finding(f"compile failed warming {spec.alias} at {size}: {result.compile_error}")
    return result.seconds


# ---------------------------------------------------------------- (c) pipelined worker


@dataclass
class PipelinedRun:
    """K batches through ``depth`` render tasks at once, staged as worker/tasks.py runs them."""

    depth: int
    round: int
    batches: int
    batch_size: int
    images: int
    wall_s: float
    lane_busy_s: float
    lane_calls: int
    duty_cycle: float
    images_per_s: float
    lane_call_median_s: float
    prepare_stage_median_s: float
    store_stage_median_s: float
    stored: int
    graphs_added: int
    # Wall-clock start, to line the run up with `nvidia-smi dmon` samples (bench/gpu_session.sh).
    started_at: str


def upload_sources(storage: LocalStorage, n: int, source_size: int) -> list[str]:
    """``n`` photo-like PNG sources in storage, as customers upload them."""
    team = uuid.uuid4()
    keys = []
    for i in range(n):
        key = source_key(team, f"pipelined{i:04d}")
        storage.put(key, png_bytes(photo_like(source_size, source_size, seed=500 + i)), "image/png")
        keys.append(key)
    return keys


def pipelined_worker(
    model: LoadedModel,
    storage: LocalStorage,
    lane: DeviceLane,
    io: ThreadPoolExecutor,
    batches: list[list[Job]],
    depth: int,
    stand_in: Image.Image | None = None,
) -> tuple[float, list[tuple[float, float, float, list[RenderResult]]]]:
    """Run ``batches`` as ``depth`` render tasks at once (Celery's thread pool): each task
    prepares its jobs on the io pool, renders them in one ``lane.run(render, ...)`` call and
    stores every output on the io pool. No database and no broker: the stages and threads
    are the worker's, the bookkeeping around them is left out. ``stand_in``, if given, is
    stored in place of each rendered image (what encoding a real photo costs). Returns the
    wall seconds and, per batch, (prepare stage s, lane call s, store stage s, results)."""

    def task(jobs: list[Job]) -> tuple[float, float, float, list[RenderResult]]:
        t = time.perf_counter()
        prepared = [io.submit(prepare, model, storage, job) for job in jobs]
        items = [f.result() for f in prepared]
        prepare_s = time.perf_counter() - t
        rendered = lane.run(render, model, items)
        t = time.perf_counter()
        images = rendered.images if stand_in is None else [stand_in.copy() for _ in items]
        stores = [
            io.submit(
                store_output,
                model,
                storage,
                item,
                image,
                worker=WORKER,
                batch_size=rendered.batch_size,
                render_seconds=rendered.seconds,
            )
            for item, image in zip(rendered.items, images, strict=True)
        ]
        results = [f.result() for f in stores]
        return prepare_s, rendered.seconds, time.perf_counter() - t, results

    t = time.perf_counter()
    with ThreadPoolExecutor(depth, thread_name_prefix="bench-task") as tasks:
        outcomes = list(tasks.map(task, batches))
    return time.perf_counter() - t, outcomes


def pipelined(bench: Bench, model: LoadedModel, storage: LocalStorage, lane: DeviceLane) -> None:
    """(c): images/s and the device lane's duty cycle at each pipeline depth, same model,
    same jobs, depths alternating round by round so drift (clocks, heat) hits them alike."""
    args = bench.args
    spec = model.spec
    bs, k = args.pipeline_batch, args.pipeline_batches
    keys = upload_sources(storage, bs, args.source_size)
    team = uuid.uuid4()
    # Random weights render noise or flat colour, which PNG-encode far slower or faster than
    # a photo: by default each output is stored as a photo-like image of its size instead.
    stand_in = None
    if args.pipeline_outputs == "photo":
        stand_in = photo_like(spec.width, spec.height, seed=99)
    runs: list[PipelinedRun] = []
    with ThreadPoolExecutor(args.io_threads, thread_name_prefix="bench-io") as io:
        # One untimed batch: the io threads' start and the first decode stay out of the runs.
        warm = [bench_job(spec, team, keys[i], i) for i in range(bs)]
        pipelined_worker(model, storage, lane, io, [warm], 1, stand_in)
        for r in range(args.pipeline_rounds):
            order = args.pipeline_depths if r % 2 == 0 else args.pipeline_depths[::-1]
            for depth in order:
                batches = [
                    [bench_job(spec, team, keys[i], b * bs + i) for i in range(bs)]
                    for b in range(k)
                ]
                busy, calls, g0 = lane.busy_seconds, lane.calls, graph_count()
                started_at = time.strftime("%H:%M:%S")
                wall, outcomes = pipelined_worker(
                    model, storage, lane, io, batches, depth, stand_in
                )
                busy, calls = lane.busy_seconds - busy, lane.calls - calls
                results = [res for *_, batch in outcomes for res in batch]
                run = PipelinedRun(
                    depth=depth,
                    round=r,
                    batches=k,
                    batch_size=bs,
                    images=len(results),
                    wall_s=round(wall, 4),
                    lane_busy_s=round(busy, 4),
                    lane_calls=calls,
                    duty_cycle=round(busy / wall, 4),
                    images_per_s=round(len(results) / wall, 3),
                    lane_call_median_s=round(statistics.median(o[1] for o in outcomes), 4),
                    prepare_stage_median_s=round(statistics.median(o[0] for o in outcomes), 4),
                    store_stage_median_s=round(statistics.median(o[2] for o in outcomes), 4),
                    stored=sum(storage.exists(res.outputs[0]["key"]) for res in results),
                    graphs_added=graph_count() - g0,
                    started_at=started_at,
                )
                runs.append(run)
                log(
                    f"  depth {depth} (round {r}, from {started_at}): {run.images} images in "
                    f"{wall:.2f} s = {run.images_per_s} img/s; lane busy {busy:.2f} s = duty "
                    f"{100 * run.duty_cycle:.1f}%; per batch: prepare {run.prepare_stage_median_s}"
                    f" s, lane call {run.lane_call_median_s} s, store {run.store_stage_median_s}"
                    f" s (medians); stored {run.stored}/{run.images}"
                )
                if run.graphs_added:
                    bench.finding(
                        f"pipelined depth {depth}: {run.graphs_added} graphs compiled on the lane"
                    )
    by_depth: dict[str, dict[str, Any]] = {}
    for depth in args.pipeline_depths:
        mine = [x for x in runs if x.depth == depth]
        by_depth[str(depth)] = {
            "images_per_s": round(statistics.median(x.images_per_s for x in mine), 3),
            "duty_cycle": round(statistics.median(x.duty_cycle for x in mine), 4),
            "lane_call_median_s": round(statistics.median(x.lane_call_median_s for x in mine), 4),
            "runs": len(mine),
        }
    first, last = (by_depth[str(d)] for d in (args.pipeline_depths[0], args.pipeline_depths[-1]))
    bench.data["pipelined"] = {
        "workload": spec.alias,
        "batch_size": bs,
        "pipeline_batch": model.pipeline_batch_size(bs),
        "batches_per_run": k,
        "rounds": args.pipeline_rounds,
        "io_threads": args.io_threads,
        "source": f"photo-like PNG {args.source_size}x{args.source_size}",
        "outputs_stored": args.pipeline_outputs,
        "runs": [dataclasses.asdict(x) for x in runs],
        "by_depth": by_depth,
        "ratio": {
            "depths": f"{args.pipeline_depths[-1]}/{args.pipeline_depths[0]}",
            "images_per_s": round(last["images_per_s"] / first["images_per_s"], 3),
            "duty_cycle": round(last["duty_cycle"] / first["duty_cycle"], 3),
        },
    }


def pipelined_step(
    bench: Bench,
    model: LoadedModel,
    storage: LocalStorage,
    warm: Callable[[int], None],
    warm_s: float,
) -> None:
    """(c) as a budgeted step: its bucket warmed on the lane first if (a)/(b) did not."""
    args = bench.args
    bucket = model.pipeline_batch_size(args.pipeline_batch)
    calls = args.pipeline_rounds * len(args.pipeline_depths) * args.pipeline_batches
    # ~1.5 s per SD1.5 batch of 16 on the H200 (pipeline call plus stages that do not overlap)
    est = warm_s + 10 + 1.5 * calls * bucket / 16 if model.device.startswith("cuda") else 0.0

    def run() -> None:
        bench.lane.run(warm, bucket)
        pipelined(bench, model, storage, bench.lane)

    bench.step(
        f"pipelined worker: {args.pipeline_batches} batches of {args.pipeline_batch}, "
        f"depths {args.pipeline_depths}",
        est,
        run,
        on_lane=False,
    )


# ---------------------------------------------------------------- CPU-side split


def cpu_split(
    bench: Bench,
    width: int,
    height: int,
    storage: LocalStorage,
    outputs: list[Any],
    processor: Any,
    device: str,
    dtype: torch.dtype,
) -> None:
    """Per image: PNG encode of a real output and of a photo-like image, and the store put;
    per batch: the pipeline's own PIL in (preprocess) and out (postprocess, from ``device``).
    """
    out = outputs[0]
    ref = photo_like(width, height, seed=99)

    def per_call(fn: Callable[[], Any], n: int = 8) -> float:
        times = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    def ms(fn: Callable[[], Any], n: int = 8) -> float:
        return round(1000 * per_call(fn, n), 2)

    data = encode_image(out, "png")
    key = f"outputs/bench/{uuid.uuid4()}/0.png"
    meta = {"job-id": "x", "model": "bench"}
    arr = np.asarray(out)
    bs = len(outputs)
    images = [ref] * bs
    fake = (torch.rand(bs, 3, height, width, device=device) * 2 - 1).to(dtype)

    def post() -> None:
        processor.postprocess(fake, output_type="pil")
        synchronize(device)

    split = {
        "image": f"{out.width}x{out.height}",
        "output_distinct_values": int(len(np.unique(arr))),
        "output_mean": round(float(arr.mean()), 1),
        "png_encode_output_ms": ms(lambda: encode_image(out, "png")),
        "png_bytes_output": len(data),
        "png_encode_photo_like_ms": ms(lambda: encode_image(ref, "png")),
        "png_bytes_photo_like": len(encode_image(ref, "png")),
        "png_level1_encode_photo_like_ms": ms(
            lambda: ref.save(io.BytesIO(), "PNG", compress_level=1)
        ),
        "png_level1_bytes_photo_like": len(png_bytes(ref, compress_level=1)),
        "png_encode_batch_threads_ms": ms(lambda: encode_in_threads(list(outputs)), 3),
        "threads": min(len(images), os.cpu_count() or 1),
        "webp_encode_photo_like_ms": ms(lambda: encode_image(ref, "webp"), 3),
        "jpeg_encode_photo_like_ms": ms(lambda: encode_image(ref, "jpeg")),
        "store_put_ms": ms(lambda: storage.put(key, data, "image/png", metadata=meta)),
        "batch_for_pil_figures": bs,
        "pil_in_preprocess_ms_per_batch": ms(
            lambda: processor.preprocess(images, height=height, width=width), 3
        ),
        "pil_out_postprocess_ms_per_batch": ms(post, 3),
    }
    bench.data["cpu_side"] = split
    log("  " + ", ".join(f"{k} {v}" for k, v in split.items()))


def cpu_side_only(args: argparse.Namespace) -> Bench:
    """No model: the CPU work the worker does around one pipeline call at full size, on
    noise-like outputs (worst case for PNG) and photo-like ones (``--cpu-side-only``)."""
    from diffusers.image_processor import VaeImageProcessor

    bench = Bench(args, environment(args.device))
    work = Path(args.workdir)
    storage = LocalStorage(work / "objects", "http://127.0.0.1:8000", "bench")
    size = 64 if args.smoke else 512
    bs = args.max_batch
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    processor = VaeImageProcessor(vae_scale_factor=8)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    for name, img in (("noise", noise), ("photo-like", photo_like(size, size, seed=7))):
        bench.step(
            f"CPU side, {name} outputs, batch {bs}",
            0,
            lambda img=img: cpu_split(
                bench, size, size, storage, [img] * bs, processor, args.device, dtype
            ),
        )
        bench.data.setdefault("cpu_side_runs", {})[name] = bench.data["cpu_side"]
    spec = ModelSpec(alias="cpu-side", source="none", width=size, height=size, max_batch=bs)
    stub = LoadedModel(spec=spec, pipe=None, device="cpu", revision="-", load_seconds=0.0)
    _, prep = make_items(stub, storage, 4, source_size=args.source_size)
    bench.data["cpu_side_runs"]["prepare_ms_per_item"] = round(1000 * prep, 2)
    log(f"  prepare() of a {args.source_size}² JPEG source: {1000 * prep:.1f} ms per item")
    if not args.smoke:
        estimate_cpu_fraction(bench)
    return bench


# The pure pipeline's seconds per call on the H200 (bench/results/h200-2026-11-28.txt:
# bf16 + compiled UNet and VAE, PIL in and out): sd15 batch 16 and 8, turbo batch 32.
H200_PIPELINE_CALL_S = {("sd15", 16): 1.3438, ("sd15", 8): 0.7253, ("turbo", 32): 0.7511}


def estimate_cpu_fraction(bench: Bench) -> None:
    """render_batch = pipeline call + per image (PNG encode + put), with this CPU's encode
    times and the H200's pipeline times: an estimate until the device run measures it."""
    runs = bench.data["cpu_side_runs"]
    out: dict[str, Any] = {}
    for (wl, bs), call in H200_PIPELINE_CALL_S.items():
        for name in ("photo-like", "noise"):
            r = runs[name]
            cpu = bs * (r["png_encode_output_ms"] + r["store_put_ms"]) / 1000
            total = call + cpu
            out[f"{wl} {bs} {name}"] = {
                "pipeline_s": call,
                "encode_store_s": round(cpu, 3),
                "cpu_fraction": round(cpu / total, 3),
                "render_batch_img_s": round(bs / total, 2),
                "pipeline_img_s": round(bs / call, 2),
                "overlapped_img_s": round(bs / max(call, cpu), 2),
            }
            log(
                f"  estimate {wl} batch {bs}, {name} outputs: pipeline {call:.3f} s + encode/store "
                f"{cpu:.3f} s -> CPU {100 * cpu / total:.0f}% of render_batch; "
                f"{bs / total:.2f} img/s against {bs / call:.2f} (pipeline alone)"
            )
    bench.data["cpu_fraction_estimate"] = out


# ---------------------------------------------------------------- model building


def save_checkpoint(folder: Path, device: str, smoke: bool) -> dict[str, Any]:
    """SD1.5 (or the tiny model for --smoke) with random weights, saved with save_pretrained
    (fp16 on CUDA, like the checkpoints' fp16 variant; load_model casts to bfloat16)."""
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline

    from bench.sd15_config import SCHEDULER_CONFIG, build_sd15_components

    if folder.exists():
        shutil.rmtree(folder)
    t = time.perf_counter()
    if smoke:
        from worker.tiny import build_tiny_components

        components = build_tiny_components()
        components["scheduler"] = DDIMScheduler(**SCHEDULER_CONFIG)
    else:
        components = build_sd15_components(device)
    pipe: Any = StableDiffusionImg2ImgPipeline(**components, requires_safety_checker=False)
    if device.startswith("cuda"):
        pipe.to(dtype=torch.float16)
    synchronize(device)
    built = time.perf_counter() - t
    t = time.perf_counter()
    pipe.save_pretrained(folder)
    saved = time.perf_counter() - t
    del pipe, components
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    info = {"build_s": round(built, 2), "save_s": round(saved, 2), "bytes": size}
    log(f"  built in {built:.1f} s, saved {size / 2**30:.2f} GiB in {saved:.1f} s to {folder}")
    return info


class WarmLog(logging.Handler):
    """Collects worker.pipelines' 'warmed ALIAS at WxH batch N in S' lines."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("warmed ") and record.args:
            # (alias, width, height, batch, guidance, seconds): worker/pipelines.warm_model.
            alias, _width, _height, size, *_, seconds = record.args  # type: ignore[misc]
            self.records.append({"model": alias, "bucket": size, "seconds": round(seconds, 2)})


# ---------------------------------------------------------------- sections


def run(args: argparse.Namespace) -> Bench:
    device = args.device
    cuda = device.startswith("cuda")
    env = environment(device)
    log("== environment ==")
    for k, v in env.items():
        log(f"  {k}: {v}")
    bench = Bench(args, env)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    settings = Settings(data_dir=work / "data")
    storage = LocalStorage(work / "objects", settings.public_url, settings.secret_key)
    warm_log = WarmLog()
    logging.getLogger("worker.pipelines").addHandler(warm_log)
    ckpt = work / "sd15-random"
    size = 64 if args.smoke else 512
    spec = ModelSpec(
        alias="sd15-random",
        source=str(ckpt),
        kind="img2img",
        dtype="bfloat16",
        device=device,
        max_batch=args.max_batch,
        steps=4 if args.smoke else 20,
        strength=0.75,
        guidance_scale=7.5,
        width=size,
        height=size,
        options={"compile": True},
    )
    state: dict[str, Any] = {}

    def build() -> None:
        bench.data["load"]["checkpoint"] = save_checkpoint(ckpt, device, args.smoke)

    def load() -> None:
        t = time.perf_counter()
        if args.warmup_plan == "worker":
            model = load_model(spec, settings)
        else:
            model = load_model(spec, settings, warm=False)
            if args.smoke and not cuda and args.cpu_compile_probe:
                compile_eager_backend(model.pipe)
                model = replace(model, compiled=True, buckets=batch_buckets(spec.max_batch))
        synchronize(device)
        seconds = time.perf_counter() - t
        state["model"] = model
        bench.data["load"].update(
            {
                "plan": args.warmup_plan,
                "load_model_s": round(seconds, 2),
                "loaded_model_load_seconds": round(model.load_seconds, 2),
                "compiled": model.compiled,
                "pipe_compiled": is_compiled(model.pipe),
                "buckets": list(model.buckets),
                "revision": model.revision,
            }
        )
        if args.warmup_plan == "worker":
            for rec in warm_log.records:
                bench.data["warmup"].append({**rec, "mode": "worker"})
        log(
            f"  load_model ({args.warmup_plan}): {seconds:.1f} s; compiled={model.compiled}, "
            f"buckets={model.buckets}"
        )
        if cuda and not model.compiled:
            bench.finding("the spec asked for compile but the loaded model is not compiled")

    bench.step("build + save_pretrained random SD1.5", 60 if cuda else 0, build)
    bench.step("load_model", 30 if cuda else 0, load)
    model: LoadedModel | None = state.get("model")
    if model is None:
        return bench

    items_all, prepare_s = [], 0.0

    def jobs() -> None:
        nonlocal items_all, prepare_s
        items_all, prepare_s = make_items(
            model, storage, spec.max_batch, source_size=args.source_size
        )
        log(f"  prepared {len(items_all)} jobs, {1000 * prepare_s:.1f} ms per item (median)")

    bench.step("jobs through prepare()", 0, jobs)
    warmed: set[int] = set()
    recompiled = False

    def mode_for_next() -> str:
        if args.fix_mode == "never":
            return "worker"
        if args.fix_mode == "always":
            return "inference_mode"
        return "inference_mode" if recompiled else "worker"

    def warm(size: int) -> None:
        if model.compiled and size not in warmed and args.warmup_plan == "staged":
            warm_bucket(bench, model, size, mode_for_next())
        warmed.add(size)

    def est_warm() -> float:
        """A bucket's warm-up: the slowest seen so far, else ~75 s on CUDA (UNet + VAE
        halves compiled at a new shape, bench/results/h200-2026-11-28.txt)."""
        seen = [w["seconds"] for w in bench.data["warmup"] if w["model"] == spec.alias]
        return (max(seen) if seen else 75.0) if cuda else 0.0

    outputs: list[Any] = []
    # (c) right after the first batch size: its bucket is warm then, and a short lease's
    # budget reaches it before any other bucket's warm-up.
    pipelined_pending = args.pipeline_batches > 0

    def run_pipelined() -> None:
        nonlocal pipelined_pending
        pipelined_pending = False
        cold = model.compiled and model.pipeline_batch_size(args.pipeline_batch) not in warmed
        pipelined_step(bench, model, storage, warm, est_warm() if cold else 0.0)

    for n in args.batch_sizes:
        if pipelined_pending and bench.data["measurements"]:
            run_pipelined()
        if n > len(items_all) or not items_all:
            continue
        bucket = model.pipeline_batch_size(n)
        # Warm-up if still needed, a first call that may compile once more, the timed calls.
        need = (0 if bucket in warmed or not model.compiled else est_warm()) + (
            40 + 20 if cuda else 0
        )

        def one(n: int = n, bucket: int = bucket) -> None:
            nonlocal recompiled
            warm(bucket)
            m, images = time_path(bench, model, storage, items_all[:n], "sd15", prepare_s)
            if m.first_call_graphs_added:
                recompiled = True
            if not outputs:
                outputs.extend(images)

        bench.step(f"sd15 {n} items", need, one)
    if pipelined_pending:
        run_pipelined()

    if outputs:
        bench.step(
            "CPU-side split",
            10 if cuda else 0,
            lambda: cpu_split(
                bench,
                spec.width,
                spec.height,
                storage,
                outputs,
                model.pipe.image_processor,
                device,
                model.pipe.vae.dtype,
            ),
        )

    # Turbo-style alias on the same weights: 4 steps x 0.5 = 2 denoising steps, no CFG.
    if args.turbo_batch:
        tb = args.turbo_batch
        tspec = replace(
            spec,
            alias="sd15-random-turbo",
            steps=4,
            strength=0.5,
            guidance_scale=0.0,
            max_batch=tb,
        )
        tmodel = replace(model, spec=tspec, buckets=batch_buckets(tb) if model.compiled else (1,))

        def turbo() -> None:
            nonlocal recompiled
            items, prep = make_items(tmodel, storage, tb, source_size=args.source_size)
            if tmodel.compiled and args.warmup_plan == "staged":
                warm_bucket(bench, tmodel, tmodel.pipeline_batch_size(tb), mode_for_next())
            elif tmodel.compiled:
                warm_bucket(bench, tmodel, tmodel.pipeline_batch_size(tb), "worker")
            m, _ = time_path(bench, tmodel, storage, items, "turbo", prep)
            if m.first_call_graphs_added:
                recompiled = True

        bench.step(f"turbo alias {tb} items", 60 if cuda else 0, turbo)

    # Kinds other than img2img: load the built-in tiny models as a worker would, compiled.
    for name in args.tiny:
        bench.step(
            f"{name} compiled",
            60 if cuda else 0,
            lambda name=name: tiny_kind(bench, name, settings, storage, args),
        )

    # Complete the worker's start figure with the buckets not yet warmed (ascending).
    if model.compiled and args.warmup_plan == "staged" and args.start_figure:
        for b in model.buckets:
            if b not in warmed:
                bench.step(
                    f"warm-up bucket {b} (start-time figure)", est_warm(), lambda b=b: warm(b)
                )
    return bench


def tiny_kind(
    bench: Bench, name: str, settings: Settings, storage: LocalStorage, args: argparse.Namespace
) -> None:
    device = args.device
    cuda = device.startswith("cuda")
    spec = replace(
        BUILTINS[name],
        device=device,
        dtype="bfloat16" if cuda else "float32",
        max_batch=args.tiny_max_batch,
        options={"compile": True},
    )
    g0 = graph_count()
    t = time.perf_counter()
    model = load_model(spec, settings)  # worker-exact: every bucket warmed at start
    load_s = time.perf_counter() - t
    items, _ = make_items(
        model, storage, spec.max_batch, source_size=128, rgba=spec.kind == "inpaint"
    )
    g1 = graph_count()
    t = time.perf_counter()
    results = render_batch(model, storage, items, worker=WORKER)
    first = time.perf_counter() - t
    g2 = graph_count()
    t = time.perf_counter()
    render_batch(model, storage, items, worker=WORKER)
    second = time.perf_counter() - t
    entry = {
        "kind": spec.kind,
        "load_and_warm_s": round(load_s, 2),
        "compiled": model.compiled,
        "buckets": list(model.buckets),
        "graphs_at_load": g1 - g0,
        "first_render_batch_s": round(first, 3),
        "first_render_graphs_added": g2 - g1,
        "second_render_batch_s": round(second, 3),
        "outputs": len(results),
        "stored": all(storage.exists(r.outputs[0]["key"]) for r in results),
    }
    bench.data["tiny"][name] = entry
    log("  " + ", ".join(f"{k} {v}" for k, v in entry.items()))
    if cuda and not model.compiled:
        bench.finding(f"{name}: compile did not survive warm-up (eager fallback)")


# ---------------------------------------------------------------- report


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    load = data.get("load", {})
    warm = [w for w in data.get("warmup", []) if w.get("model") == "sd15-random"]
    buckets = load.get("buckets") or []
    done = {w["bucket"] for w in warm}
    start_s = None
    if load.get("load_model_s") is not None:
        if load.get("plan") == "worker":
            start_s = load["load_model_s"]
        elif buckets and done >= set(buckets):
            start_s = round(load["load_model_s"] + sum(w["seconds"] for w in warm), 1)
    per_bs = {
        f"{m['workload']} {m['items']}": {
            "pipeline_batch": m["pipeline_batch"],
            "run_pipeline_img_s": m["a_images_per_s"],
            "render_batch_img_s": m["b_images_per_s"],
            "cpu_fraction": m["b_cpu_fraction"],
            "overlapped_img_s": m["overlap_images_per_s"],
            "first_call_s": m["first_call_s"],
            "median_call_s": m["a_median_s"],
            "first_call_graphs_added": m["first_call_graphs_added"],
        }
        for m in data.get("measurements", [])
    }
    piped = data.get("pipelined")
    return {
        "load_model_s": load.get("load_model_s"),
        "warmup_s_by_bucket": {f"{w['bucket']} ({w['mode']})": w["seconds"] for w in warm},
        "worker_start_s": start_s,
        "buckets_not_warmed": sorted(set(buckets) - done) if load.get("plan") == "staged" else [],
        "by_batch": per_bs,
        "pipelined": None
        if not piped
        else {
            "batch_size": piped["batch_size"],
            "batches_per_run": piped["batches_per_run"],
            "by_depth": {
                d: {k: v[k] for k in ("images_per_s", "duty_cycle", "lane_call_median_s")}
                for d, v in piped["by_depth"].items()
            },
            "ratio": piped["ratio"],
        },
    }


def environment(device: str) -> dict[str, Any]:
    import diffusers
    import transformers

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "device": device,
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def print_report(bench: Bench) -> None:
    s = bench.data["summary"]
    log("\n== summary ==")
    what = "from_pretrained + fast path"
    if bench.args.warmup_plan == "worker":
        what += " + every bucket's warm-up"
    if s["load_model_s"] is not None:
        log(f"load_model ({what}): {s['load_model_s']} s")
    for k, v in s["warmup_s_by_bucket"].items():
        log(f"  warm-up bucket {k}: {v} s")
    if s["worker_start_s"] is not None:
        log(f"worker start (load + every bucket's warm-up): {s['worker_start_s']} s")
    elif s["buckets_not_warmed"]:
        log(f"worker start: incomplete, buckets not warmed {s['buckets_not_warmed']}")
    for k, v in s["by_batch"].items():
        log(
            f"[{k} items -> batch {v['pipeline_batch']}] run_pipeline {v['run_pipeline_img_s']} "
            f"img/s, render_batch {v['render_batch_img_s']} img/s, CPU after pipeline "
            f"{100 * (v['cpu_fraction'] or 0):.1f}% (overlapped: {v['overlapped_img_s']} img/s), "
            f"first call {v['first_call_s']} s vs median {v['median_call_s']} s "
            f"({v['first_call_graphs_added']} graphs compiled in it)"
        )
    if s["pipelined"]:
        p = s["pipelined"]
        log(
            f"[pipelined worker, {p['batches_per_run']} batches of {p['batch_size']} per run] "
            + "; ".join(
                f"depth {d}: {v['images_per_s']} img/s, lane duty {100 * v['duty_cycle']:.1f}%, "
                f"lane call {v['lane_call_median_s']} s"
                for d, v in p["by_depth"].items()
            )
            + f"; depth {p['ratio']['depths']}: {p['ratio']['images_per_s']}x img/s, "
            f"{p['ratio']['duty_cycle']}x duty"
        )
    for name, t in bench.data["tiny"].items():
        log(
            f"[{name}] compiled={t['compiled']}, load+warm {t['load_and_warm_s']} s, first "
            f"render_batch {t['first_render_batch_s']} s ({t['first_render_graphs_added']} "
            f"graphs), second {t['second_render_batch_s']} s, outputs stored: {t['stored']}"
        )
    for f in bench.data["findings"]:
        log(f"FINDING: {f}")
    for e in bench.data["errors"]:
        log(f"ERROR in {e['step']}: {e['error']}")
    if bench.data["skipped"]:
        log(f"skipped (budget): {bench.data['skipped']}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--smoke", action="store_true", help="tiny model, 64 px, 4 steps")
    p.add_argument("--max-batch", type=int, default=None, help="spec max_batch (16; smoke 4)")
    p.add_argument(
        "--batch-sizes", default=None, help="items per call, in order (16,8,5; smoke 4,2,3)"
    )
    p.add_argument("--turbo-batch", type=int, default=None, help="turbo alias batch (32; smoke 4)")
    p.add_argument(
        "--tiny",
        default="tiny-inpaint,tiny-controlnet",
        help="built-in aliases to load compiled and render once ('' for none)",
    )
    p.add_argument("--tiny-max-batch", type=int, default=1, help="their max_batch (buckets)")
    p.add_argument(
        "--warmup-plan",
        choices=("staged", "worker"),
        default="staged",
        help="worker: load_model warms every bucket at start, exactly as a worker;\n"
        "staged: load_model(warm=False), then the same per-bucket warm-up as needed",
    )
    p.add_argument(
        "--fix-mode",
        choices=("auto", "never", "always"),
        default="never",
        help="staged plan: warm a bucket inside torch.inference_mode(), an experiment since\n"
        "run_pipeline renders under no_grad like warm-up (worker/render.py); auto = after a\n"
        "first job was seen to recompile",
    )
    p.add_argument(
        "--no-cpu-compile-probe",
        dest="cpu_compile_probe",
        action="store_false",
        help="smoke on CPU: do not compile with dynamo's eager backend",
    )
    p.add_argument(
        "--cpu-side-only", action="store_true", help="no model: time the CPU work per batch"
    )
    p.add_argument("--extra-warmup", action="store_true", help="one more untimed call")
    p.add_argument(
        "--no-start-figure",
        dest="start_figure",
        action="store_false",
        help="staged plan: do not warm the buckets no step needed (the worker's start time)",
    )
    p.add_argument(
        "--pipeline-batches",
        type=int,
        default=None,
        help="(c) pipelined worker: batches per run (6; smoke 3; 0 skips it)",
    )
    p.add_argument(
        "--pipeline-batch", type=int, default=None, help="(c) jobs per batch (max batch)"
    )
    p.add_argument(
        "--pipeline-depths",
        default="1,3",
        help="(c) render tasks at once, compared in this order (IMGFARM_WORKER_PIPELINE_DEPTH)",
    )
    p.add_argument(
        "--pipeline-rounds", type=int, default=None, help="(c) runs per depth (2; smoke 1)"
    )
    p.add_argument(
        "--pipeline-outputs",
        choices=("photo", "real"),
        default="photo",
        help="(c) store a photo-like image per output (what a real render costs to encode)\n"
        "or the random-weight render itself (noise or flat colour)",
    )
    p.add_argument(
        "--io-threads",
        type=int,
        default=Settings.model_fields["worker_io_threads"].default,
        help="(c) io pool size (IMGFARM_WORKER_IO_THREADS' default)",
    )
    p.add_argument("--source-size", type=int, default=None, help="source photo side (768)")
    p.add_argument("--iters", type=int, default=5, help="most timed calls per path")
    p.add_argument("--min-iters", type=int, default=3, help="fewest timed calls per path")
    p.add_argument("--max-seconds", type=float, default=6.0, help="stop timing a path after")
    p.add_argument("--budget-s", type=float, default=0.0, help="skip steps past this (0: none)")
    p.add_argument("--reserve-s", type=float, default=None, help="start nothing under (60)")
    p.add_argument("--workdir", default="/tmp/imgfarm-worker-path", help="weights, storage")
    p.add_argument("--json", default=None, help="write all figures to this path")
    args = p.parse_args(argv)
    args.device = resolve_device(args.device)
    if args.max_batch is None:
        args.max_batch = 4 if args.smoke else 16
    if args.batch_sizes is None:
        args.batch_sizes = "4,2,3" if args.smoke else "16,8,5"
    args.batch_sizes = [int(x) for x in str(args.batch_sizes).split(",") if x.strip()]
    if args.turbo_batch is None:
        args.turbo_batch = 4 if args.smoke else 32
    args.tiny = [x.strip() for x in args.tiny.split(",") if x.strip()]
    if args.source_size is None:
        args.source_size = 96 if args.smoke else 768
    if args.pipeline_batches is None:
        args.pipeline_batches = 3 if args.smoke else 6
    if args.pipeline_batch is None:
        args.pipeline_batch = args.max_batch
    args.pipeline_depths = [int(x) for x in str(args.pipeline_depths).split(",") if x.strip()]
    if args.pipeline_rounds is None:
        args.pipeline_rounds = 1 if args.smoke else 2
    if args.reserve_s is None:
        args.reserve_s = 0.0 if not args.budget_s else 60.0
    if args.smoke:
        args.iters, args.min_iters, args.max_seconds = 2, 2, 1.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # Random weights in low precision can give NaN pixels; PIL conversion warns, harmlessly.
    warnings.filterwarnings("ignore", message="invalid value encountered in cast")
    # Why each recompile happened goes to the log (dynamo's guard-failure reasons).
    torch._logging.set_logs(recompiles=True)
    bench = cpu_side_only(args) if args.cpu_side_only else run(args)
    bench.lane.shutdown()
    bench.dump()
    print_report(bench)
    return 0 if bench.data["measurements"] or args.cpu_side_only else 1


if __name__ == "__main__":
    sys.exit(main())

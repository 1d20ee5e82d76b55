"""GPU throughput of img2img: plain diffusers against the farm's render path (worker/accel.py).

Full-size SD1.5 with random weights (bench/sd15_config.py), 512x512 img2img:
  sd15   20 steps, strength 0.75, guidance 7.5 -> 15 steps x 2 (CFG) = 30 UNet passes
  turbo   4 steps, strength 0.5,  guidance 0   ->  2 steps, no CFG   =  2 UNet passes
(a) plain StableDiffusionImg2ImgPipeline, fp32, batch 1; (b) the same components through
``optimize_pipeline`` step by step, over several batch sizes, eager then compiled.
Prints images/s, the speedup (b)/(a), achieved TFLOP/s and the fraction of the bf16 peak.
Never passes or fails on time; exits non-zero only when a workload got no figure at all.

``--variants inductor,cudnn_attention`` then compiles the farm path at one batch size with
each variant's one change to ``AccelOptions`` (VARIANTS), and once without any of them
("off", after the first variant), in the same process; each variant is compared with "off"
(CUDA only: on the CPU nothing compiles). ``--only-variants`` measures them alone, for a
short device lease.

    python bench/gpu_throughput.py --device cuda --json out.json --budget-s 390
    python bench/gpu_throughput.py --device cuda --only-variants --variants cudnn_attention
    python bench/gpu_throughput.py --device cpu --smoke     # same code, tiny model, seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.harness import (  # noqa: E402
    Report,
    environment,
    img2img_pipeline,
    log,
    timed_calls,
)
from worker.accel import (  # noqa: E402
    AccelOptions,
    optimize_pipeline,
    resolve_device,
    synchronize,
    warm_up,
)
from worker.pixels import batch_in, images_out, to_pixels  # noqa: E402

# FLOPs at 512² (torch FlopCounter on the public SD1.5 configs, 2 FLOPs per MAC; NOTES.md).
UNET_TFLOP_PER_PASS = 0.803
VAE_ENCODE_TFLOP = 1.117
VAE_DECODE_TFLOP = 2.515
TEXT_TFLOP_PER_PROMPT = 0.013
PROMPT = "a product photo of a red sneaker on a white table, soft studio light"
# Opt-in comparisons (--variants): name -> its change to the compiled farm path. "Off" is
# measured once, after the first of them.
VARIANTS: dict[str, dict[str, Any]] = {
    # Coordinate descent benchmarks each generated kernel's block sizes while compiling.
    "inductor": {"inductor_tuning": True},
    "cudnn_attention": {"attention": "cudnn"},
}
OFF = "off"


@dataclass(frozen=True)
class Workload:
    """One img2img configuration served by the farm."""

    name: str
    steps: int
    strength: float
    guidance_scale: float

    @property
    def cfg(self) -> bool:
        return self.guidance_scale > 1.0

    @property
    def denoising_steps(self) -> int:
        # The pipeline's get_timesteps: int(steps * strength) steps actually run.
        return min(int(self.steps * self.strength), self.steps)

    @property
    def unet_passes(self) -> int:
        return self.denoising_steps * (2 if self.cfg else 1)

    @property
    def tflop_per_image(self) -> float:
        """FLOPs of one 512² image: UNet passes, VAE encode and decode, text encoder."""
        prompts = 2 if self.cfg else 1
        return (
            self.unet_passes * UNET_TFLOP_PER_PASS
            + VAE_ENCODE_TFLOP
            + VAE_DECODE_TFLOP
            + prompts * TEXT_TFLOP_PER_PROMPT
        )


SD15 = Workload("sd15", steps=20, strength=0.75, guidance_scale=7.5)
TURBO = Workload("turbo", steps=4, strength=0.5, guidance_scale=0.0)
# Smoke: the same code with fewer steps (3 and 2 denoising steps).
SD15_SMOKE = Workload("sd15", steps=4, strength=0.75, guidance_scale=7.5)


@dataclass
class Measurement:
    """One timed configuration; ``error`` is set when it could not be measured."""

    workload: str
    variant: str  # "a" (plain diffusers) or "b" (farm path)
    label: str
    batch_size: int
    options: dict[str, Any] = field(default_factory=dict)
    first_call_s: float | None = None
    times_s: list[float] = field(default_factory=list)
    median_s: float | None = None
    images_per_s: float | None = None
    denoising_steps_seen: int | None = None
    tflops: float | None = None
    fraction_of_peak: float | None = None
    peak_mem_gb: float | None = None
    compiled: bool = False
    error: str | None = None


class Bench(Report):
    """The harness's report (bench/harness.py), holding this bench's measurements."""

    def __init__(self, args: argparse.Namespace, env: dict[str, Any]) -> None:
        self.args = args
        self.results: list[Measurement] = []
        super().__init__(
            args.json, budget_s=args.budget_s, summarize=self.figures, env=env, args=vars(args)
        )

    def figures(self, _data: dict[str, Any]) -> dict[str, Any]:
        return {
            "results": [dataclasses.asdict(m) for m in self.results],
            "summary": summarize(self.results, self.args.smoke),
            "variants": {n: variant_comparison(self.results, n) for n in self.args.variants},
        }

    def measure(self, name: str, fn: Callable[[], Measurement], kind: str) -> None:
        """A step whose figure joins the results; ``kind`` sizes the budget check."""
        m = self.step(name, fn, kind)
        if m is not None:
            self.results.append(m)
            log(describe(m))
            self.dump()


def bf16_peak_tflops(device: str) -> float | None:
    """This GPU's practical bf16 ceiling, measured here: the best of ten 8192³ matmuls."""
    if not device.startswith("cuda"):
        return None
    a, b = (torch.randn(8192, 8192, device=device, dtype=torch.bfloat16) for _ in range(2))
    times = timed_calls(lambda: a @ b, iters=13, min_iters=13, max_seconds=0,
                        sync=lambda: synchronize(device))  # fmt: skip
    return round(2 * 8192**3 / min(times[3:]) / 1e12, 1)


def source_image(size: int) -> Any:
    """A noise image: pixels do not change the arithmetic, and noise hides nothing."""
    from PIL import Image

    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def measure(
    pipe: Any,
    wl: Workload,
    *,
    variant: str,
    label: str,
    batch_size: int,
    args: argparse.Namespace,
    opts: AccelOptions | None = None,
    compiled: bool = False,
    first_call_s: float | None = None,
) -> Measurement:
    """Time full pipeline calls, warm-up excluded, median of several: (a) PIL in and out, as
    plain diffusers is called; (b) as the worker calls it, uint8 tensors in (made on its io
    pool, untimed) and 8-bit images out, converted on the device (worker/pixels.py)."""
    device = pipe.device
    image = source_image(args.size)
    kwargs: dict[str, Any] = {
        "prompt": [PROMPT] * batch_size,
        "num_inference_steps": wl.steps,
        "strength": wl.strength,
        "guidance_scale": wl.guidance_scale,
    }
    if variant == "a":
        call = partial(pipe, image=[image] * batch_size, output_type="pil")
    else:
        pixels = [to_pixels(image)] * batch_size

        def call(**kw: Any) -> Any:
            out = pipe(image=batch_in(pixels, device), output_type="pt", **kw)
            return images_out(out.images)

    seen = [0]

    def count_step(_pipe: Any, _i: int, _t: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        seen[0] += 1
        return callback_kwargs

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # Warm-up: the first call pays cuDNN search, allocator growth (and compile if not yet done).
    synchronize(device)
    t = time.perf_counter()
    call(**kwargs, callback_on_step_end=count_step, generator=_generator(device))
    synchronize(device)
    first = time.perf_counter() - t
    for _ in range(args.warmup - 1):
        call(**kwargs, generator=_generator(device))
    synchronize(device)

    times = timed_calls(
        lambda: call(**kwargs, generator=_generator(device)),
        iters=args.iters,
        min_iters=args.min_iters,
        max_seconds=args.max_seconds,
        sync=lambda: synchronize(device),
    )

    median = statistics.median(times)
    ips = batch_size / median
    m = Measurement(
        workload=wl.name,
        variant=variant,
        label=label,
        batch_size=batch_size,
        options=dataclasses.asdict(opts) if opts else {"plain": True},
        first_call_s=round(first_call_s if first_call_s is not None else first, 3),
        times_s=[round(x, 4) for x in times],
        median_s=round(median, 4),
        images_per_s=round(ips, 3),
        denoising_steps_seen=seen[0],
        compiled=compiled,
    )
    if not args.smoke:
        m.tflops = round(ips * wl.tflop_per_image, 1)
        if args.peak_tflops:
            m.fraction_of_peak = round(m.tflops / args.peak_tflops, 4)
    if device.type == "cuda":
        m.peak_mem_gb = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    if seen[0] != wl.denoising_steps:
        log(f"WARNING {wl.name}: {seen[0]} denoising steps ran, {wl.denoising_steps} expected")
    return m


def _generator(device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(0)


def describe(m: Measurement) -> str:
    if m.error:
        return f"  [{m.workload}] ({m.variant}) {m.label} bs={m.batch_size}: ERROR {m.error}"
    extra = f", {m.tflops} TFLOP/s" if m.tflops is not None else ""
    mem = f", peak {m.peak_mem_gb} GB" if m.peak_mem_gb is not None else ""
    return (
        f"  [{m.workload}] ({m.variant}) {m.label} bs={m.batch_size}: "
        f"{m.images_per_s} images/s (median {1000 * (m.median_s or 0.0):.1f} ms/call over "
        f"{len(m.times_s)}, first call {m.first_call_s} s{extra}{mem})"
    )


def summarize(results: list[Measurement], smoke: bool) -> dict[str, Any]:
    """Per workload: (a), the best (b), the ratio, TFLOP/s and fraction of peak."""
    out: dict[str, Any] = {}
    for name in dict.fromkeys(m.workload for m in results if m.workload != "?"):
        ok = [m for m in results if m.workload == name and m.error is None]
        a = next((m for m in ok if m.variant == "a"), None)
        bs = [m for m in ok if m.variant == "b"]
        b = max(bs, key=lambda m: m.images_per_s or 0.0) if bs else None
        entry: dict[str, Any] = {
            "a_images_per_s": a.images_per_s if a else None,
            "b_images_per_s": b.images_per_s if b else None,
            "b_label": b.label if b else None,
            "b_batch_size": b.batch_size if b else None,
        }
        if a and b and a.images_per_s and b.images_per_s:
            entry["speedup"] = round(b.images_per_s / a.images_per_s, 2)
        if b and not smoke:
            entry["b_tflops"] = b.tflops
            entry["b_fraction_of_peak"] = b.fraction_of_peak
        out[name] = entry
    return out


def print_summary(
    results: list[Measurement], workloads: list[Workload], smoke: bool, peak: float | None
) -> None:
    summary = summarize(results, smoke)
    log("\n== all measurements ==")
    for m in results:
        log(describe(m))
    log("\n== summary ==")
    for wl in workloads:
        s = summary.get(wl.name, {})
        flops = "" if smoke else f", {wl.tflop_per_image:.2f} TFLOP/image at 512²"
        log(
            f"[{wl.name}] {wl.steps} steps, strength {wl.strength}, guidance {wl.guidance_scale}: "
            f"{wl.unet_passes} UNet passes{flops}"
        )
        if s.get("a_images_per_s"):
            log(f"[{wl.name}] (a) plain diffusers fp32 bs=1: {s['a_images_per_s']} images/s")
        if s.get("b_images_per_s"):
            log(
                f"[{wl.name}] (b) farm path {s['b_label']} bs={s['b_batch_size']}: "
                f"{s['b_images_per_s']} images/s"
            )
        if s.get("speedup"):
            log(f"[{wl.name}] speedup (b)/(a): {s['speedup']}x")
        if smoke:
            log(f"[{wl.name}] TFLOP/s: n/a (tiny smoke model)")
        elif s.get("b_fraction_of_peak") is not None:
            log(
                f"[{wl.name}] (b) achieved {s['b_tflops']} TFLOP/s = "
                f"{100 * s['b_fraction_of_peak']:.1f}% of {peak} TFLOP/s (bf16 matmul, this GPU)"
            )
    for name in VARIANTS:
        c = variant_comparison(results, name)
        if c:
            log(
                f"[sd15] variant {name} bs={c['batch_size']}: on {c['on_images_per_s']} images/s"
                f" (warm-up {c['on_warmup_s']} s), off {c['off_images_per_s']} images/s"
                f" (warm-up {c['off_warmup_s']} s): on/off {c['on_over_off']}x"
            )


def parse_batch_sizes(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--smoke", action="store_true", help="tiny model, 64x64, a few steps")
    p.add_argument("--dtype", default=None, help="farm path dtype (default bfloat16 on CUDA)")
    p.add_argument("--size", type=int, default=None, help="image side (512; smoke 64)")
    p.add_argument("--batch-sizes", default=None, help="sd15 batch sizes (1,4,8,16)")
    p.add_argument("--turbo-batch-sizes", default=None, help="turbo batch sizes (4,8,16,32)")
    p.add_argument("--ladder-batch", type=int, default=None, help="batch for the ablation (8)")
    p.add_argument(
        "--compile-batch-sizes",
        default=None,
        help="sd15 batch sizes to compile for (8,16); turbo uses twice these, so its UNet\n"
        "batch matches sd15's CFG batch and reuses the compiled graph",
    )
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile steps")
    p.add_argument("--autotune", action="store_true", help="also try max-autotune-no-cudagraphs")
    p.add_argument(
        "--variants",
        default="",
        help="same-run comparisons after the plan, comma-separated (none by default): the\n"
        "farm path compiled with one change each, then without: inductor = AccelOptions.\n"
        "inductor_tuning, cudnn_attention = AccelOptions.attention 'cudnn'",
    )
    p.add_argument("--variant-batch", type=int, default=None, help="sd15 batch for them (16)")
    p.add_argument(
        "--only-variants",
        action="store_true",
        help="skip (a), the eager steps and the compile plan: measure the variants alone",
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    p.add_argument("--iters", type=int, default=5, help="most timed calls per configuration")
    p.add_argument("--min-iters", type=int, default=3, help="fewest timed calls")
    p.add_argument("--max-seconds", type=float, default=6.0, help="stop timing after this")
    p.add_argument("--budget-s", type=float, default=0.0, help="skip steps past this (0: none)")
    p.add_argument("--json", default=None, help="write all figures to this path")
    args = p.parse_args(argv)
    args.device = resolve_device(args.device)
    cuda = args.device.startswith("cuda")
    if args.dtype is None:
        args.dtype = "bfloat16" if cuda else "float32"
    if args.size is None:
        args.size = 64 if args.smoke else 512
    if args.batch_sizes is None:
        args.batch_sizes = "1,2,4" if args.smoke else "1,4,8,16"
    if args.turbo_batch_sizes is None:
        args.turbo_batch_sizes = "2,4" if args.smoke else "4,8,16,32"
    if args.ladder_batch is None:
        args.ladder_batch = 2 if args.smoke else 8
    if args.compile_batch_sizes is None:
        args.compile_batch_sizes = "2" if args.smoke else "8,16"
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        p.error(f"--variants: unknown {unknown}; known: {', '.join(VARIANTS)}")
    if args.variant_batch is None:
        args.variant_batch = max(parse_batch_sizes(args.compile_batch_sizes))
    if args.smoke:
        args.iters, args.min_iters, args.max_seconds = 2, 2, 2.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Random weights in low precision can yield NaN pixels; PIL conversion warns, harmlessly.
    warnings.filterwarnings("ignore", message="invalid value encountered in cast")
    device = args.device
    log("== environment ==")
    env = environment(device)
    args.peak_tflops = None if args.smoke else bf16_peak_tflops(device)
    log(f"  bf16 matmul peak: {args.peak_tflops} TFLOP/s")
    sd15 = SD15_SMOKE if args.smoke else SD15
    workloads = [sd15, TURBO]
    bench = Bench(args, env)

    t = time.perf_counter()
    pipe = img2img_pipeline(device, args.smoke)
    synchronize(device)
    what = "tiny" if args.smoke else "full-size SD1.5"
    log(f"built {what} pipeline in {time.perf_counter() - t:.1f} s")

    dt = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[args.dtype]
    base = AccelOptions(
        device=device,
        dtype=args.dtype,
        channels_last=False,
        fuse_qkv=False,
        cudnn_benchmark=False,
        compile=False,
    )
    ladder = [
        (f"{dt}+sdpa", base),
        (f"{dt}+sdpa+cudnn.benchmark", dataclasses.replace(base, cudnn_benchmark=True)),
        (
            f"{dt}+sdpa+cudnn.benchmark+channels_last",
            dataclasses.replace(base, cudnn_benchmark=True, channels_last=True),
        ),
        (
            f"{dt}+sdpa+cudnn.benchmark+channels_last+fused_qkv",
            dataclasses.replace(base, cudnn_benchmark=True, channels_last=True, fuse_qkv=True),
        ),
    ]
    eager_label, eager = ladder[-1]
    compiles = not args.no_compile and device.startswith("cuda")

    if args.only_variants:
        log("\n== (a), the eager steps and the compile plan skipped (--only-variants) ==")
    else:
        _default_steps(bench, pipe, workloads, sd15, ladder, compiles, args)

    if args.variants:
        log(f"\n== variants: {', '.join(args.variants)} (sd15 bs={args.variant_batch}) ==")
    if args.variants:
        if compiles:
            _variants(bench, pipe, sd15, eager, eager_label, args)
        else:
            # Nothing compiles on the CPU (or with --no-compile); the attention order is a
            # CUDA flag: the variants have no effect there.
            log("  variants skipped: they need torch.compile on CUDA")
            bench.data["skipped"].append(
                f"variants {', '.join(args.variants)} (need torch.compile on CUDA)"
            )

    print_summary(bench.results, workloads, args.smoke, args.peak_tflops)
    bench.dump()
    if args.only_variants:
        return 0 if bench.results or not compiles else 1
    summary = summarize(bench.results, args.smoke)
    missing = [
        w.name
        for w in workloads
        if not all(summary.get(w.name, {}).get(k) for k in ("a_images_per_s", "b_images_per_s"))
    ]
    if missing:
        log(f"no (a)/(b) figure for: {', '.join(missing)}")
        return 1
    return 0


def _default_steps(
    bench: Bench,
    pipe: Any,
    workloads: list[Workload],
    sd15: Workload,
    ladder: list[tuple[str, AccelOptions]],
    compiles: bool,
    args: argparse.Namespace,
) -> None:
    """(a) plain diffusers, then (b) the farm path: eager ladder, batch sweep, compile plan."""
    # (a) plain diffusers, fp32, batch 1, default everything: measured first, before any
    # process-wide flag (TF32, cudnn.benchmark) is touched.
    log("\n== (a) plain diffusers fp32 bs=1 ==")
    for wl in workloads:
        plain = partial(measure, pipe, wl, variant="a", label="plain fp32", batch_size=1, args=args)
        bench.measure(f"{wl.name} (a)", plain, "plain")

    # (b) the farm's render path, one step at a time at the ladder batch size.
    log(f"\n== (b) farm path, eager, one optimization at a time (bs={args.ladder_batch}) ==")
    for label, opts in ladder:
        bench.measure(
            label, partial(_eager, pipe, sd15, label, opts, args.ladder_batch, args), "eager"
        )
    eager_label, eager = ladder[-1]

    log("\n== (b) farm path, eager, batch sweep ==")
    for bs in parse_batch_sizes(args.batch_sizes):
        if bs != args.ladder_batch:
            eager_bs = partial(_eager, pipe, sd15, eager_label, eager, bs, args)
            bench.measure(f"sd15 eager bs={bs}", eager_bs, "eager")
    for bs in parse_batch_sizes(args.turbo_batch_sizes):
        turbo = partial(_eager, pipe, TURBO, eager_label, eager, bs, args)
        bench.measure(f"turbo eager bs={bs}", turbo, "eager")

    if not compiles:
        log("\n== compile steps skipped (CPU or --no-compile) ==")
    else:
        _compiled_steps(bench, pipe, sd15, eager, eager_label, args)


def _eager(
    pipe: Any, wl: Workload, label: str, opts: AccelOptions, bs: int, args: argparse.Namespace
) -> Measurement:
    optimize_pipeline(pipe, opts)
    return measure(pipe, wl, variant="b", label=label, batch_size=bs, args=args, opts=opts)


def _compiled(
    pipe: Any, wl: Workload, label: str, opts: AccelOptions, bs: int, args: argparse.Namespace
) -> Measurement:
    """Compile (lazily), warm up at this shape with eager fallback, then time."""
    optimize_pipeline(pipe, opts)
    res = warm_up(
        pipe,
        width=args.size,
        height=args.size,
        steps=wl.steps,
        batch_size=bs,
        strength=wl.strength,
        guidance_scale=wl.guidance_scale,
        runs=1,
    )
    log(f"  warm-up {label} bs={bs}: {res.seconds:.1f} s, compiled={res.compiled}")
    m = measure(
        pipe,
        wl,
        variant="b",
        label=label,
        batch_size=bs,
        args=args,
        opts=opts,
        compiled=res.compiled,
        first_call_s=res.seconds,
    )
    if res.compile_error:
        m.label += " (compile FAILED, eager fallback)"
        m.error = None
        m.options["compile_error"] = res.compile_error
    return m


def _compiled_steps(
    bench: Bench,
    pipe: Any,
    sd15: Workload,
    eager: AccelOptions,
    eager_label: str,
    args: argparse.Namespace,
) -> None:
    # Order: what answers most first, each guarded by the time it is likely to take
    # (first UNet compile ~1-2 min; a new batch size recompiles; a shape seen before is cached).
    c_unet = dataclasses.replace(eager, compile=True)
    c_all = dataclasses.replace(eager, compile=True, compile_vae=True)
    l_unet = f"{eager_label}+compile(unet)"
    l_all = f"{eager_label}+compile(unet,vae)"
    sizes = parse_batch_sizes(args.compile_batch_sizes)
    log(f"\n== (b) farm path, torch.compile (sd15 bs {sizes}, turbo at twice that) ==")
    first = sizes[0]
    plan: list[tuple[Workload, str, AccelOptions, int]] = [
        (sd15, l_unet, c_unet, first),
        (TURBO, l_unet, c_unet, 2 * first),
        (sd15, l_all, c_all, first),
        (TURBO, l_all, c_all, 2 * first),
    ]
    for bs in sizes[1:]:
        plan += [(sd15, l_all, c_all, bs), (TURBO, l_all, c_all, 2 * bs)]
    if args.autotune:
        c_tune = dataclasses.replace(c_all, compile_mode="max-autotune-no-cudagraphs")
        l_tune = f"{eager_label}+compile(unet,vae,max-autotune-no-cudagraphs)"
        plan.append((sd15, l_tune, c_tune, first))
    for wl, label, opts, bs in plan:
        compiled = partial(_compiled, pipe, wl, label, opts, bs, args)
        bench.measure(f"{wl.name} {label} bs={bs}", compiled, "compile")


def _variants(
    bench: Bench,
    pipe: Any,
    sd15: Workload,
    eager: AccelOptions,
    eager_label: str,
    args: argparse.Namespace,
) -> None:
    """The farm path (UNet and VAE compiled) with each of ``args.variants``' changes, and
    without any ("off"), at one batch size in this process. Order: the first variant (the
    unknown), then off, then the others, so a lease that ends early still has one pair."""
    off = dataclasses.replace(eager, compile=True, compile_vae=True)
    label = f"{eager_label}+compile(unet,vae)"
    bs = args.variant_batch
    runs = [(name, VARIANTS[name]) for name in args.variants]
    runs.insert(1, (OFF, {}))
    for name, change in runs:
        opts = dataclasses.replace(off, **change)
        tag = "".join(f"+{k}={v}" for k, v in change.items())
        run = partial(_as_variant, name, _compiled, pipe, sd15, label + tag, opts, bs, args)
        bench.measure(f"sd15 {label}{tag} bs={bs} (variant {name})", run, "compile")


def _as_variant(name: str, fn: Callable[..., Measurement], *args: Any) -> Measurement:
    m = fn(*args)
    m.options["variant"] = name
    return m


def variant_comparison(results: list[Measurement], name: str) -> dict[str, Any] | None:
    """A variant's last figure against the last "off" one, once both were measured."""

    def last(variant: str) -> Measurement | None:
        ok = [m for m in results if m.options.get("variant") == variant and m.error is None]
        return ok[-1] if ok and ok[-1].images_per_s else None

    on, off = last(name), last(OFF)
    if on is None or off is None or not (on.images_per_s and off.images_per_s):
        return None
    return {
        "batch_size": on.batch_size,
        "on_images_per_s": on.images_per_s,
        "off_images_per_s": off.images_per_s,
        "on_over_off": round(on.images_per_s / off.images_per_s, 3),
        # Warm-up = compile + first call; a later compile may reuse an earlier one's kernels.
        "on_warmup_s": on.first_call_s,
        "off_warmup_s": off.first_call_s,
        "on_compiled": on.compiled,
        "off_compiled": off.compiled,
    }


if __name__ == "__main__":
    sys.exit(main())

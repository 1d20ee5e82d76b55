"""GPU throughput of img2img: plain diffusers against the farm's render path (worker/accel.py).

Full-size SD1.5 with random weights, 512² img2img, 20 steps, strength 0.75, guidance 7.5:
the README's figure. The steps: plain (diffusers as shipped: fp32, batch 1, PIL in and out);
eager (``optimize_pipeline`` with the worker's ``AccelOptions.best_for`` minus compile, at
``--batch-size``, called as the worker calls it); off (the same compiled: what a CUDA worker
serves); then each of ``--variants`` (its one change to off, VARIANTS) against off.
``--only-variants``: the first variant, off, the others (a short lease still gets a pair).
Nothing compiles on the CPU: off and the variants are skipped there, and say so.

    python bench/gpu_throughput.py --device cuda --json out.json
    python bench/gpu_throughput.py --device cuda --only-variants --variants cudnn_attention
    python bench/gpu_throughput.py --device cpu --smoke     # same code, tiny model, seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bench import harness as h  # noqa: E402
from worker.accel import (  # noqa: E402
    AccelOptions,
    optimize_pipeline,
    resolve_device,
    synchronize,
    warm_up,
)
from worker.pixels import batch_in, images_out, to_pixels  # noqa: E402

PROMPT = "a product photo of a red sneaker on a white table, soft studio light"
PLAIN, EAGER, OFF = "plain", "eager", "off"
# Opt-in comparisons (--variants): name -> its one change to the compiled farm path ("off").
VARIANTS: dict[str, dict[str, Any]] = {
    # Coordinate descent benchmarks each generated kernel's block sizes while compiling.
    "inductor": {"inductor_tuning": True},
    "cudnn_attention": {"attention": "cudnn"},
}


@dataclass
class Measurement:
    """One timed step: ``step`` is plain, eager, off or a variant's name."""

    step: str
    batch_size: int
    options: dict[str, Any]
    first_call_s: float  # warm-up (compile included) + first call
    times_s: list[float] = field(default_factory=list)
    images_per_s: float = 0.0
    denoising_steps_seen: int = 0
    peak_mem_gb: float | None = None
    compiled: bool = False
    compile_error: str | None = None


def plan(args: argparse.Namespace, served: AccelOptions) -> list[tuple[str, AccelOptions | None]]:
    """The steps, in order, with the options each renders with (None: plain diffusers);
    ``served`` is what a worker on this device uses (``AccelOptions.best_for``)."""
    eager = dataclasses.replace(served, compile=False, compile_vae=False)
    off = dataclasses.replace(eager, compile=True, compile_vae=True)
    variants = [(name, dataclasses.replace(off, **VARIANTS[name])) for name in args.variants]
    if not args.device.startswith("cuda"):
        return [] if args.only_variants else [(PLAIN, None), (EAGER, eager)]
    if args.only_variants:
        return [*variants[:1], (OFF, off), *variants[1:]]
    # Plain first, before optimize_pipeline touches any process-wide flag (TF32, cudnn).
    return [(PLAIN, None), (EAGER, eager), (OFF, off), *variants]


def measure(
    pipe: Any, step: str, opts: AccelOptions | None, args: argparse.Namespace
) -> Measurement:
    """Warm up (compiling if ``opts`` asks), then the median of several timed calls."""
    bs, device = 1 if opts is None else args.batch_size, pipe.device
    # A noise image: pixels do not change the arithmetic, and noise hides nothing.
    noise = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    image = Image.fromarray(noise)
    pixels = [to_pixels(image)] * bs
    if opts is not None:
        optimize_pipeline(pipe, opts)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warm = warm_up(
        pipe,
        width=args.size,
        height=args.size,
        steps=args.steps,
        batch_size=bs,
        strength=h.SD15_STRENGTH,
        guidance_scale=h.SD15_GUIDANCE,
        runs=1,
    )
    seen = [0]

    def count_step(_pipe: Any, _i: int, _t: Any, callback_kwargs: dict[str, Any]) -> Any:
        seen[0] += 1
        return callback_kwargs

    def call() -> Any:
        plain = opts is None  # PIL in and out; the farm: uint8 tensors, as the worker calls
        out = pipe(
            image=[image] * bs if plain else batch_in(pixels, device),
            output_type="pil" if plain else "pt",
            prompt=[PROMPT] * bs,
            num_inference_steps=args.steps,
            strength=h.SD15_STRENGTH,
            guidance_scale=h.SD15_GUIDANCE,
            callback_on_step_end=count_step,
            generator=torch.Generator(device=device).manual_seed(0),
        )
        return out if plain else images_out(out.images)

    # One timed call a step in the smoke: it proves the figures exist, not their spread.
    times = h.timed_calls(call, lambda: synchronize(device), iters=1 if args.smoke else 5)
    cuda = device.type == "cuda"
    m = Measurement(
        step=step,
        batch_size=bs,
        options=dataclasses.asdict(opts) if opts else {"plain": True},
        first_call_s=round(warm.seconds, 3),
        times_s=[round(t, 4) for t in times],
        images_per_s=round(bs / statistics.median(times), 3),
        denoising_steps_seen=seen[0] // len(times),
        peak_mem_gb=round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if cuda else None,
        compiled=warm.compiled,
        compile_error=warm.compile_error,
    )
    h.log(
        f"  [{step}] bs={bs}: {m.images_per_s} images/s (median of {len(times)}, warm-up "
        f"{m.first_call_s} s, compiled {m.compiled}, peak {m.peak_mem_gb} GB)"
    )
    expected = min(int(args.steps * h.SD15_STRENGTH), args.steps)  # the pipeline's get_timesteps
    if m.denoising_steps_seen != expected:
        h.log(f"WARNING: {m.denoising_steps_seen} denoising steps ran, {expected} expected")
    return m


def summarize(results: list[Measurement]) -> dict[str, Any]:
    """Plain against the best farm step (the keys bench/results/ and overhead.py --model gpu-sim
    read), and each variant against off."""
    by_step = {m.step: m for m in results}
    a = by_step.get(PLAIN)
    b = max((m for m in results if m.step != PLAIN), key=lambda m: m.images_per_s, default=None)
    sd15: dict[str, Any] = {
        "a_images_per_s": a.images_per_s if a else None,
        "b_images_per_s": b.images_per_s if b else None,
        "b_step": b.step if b else None,
        "b_batch_size": b.batch_size if b else None,
    }
    if a and b:
        sd15["speedup"] = round(b.images_per_s / a.images_per_s, 2)
    return {"summary": {"sd15": sd15}, "variants": variant_pairs(by_step)}


def variant_pairs(by_step: dict[str, Measurement]) -> dict[str, Any]:
    """Each measured variant against off, once both have a figure. Warm-up = compile + first
    call; a later compile may reuse earlier kernels."""
    off = by_step.get(OFF)
    pairs: dict[str, Any] = dict.fromkeys(VARIANTS)
    for name in VARIANTS:
        if (on := by_step.get(name)) is not None and off is not None:
            pairs[name] = {
                "batch_size": on.batch_size,
                "on_images_per_s": on.images_per_s,
                "off_images_per_s": off.images_per_s,
                "on_over_off": round(on.images_per_s / off.images_per_s, 3),
                "on_warmup_s": on.first_call_s,
                "off_warmup_s": off.first_call_s,
                "on_compiled": on.compiled,
                "off_compiled": off.compiled,
            }
    return pairs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = h.parser(__doc__, model=True)
    p.add_argument("--batch-size", type=int, help="the farm steps' batch (16; smoke 2)")
    p.add_argument("--variants", default="", help=f"comma-separated, of: {', '.join(VARIANTS)}")
    p.add_argument("--only-variants", action="store_true", help="skip plain and eager")
    args = p.parse_args(argv)
    args.device = resolve_device(args.device)
    args.size, args.steps = (64, 4) if args.smoke else (512, 20)
    args.batch_size = args.batch_size or (2 if args.smoke else 16)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := sorted(set(args.variants) - set(VARIANTS)):
        p.error(f"--variants: unknown {unknown}; known: {', '.join(VARIANTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Random weights in low precision can yield NaN pixels; PIL conversion warns, harmlessly.
    warnings.filterwarnings("ignore", message="invalid value encountered in cast")
    results: list[Measurement] = []
    report = h.Report(
        args.json,
        summarize=lambda _: {
            "results": [dataclasses.asdict(m) for m in results],
            **summarize(results),
        },
        env=h.environment(args.device),
        args=vars(args),
    )
    steps = plan(args, AccelOptions.best_for(args.device))
    if not args.device.startswith("cuda"):
        report.data["skipped"].append("off and the variants: torch.compile needs CUDA")
    build = partial(h.img2img_pipeline, args.device, args.smoke)
    pipe = report.step("build the pipeline", build) if steps else None  # none: nothing to time
    for name, opts in steps if pipe is not None else []:
        if (m := report.step(name, partial(measure, pipe, name, opts, args))) is not None:
            results.append(m)
    report.finish("gpu_throughput")
    return 0 if len(results) == len(steps) else 1


if __name__ == "__main__":
    sys.exit(main())

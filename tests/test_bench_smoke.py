"""The GPU throughput benchmark runs end to end on the CPU with the tiny model (--smoke)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_throughput_smoke_reports_plain_against_the_farm_path(tmp_path: Path) -> None:
    json_path = tmp_path / "smoke.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_throughput.py"), "--device", "cpu",
         "--smoke", "--variants", "inductor,cudnn_attention", "--json", str(json_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(json_path.read_text())
    plain, eager = data["results"]
    assert (plain["step"], plain["batch_size"]) == ("plain", 1)
    assert (eager["step"], eager["batch_size"]) == ("eager", 2)
    # 4 steps at strength 0.75: the pipeline runs 3, in every timed call
    assert plain["denoising_steps_seen"] == eager["denoising_steps_seen"] == 3
    summary = data["summary"]["sd15"]
    assert summary["a_images_per_s"] == plain["images_per_s"] > 0
    assert summary["b_images_per_s"] == eager["images_per_s"] > 0 and summary["speedup"] > 0
    # Nothing compiles on the CPU: off and the variants are skipped, and say so.
    assert data["variants"] == {"inductor": None, "cudnn_attention": None}
    assert data["skipped"] == ["off and the variants: torch.compile needs CUDA"]
    assert "== gpu_throughput summary" in proc.stdout and "speedup" in proc.stdout


def test_plan_compares_each_variant_with_off_in_one_process() -> None:
    """Plain first (before any process-wide flag), then eager, off, each variant with its
    one change to off; --only-variants puts off second, so a short lease gets one pair."""
    from bench import gpu_throughput as gt

    args = gt.parse_args(["--device", "cpu", "--smoke", "--variants", "cudnn_attention,inductor"])
    args.device = "cuda"  # plan only builds options: nothing runs
    served = gt.AccelOptions(device="cuda", compile=True, compile_vae=True)
    steps = gt.plan(args, served)
    assert [name for name, _ in steps] == ["plain", "eager", "off", "cudnn_attention", "inductor"]
    opts = dict(steps)
    assert opts["plain"] is None and not opts["eager"].compile and opts["off"] == served
    for name, change in gt.VARIANTS.items():
        assert opts[name] == dataclasses.replace(served, **change)
    args.only_variants = True
    assert [name for name, _ in gt.plan(args, served)] == ["cudnn_attention", "off", "inductor"]

    def measured(step: str, rate: float, warm: float) -> gt.Measurement:
        return gt.Measurement(step, 16, {}, first_call_s=warm, images_per_s=rate, compiled=True)

    by_step = {m.step: m for m in (measured("off", 1.6, 3.0), measured("inductor", 2.0, 9.0))}
    assert gt.variant_pairs(by_step) == {
        "inductor": {
            "batch_size": 16,
            "on_images_per_s": 2.0,
            "off_images_per_s": 1.6,
            "on_over_off": 1.25,
            "on_warmup_s": 9.0,
            "off_warmup_s": 3.0,
            "on_compiled": True,
            "off_compiled": True,
        },
        "cudnn_attention": None,
    }


def test_sd15_components_have_sd15s_parameter_counts() -> None:
    """The harness writes out only where SD1.5's configs differ from the libraries' defaults:
    if a default moved, the counts (the public checkpoint's) would no longer match."""
    from bench.harness import build_sd15_components

    parts = build_sd15_components("meta")  # shapes only: no memory, no initialisation cost
    counts = {
        k: sum(p.numel() for p in parts[k].parameters()) for k in ("unet", "vae", "text_encoder")
    }
    assert counts == {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}

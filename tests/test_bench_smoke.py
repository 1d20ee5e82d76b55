"""The GPU throughput benchmark runs end to end on the CPU with the tiny model (--smoke)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUMMARY_LINE = re.compile(r"^\[(\w+)\] \(([ab])\) .*?: ([0-9.]+) images/s$", re.MULTILINE)


def test_gpu_throughput_smoke_prints_images_per_second(tmp_path: Path) -> None:
    json_path = tmp_path / "smoke.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "gpu_throughput.py"),
            "--device",
            "cpu",
            "--smoke",
            "--variants",
            "inductor,cudnn_attention",
            "--json",
            str(json_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    figures = {(w, v): float(x) for w, v, x in SUMMARY_LINE.findall(proc.stdout)}
    for key in [("sd15", "a"), ("sd15", "b"), ("turbo", "a"), ("turbo", "b")]:
        assert key in figures, f"no images/s line for {key}:\n{proc.stdout[-3000:]}"
        assert figures[key] > 0
    assert re.search(r"\[sd15\] speedup \(b\)/\(a\): [0-9.]+x", proc.stdout)

    data = json.loads(json_path.read_text())
    summary = data["summary"]
    assert summary["sd15"]["a_images_per_s"] == figures[("sd15", "a")]
    assert summary["turbo"]["b_images_per_s"] == figures[("turbo", "b")]
    # Nothing compiles on the CPU: the variants are skipped, and say so.
    assert data["variants"] == {"inductor": None, "cudnn_attention": None}
    assert data["skipped"] == ["variants inductor, cudnn_attention (need torch.compile on CUDA)"]


def test_variants_each_change_one_option_and_compare_with_off(monkeypatch):
    """Each variant compiles the farm path with its one change, "off" compiles it without
    (second, so a short lease still gets a pair), in one process; each pairs with "off".
    The compile itself (CUDA only) is stubbed."""
    import dataclasses

    from bench import gpu_throughput as gt

    args = gt.parse_args(["--device", "cpu", "--smoke", "--variants", "cudnn_attention,inductor"])
    bench = gt.Bench(args, env={})
    calls: list[tuple[str, bool, str]] = []
    rates = {"cudnn_attention": 1.8, "inductor": 2.0, "off": 1.6}

    def fake_compiled(pipe, wl, label, opts, bs, args) -> gt.Measurement:
        calls.append((label, opts.inductor_tuning, opts.attention))
        assert opts.compile and opts.compile_vae and bs == args.variant_batch
        name = (
            "inductor"
            if opts.inductor_tuning
            else ("cudnn_attention" if opts.attention == "cudnn" else "off")
        )
        return gt.Measurement(
            workload=wl.name,
            variant="b",
            label=label,
            batch_size=bs,
            options=dataclasses.asdict(opts),
            images_per_s=rates[name],
            first_call_s=9.0 if name == "inductor" else 3.0,
            compiled=True,
        )

    monkeypatch.setattr(gt, "_compiled", fake_compiled)
    eager = gt.AccelOptions(device="cpu", dtype="float32")
    gt._variants(bench, None, gt.SD15_SMOKE, eager, "fp32", args)
    assert calls == [
        ("fp32+compile(unet,vae)+attention=cudnn", False, "cudnn"),
        ("fp32+compile(unet,vae)", False, "default"),
        ("fp32+compile(unet,vae)+inductor_tuning=True", True, "default"),
    ]
    assert gt.variant_comparison(bench.results, "inductor") == {
        "batch_size": 2,
        "on_images_per_s": 2.0,
        "off_images_per_s": 1.6,
        "on_over_off": 1.25,
        "on_warmup_s": 9.0,
        "off_warmup_s": 3.0,
        "on_compiled": True,
        "off_compiled": True,
    }
    assert gt.variant_comparison(bench.results, "cudnn_attention")["on_over_off"] == 1.125

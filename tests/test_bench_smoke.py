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
            "inductor",
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
    # Nothing compiles on the CPU: the inductor variant is skipped, and says so.
    assert data["variants"] == {"inductor": None}
    assert data["skipped"] == ["inductor variant (needs torch.compile on CUDA)"]


def test_inductor_variant_measures_tuning_on_then_off(monkeypatch):
    """The variant compiles the farm path twice in one process, tuning on first, and pairs
    the two figures; the compile itself (CUDA only) is stubbed out here."""
    import dataclasses

    from bench import gpu_throughput as gt

    args = gt.parse_args(["--device", "cpu", "--smoke", "--variants", "inductor"])
    bench = gt.Bench(args, env={})
    calls: list[tuple[str, bool]] = []

    def fake_compiled(pipe, wl, label, opts, bs, args) -> gt.Measurement:
        calls.append((label, opts.inductor_tuning))
        assert opts.compile and opts.compile_vae and bs == args.variant_batch
        ips = 2.0 if opts.inductor_tuning else 1.6
        return gt.Measurement(
            workload=wl.name,
            variant="b",
            label=label,
            batch_size=bs,
            options=dataclasses.asdict(opts),
            images_per_s=ips,
            first_call_s=9.0 if opts.inductor_tuning else 3.0,
            compiled=True,
        )

    monkeypatch.setattr(gt, "_compiled", fake_compiled)
    eager = gt.AccelOptions(device="cpu", dtype="float32")
    gt._inductor_variant(bench, None, gt.SD15_SMOKE, eager, "fp32", args)
    assert calls == [
        ("fp32+compile(unet,vae)+inductor_tuning", True),
        ("fp32+compile(unet,vae)", False),
    ]
    assert gt.inductor_comparison(bench.results) == {
        "batch_size": 2,
        "on_images_per_s": 2.0,
        "off_images_per_s": 1.6,
        "on_over_off": 1.25,
        "on_warmup_s": 9.0,
        "off_warmup_s": 3.0,
        "on_compiled": True,
        "off_compiled": True,
    }

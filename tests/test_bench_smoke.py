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

    summary = json.loads(json_path.read_text())["summary"]
    assert summary["sd15"]["a_images_per_s"] == figures[("sd15", "a")]
    assert summary["turbo"]["b_images_per_s"] == figures[("turbo", "b")]

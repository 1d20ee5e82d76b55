"""The pipeline overlap benchmark runs end to end at a small size and writes its figures.

Only that the figures exist and are sane: never a speed, which depends on the machine.
(--in-process runs in tests/test_bench_gpu_session_smoke.py, as the GPU session runs it.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.integration


def test_pipeline_bench_reports_rate_and_duty_cycle_per_depth(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "pipeline_overlap.py"), "--smoke", "--jobs", "16",
         "--warmup-jobs", "16", "--json", out],
        cwd=ROOT, capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert [r["depth"] for r in figures["runs"]] == [1, 3]  # one round of each depth
    for run in figures["runs"]:
        # every job rendered, recorded and has its output object in storage
        assert run["statuses"] == {"succeeded": 16} and run["missing_outputs"] == 0, run
        assert run["ideal_images_per_second"] == pytest.approx(1 / 0.02), run
        # the device lane was busy at least for the stand-in's sleeps, never more than wall
        assert run["device_busy_seconds"] >= 0.02 * 16 * 0.9, run
        assert 0 < run["duty_cycle"] <= 1.05 and run["images_per_second"] > 0, run
    summary = figures["summary"]
    assert summary["depth 3"]["duty_cycle"] == figures["runs"][1]["duty_cycle"]
    assert summary["ratios vs depth 1"].keys() == {"3"} and summary["ratios vs depth 1"]["3"] > 0
    assert summary["jobs"] == {"failed": 0, "unfinished": 0, "missing_outputs": 0}
    assert "== pipeline_overlap summary" in proc.stdout and "ratios vs depth 1" in proc.stdout

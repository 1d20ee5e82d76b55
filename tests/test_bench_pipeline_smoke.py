"""bench/overhead.py --model gpu-sim runs end to end at a small size and reports the GPU
stand-in's images/s and duty cycle at pipeline depth 1 against 3.

Only that the figures exist and are sane: never a speed, which depends on the machine.
(bench/pipeline_overlap.py runs in tests/test_bench_gpu_session_smoke.py, as the GPU
session runs it.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.integration


def test_gpu_sim_reports_rate_and_duty_cycle_per_depth(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    env = {**os.environ, "IMGFARM_WORKER_PIPELINE_DEPTH": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "overhead.py"), "--model", "gpu-sim",
         "--sim-seconds-per-image", "0.02", "--jobs", "16", "--latency-jobs", "1",
         "--compare-env", "IMGFARM_WORKER_PIPELINE_DEPTH=3", "--storage", "file", "--json", out],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(out.read_text())["summary"]
    # every job rendered, recorded and has its output object in storage
    assert summary["done"] == {"raw Celery": 16, "farm": 16, "farm B": 16}, summary
    assert summary["missing_outputs"] == 0, summary
    # the device lane was busy at least for the stand-in's sleeps (0.02 s x 16 images), so
    # the duty cycle is above 0 and (never more than wall time) at most about 1
    for name in ("farm", "farm B"):
        assert 0.02 * 16 * 0.9 / 16 * summary["jobs_per_s"][name] <= summary["duty_cycle"][name]
        assert summary["duty_cycle"][name] <= 1.05, summary
    assert summary["farm B / farm"] > 0 and summary["farm B"].endswith("DEPTH=3"), summary
    assert "== overhead summary" in proc.stdout and "duty_cycle" in proc.stdout

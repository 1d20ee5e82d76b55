"""bench/overhead.py runs end to end at a small size and writes its figures: raw Celery
against the farm (rates, their ratio, CPU per job on each process, queued->running
latency), here with the GPU stand-in (--model gpu-sim) at pipeline depth 1 against 3, so
the same run reports the stand-in's images/s and duty cycle per depth.

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


def test_overhead_bench_reports_rates_cpu_latency_and_duty_cycle_per_depth(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    env = {**os.environ, "IMGFARM_WORKER_PIPELINE_DEPTH": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "overhead.py"), "--model", "gpu-sim",
         "--sim-seconds-per-image", "0.02", "--jobs", "16", "--latency-jobs", "3",
         "--latency-gap", "0.05", "--compare-env", "IMGFARM_WORKER_PIPELINE_DEPTH=3",
         "--storage", "file", "--json", out],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(out.read_text())["summary"]
    # every job rendered, recorded and has its output object in storage
    assert summary["done"] == {"raw Celery": 16, "farm": 16, "farm B": 16}, summary
    assert summary["missing_outputs"] == 0, summary
    assert all(rate > 0 for rate in summary["jobs_per_s"].values()), summary
    assert summary["farm / raw Celery"] > 0, summary
    # every job's CPU lands on the processes that did the work
    assert summary["cpu_ms_per_job"]["farm"]["worker"] > 0, summary
    assert summary["cpu_ms_per_job"]["raw Celery"]["noop worker"] > 0, summary
    for name in ("farm", "raw Celery"):
        lat = summary["latency_ms"][name]
        assert 0 < lat["p50"] <= lat["p99"] <= lat["max"], summary
    # the device lane was busy at least for the stand-in's sleeps (0.02 s x 16 images), so
    # the duty cycle is above 0 and (never more than wall time) at most about 1
    for name in ("farm", "farm B"):
        assert 0.02 * 16 * 0.9 / 16 * summary["jobs_per_s"][name] <= summary["duty_cycle"][name]
        assert summary["duty_cycle"][name] <= 1.05, summary
    assert summary["farm B / farm"] > 0 and summary["farm B"].endswith("DEPTH=3"), summary
    assert "== overhead summary" in proc.stdout and "farm / raw Celery" in proc.stdout
    assert "duty_cycle" in proc.stdout

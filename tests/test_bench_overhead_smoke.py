"""The overhead benchmark runs end to end at a small size and writes its figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.integration


def test_overhead_bench_reports_rates_ratio_cpu_and_latency(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "overhead.py"), "--jobs", "20", "--latency-jobs",
         "3", "--latency-gap", "0.05", "--storage", "file", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(out.read_text())["summary"]
    assert summary["done"] == {"raw Celery": 20, "farm": 20}, summary
    assert all(rate > 0 for rate in summary["jobs_per_s"].values()), summary
    assert summary["farm / raw Celery"] > 0 and summary["missing_outputs"] == 0, summary
    # every job's CPU lands on the processes that did the work
    assert summary["cpu_ms_per_job"]["farm"]["worker"] > 0, summary
    assert summary["cpu_ms_per_job"]["raw Celery"]["noop worker"] > 0, summary
    for name in ("farm", "raw Celery"):
        lat = summary["latency_ms"][name]
        assert 0 < lat["p50"] <= lat["p99"] <= lat["max"], summary
    assert "== overhead summary ==" in proc.stdout and "farm / raw Celery" in proc.stdout

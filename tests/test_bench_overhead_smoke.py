"""The overhead benchmark runs end to end at a small size and prints its figures."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RATE = re.compile(r"^  (raw Celery|farm)\s+([\d,]+) jobs in\s+[\d.]+ s ->\s+([\d.]+) jobs/s$", re.M)
RATIO = re.compile(r"farm / raw Celery = ([\d.]+)%")
LATENCY = re.compile(r"^  (farm|raw Celery)\s+p50\s+([\d.]+) ms, p99\s+([\d.]+) ms", re.M)

pytestmark = pytest.mark.integration


def test_overhead_bench_prints_rates_ratio_and_latency() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "overhead.py"),
            "--jobs",
            "50",
            "--latency-jobs",
            "5",
            "--latency-gap",
            "0.05",
            "--storage",
            "file",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rates = {
        name: (int(done.replace(",", "")), float(r)) for name, done, r in RATE.findall(proc.stdout)
    }
    assert rates.keys() == {"raw Celery", "farm"}, proc.stdout
    assert all(done == 50 and rate > 0 for done, rate in rates.values()), proc.stdout
    assert RATIO.search(proc.stdout), proc.stdout
    assert "0 succeeded job(s) without their output" in proc.stdout
    latencies = {name: float(p50) for name, p50, _ in LATENCY.findall(proc.stdout)}
    assert latencies.keys() == {"farm", "raw Celery"}, proc.stdout

"""The pipeline overlap benchmark runs end to end at a small size and writes its figures.

Only that the figures exist and are sane: never a speed, which depends on the machine.
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
        [sys.executable, str(ROOT / "bench" / "pipeline_overlap.py"), "--smoke", "--json", out],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["depths"] == [1, 3]
    assert figures["best"].keys() == {"1", "3"}
    assert figures["ratios"].keys() == {"3"} and figures["ratios"]["3"] > 0
    assert figures["ideal_images_per_second"] == pytest.approx(1 / 0.02)
    assert len(figures["runs"]) == 2  # one round of each depth
    for run in figures["runs"]:
        jobs = run["jobs"]
        # every job rendered, recorded and has its output object in storage
        assert run["statuses"] == {"succeeded": jobs}, run
        assert run["missing_outputs"] == 0, run
        assert run["images_per_second"] > 0, run
        # the device lane was busy at least for the stand-in's sleeps, never more than wall
        assert run["device_busy_seconds"] >= 0.02 * jobs * 0.9, run
        assert 0 < run["duty_cycle"] <= 1.05, run
    assert figures["failed"] == figures["unfinished"] == figures["missing_outputs"] == 0
    assert "ratio  depth 3 / depth 1 images/s" in proc.stdout, proc.stdout
    assert "0 succeeded job(s) without their output in storage" in proc.stdout, proc.stdout


def test_in_process_bench_runs_the_workers_render_task_without_services(tmp_path: Path) -> None:
    """--in-process (the GPU session's way, no services): the worker's own render task on
    SQLite and a local folder, the duty cycle read from its device lane."""
    out = tmp_path / "figures.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "pipeline_overlap.py"), "--in-process", "--smoke",
         "--jobs", "16", "--json", out],
        cwd=ROOT, capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["in_process"] and figures["storage"] == "file"
    assert figures["best"].keys() == {"1", "3"} and figures["ratios"]["3"] > 0
    for run in figures["runs"]:
        assert run["statuses"] == {"succeeded": 16}, run
        assert run["missing_outputs"] == 0, run
        assert run["device_busy_seconds"] >= 0.02 * 16 * 0.9, run
        assert 0 < run["duty_cycle"] <= 1.05, run
    # what bench/gpu_session.sh prints: the best run of each depth and the ratio
    summary = figures["summary"]
    assert summary.keys() == {"depth 1", "depth 3", "ratios vs depth 1"}
    assert summary["depth 3"]["duty_cycle"] == figures["best"]["3"]["duty_cycle"]
    assert "in process: SQLite, local folder" in proc.stdout

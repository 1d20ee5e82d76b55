"""bench/gpu_session.sh --cpu-smoke: the device run's steps, flags and summary, on the CPU
with the tiny model. Its first step is also the smoke of pipeline_overlap.py (in process)
with a real model: the worker's load, warm-ups and render task, depth 1 against 3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


# Minutes on a loaded 2-CPU machine: the subprocess's own timeout is the limit.
@pytest.mark.timeout(660)
def test_gpu_session_script_runs_its_steps_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "WORK": str(tmp_path / "work"),
           "PYTHON": sys.executable, "SESSION_S": "600"}  # fmt: skip
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_session.sh"), "--cpu-smoke"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for step in ("1. done", "2. done", "== session summary =="):
        assert step in proc.stdout, proc.stdout[-3000:]
    overlap = json.loads((out / "pipeline_overlap.json").read_text())
    assert overlap["model"] == "sd15-random" and not overlap["errors"], overlap["errors"]
    assert [(r["depth"], r["statuses"]) for r in overlap["runs"]] == [
        (1, {"succeeded": 3}),
        (3, {"succeeded": 3}),
    ]
    summary = overlap["summary"]
    assert summary["ratios vs depth 1"]["3"] > 0
    assert summary["jobs"] == {"failed": 0, "unfinished": 0, "missing_outputs": 0}
    for depth in ("depth 1", "depth 3"):
        assert 0 < summary[depth]["duty_cycle"] <= 1.05, summary
    # Batches of 2 and 1, both buckets warmed first: nothing compiles while timing.
    assert summary["graphs_compiled_while_timing"] == 0
    # --warm-plan: buckets 1 and 2 with guidance, and batch 1 without (a UNet batch not
    # seen yet), so the worker's start time adds up.
    assert set(summary["warmup_s_by_bucket"]) == {"2", "1", "1 (g 1.0)"}
    assert summary["buckets_not_warmed"] == [] and summary["worker_start_s"] > 0
    throughput = json.loads((out / "gpu_throughput.json").read_text())
    assert throughput["variants"] == {"cudnn_attention": None, "inductor": None}
    # What comes back from the device: at most 8 files, plain names.
    assert len(list(out.iterdir())) <= 8

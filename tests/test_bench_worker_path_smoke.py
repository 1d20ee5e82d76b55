"""The worker-path benchmark runs end to end on the CPU with the tiny model (--smoke)."""

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
def test_worker_path_smoke_reports_every_path(tmp_path: Path) -> None:
    json_path = tmp_path / "smoke.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "worker_path.py"),
            "--device",
            "cpu",
            "--smoke",
            "--workdir",
            str(tmp_path / "work"),
            "--json",
            str(json_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    data = json.loads(json_path.read_text())
    assert not data["errors"], data["errors"]
    by_batch = data["summary"]["by_batch"]
    # --smoke: 4, 2 and 3 items (3 padded to the warm bucket 4).
    assert set(by_batch) == {"sd15-random 4", "sd15-random 2", "sd15-random 3"}
    assert by_batch["sd15-random 3"]["pipeline_batch"] == 4
    for name, figures in by_batch.items():
        assert figures["run_pipeline_img_s"] > 0, name
        assert figures["render_batch_img_s"] > 0, name
        assert 0 <= figures["cpu_fraction"] < 1, name
        assert figures["first_call_graphs_added"] == 0, "a warm bucket must not compile"
    # Every entry of the worker's warm plan was warmed, so the worker's start time adds up:
    # buckets 1, 2 and 4 with guidance, and batch 1 without (a UNet batch not seen yet).
    warmed = {(w["bucket"], w["guidance"]) for w in data["warmup"]}
    assert warmed == {(1, 7.5), (2, 7.5), (4, 7.5), (1, 1.0)}
    assert data["summary"]["buckets_not_warmed"] == []
    assert data["summary"]["worker_start_s"] > 0
    assert "== worker_path summary" in proc.stdout


@pytest.mark.timeout(660)
def test_gpu_session_script_runs_its_steps_on_the_cpu(tmp_path: Path) -> None:
    """bench/gpu_session.sh --cpu-smoke: the device run's steps, flags and summary, on the
    CPU with the tiny model (the variants are skipped there: nothing compiles); depth 1
    against 3 from the worker's own render task (pipeline_overlap.py --in-process)."""
    out = tmp_path / "out"
    env = {
        **os.environ,
        "OUT": str(out),
        "WORK": str(tmp_path / "work"),
        "PYTHON": sys.executable,
        "SESSION_S": "600",
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_session.sh"), "--cpu-smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for step in ("1. done", "2. done", "3. done", "== session summary =="):
        assert step in proc.stdout, proc.stdout[-3000:]
    overlap = json.loads((out / "pipeline_overlap.json").read_text())
    assert overlap["model"] == "sd15-random" and overlap["in_process"]
    assert set(overlap["best"]) == {"1", "3"} and overlap["ratios"]["3"] > 0
    for run in overlap["runs"]:
        assert run["statuses"] == {"succeeded": 8} and run["missing_outputs"] == 0, run
        assert 0 < run["duty_cycle"] <= 1.05, run
    data = json.loads((out / "worker_path.json").read_text())
    assert not data["errors"], data["errors"]
    assert set(data["summary"]["by_batch"]) == {"sd15-random 4"}
    assert set(data["summary"]["warmup_s_by_bucket"]) == {"4"}
    throughput = json.loads((out / "gpu_throughput.json").read_text())
    assert throughput["variants"] == {"cudnn_attention": None, "inductor": None}
    # What comes back from the device: at most 8 files, plain names.
    assert len(list(out.iterdir())) <= 8

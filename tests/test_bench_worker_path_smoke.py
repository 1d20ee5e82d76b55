"""The worker-path benchmark runs end to end on the CPU with the tiny model (--smoke)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    data = json.loads(json_path.read_text())
    assert not data["errors"], data["errors"]
    by_batch = data["summary"]["by_batch"]
    # --smoke: 4, 2 and 3 items (3 padded to the warm bucket 4), then the turbo alias at 4.
    assert set(by_batch) == {"sd15 4", "sd15 2", "sd15 3", "turbo 4"}
    assert by_batch["sd15 3"]["pipeline_batch"] == 4
    for name, figures in by_batch.items():
        assert figures["run_pipeline_img_s"] > 0, name
        assert figures["render_batch_img_s"] > 0, name
        assert 0 <= figures["cpu_fraction"] < 1, name
    # Every bucket of the spec was warmed, so the worker's start time adds up.
    assert data["summary"]["buckets_not_warmed"] == []
    assert data["summary"]["worker_start_s"] > 0
    assert data["cpu_side"]["png_encode_photo_like_ms"] > 0
    for name in ("tiny-inpaint", "tiny-controlnet"):
        assert data["tiny"][name]["stored"], name
    assert "== summary ==" in proc.stdout

    # (c) the pipelined worker: --smoke runs 3 batches of 4 at depth 1 and at depth 3.
    piped = data["pipelined"]
    assert [run["depth"] for run in piped["runs"]] == [1, 3]
    for run in piped["runs"]:
        assert run["images"] == run["stored"] == 3 * 4, run
        assert run["lane_calls"] == 3, run
        assert 0 < run["duty_cycle"] <= 1.05, run
        assert run["images_per_s"] > 0, run
        assert run["graphs_added"] == 0, "the warm model must not compile on the lane"
    summary = data["summary"]["pipelined"]
    assert set(summary["by_depth"]) == {"1", "3"}
    for figures in summary["by_depth"].values():
        assert figures["images_per_s"] > 0
        assert 0 < figures["duty_cycle"] <= 1.05
    assert summary["ratio"]["depths"] == "3/1" and summary["ratio"]["images_per_s"] > 0
    assert "[pipelined worker, 3 batches of 4 per run] depth 1: " in proc.stdout


def test_gpu_session_script_runs_its_steps_on_the_cpu(tmp_path: Path) -> None:
    """bench/gpu_session.sh --cpu-smoke: the device run's steps, flags and summary, on the
    CPU with the tiny model (the variants are skipped there: nothing compiles)."""
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
    assert "1. done" in proc.stdout and "2. done" in proc.stdout, proc.stdout[-3000:]
    assert "== session summary ==" in proc.stdout
    data = json.loads((out / "worker_path.json").read_text())
    assert not data["errors"], data["errors"]
    assert set(data["summary"]["pipelined"]["by_depth"]) == {"1", "3"}
    throughput = json.loads((out / "gpu_throughput.json").read_text())
    assert throughput["variants"] == {"cudnn_attention": None, "inductor": None}
    # What comes back from the device: at most 8 files, plain names.
    assert len(list(out.iterdir())) <= 8

"""The worker-path benchmark runs end to end on the CPU with the tiny model (--smoke)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_worker_path_smoke_reports_both_paths(tmp_path: Path) -> None:
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

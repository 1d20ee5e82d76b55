"""The submission benchmark runs at a small size on PostgreSQL and writes its figures.

Only that the figures exist and are sane: never a speed, which depends on the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_submit_bench_times_batches_and_status_reads(postgres_url: str, tmp_path: Path) -> None:
    # postgres_url: the server the bench makes its own database on is up.
    out = tmp_path / "submit.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "submit.py"), "--sizes", "100,200", "--repeat",
         "2", "--filler", "1000", "--gets", "5", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["submit"].keys() == {"100", "200"}
    for size in figures["submit"].values():
        assert 0 < size["best_s"] <= size["median_s"] and size["jobs_per_s"] > 0, size
    # 3 submissions of each size (one untimed) = 900 jobs; the filler tops them up to 1000.
    assert figures["jobs_in_table"] == 1000
    status = figures["status"]
    assert 0 < status["p50_ms"] <= status["p95_ms"] <= status["max_ms"], status
    assert "jobs in table" in proc.stdout

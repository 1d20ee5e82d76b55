"""bench/read_endings.py runs at a small size on PostgreSQL and writes its figures: a read
ended by ROLLBACK leaves its connection no prepared statement, one ended by COMMIT keeps
them (never a speed, which depends on the machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_read_endings_bench_compares_rollback_and_commit(postgres_url: str, tmp_path: Path):
    # postgres_url: the server the bench makes its own database on is up.
    out = tmp_path / "endings.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "read_endings.py"), "--reads", "40",
         "--rounds", "1", "--jobs", "320", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert [b["prepared"] for b in figures["rollback"]] == [0]
    assert [b["prepared"] for b in figures["commit"]] == [2]  # both of a read's queries
    for block in figures["rollback"] + figures["commit"]:
        assert block["client_ms"] > 0 and block["backend_ms"] >= 0, block
    assert "backend CPU, commit / rollback" in proc.stdout, proc.stdout

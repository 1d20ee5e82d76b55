"""The fair-pick benchmark runs at a small size on PostgreSQL and writes its figures.

Only that the figures exist and are sane: never a speed, which depends on the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dispatch_pick_bench_times_the_pick_per_farm_size(
    postgres_url: str, tmp_path: Path
) -> None:
    # postgres_url: the server the bench makes its own database on is up.
    out = tmp_path / "pick.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "dispatch_pick.py"), "--teams", "10,100",
         "--active-teams", "3", "--jobs-per-team", "50", "--room", "64", "--repeat", "1",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures.keys() == {"10", "100"}
    for farm in figures.values():
        # 3 teams x 50 jobs waiting, room for 64: a full tick, however many teams there are
        assert farm["picked"] == 64 and farm["ms"] > 0, farm
        # one kept tick: its median is its p95; the first tick is timed on its own
        assert farm["p95_ms"] == farm["ms"] and farm["first_ms"] > 0, farm
    assert "100 teams,       150 jobs waiting: median" in proc.stdout, proc.stdout
    assert "x the smallest farm" in proc.stdout

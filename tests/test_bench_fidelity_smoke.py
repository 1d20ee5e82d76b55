"""The fidelity benchmark scores its photos at a given size and checks its drift shortcut."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_fidelity_bench_prints_a_timing_row_per_size() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fidelity.py"), "--sizes", "64", "96",
         "--repeat", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines()[1:]]
    assert [r[0] for r in rows] == ["64²", "96²"]
    for row in rows:
        median, error = float(row[1]), float(row[5])
        # The stride-2 mean stays close to every pixel's, even from 1,024 samples at 64².
        assert median > 0 and error < 0.5

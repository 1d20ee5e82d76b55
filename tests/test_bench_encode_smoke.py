"""The encoding benchmark runs on given photos and prints each setting against the baseline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_encode_bench_measures_every_setting_against_png_level_6(tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    Image.radial_gradient("L").convert("RGB").save(photo)
    out = tmp_path / "encode.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "encode.py"), "--images", str(photo),
         "--sizes", "64,96", "--repeat", "1", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert {r["size"] for r in rows} == {64, 96}
    labels = [r["label"] for r in rows if r["size"] == 64]
    assert labels == ["png level 1", "png level 3", "png level 6", "png level 9",
                      "jpeg (q92)", "webp (q92)"]  # fmt: skip
    for row in rows:
        assert row["ms_per_image"] > 0 and row["kib_per_image"] > 0
        if row["label"] == "png level 6":
            assert row["ms_vs_baseline"] == row["size_vs_baseline"] == 1.0
    assert "png level 1" in proc.stdout and "vs png level 6" in proc.stdout

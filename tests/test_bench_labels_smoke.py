"""The labelling benchmark measures plain, labelled and signed encodes of every format."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_labels_bench_measures_each_format_three_ways(tmp_path: Path, capsys) -> None:
    spec = importlib.util.spec_from_file_location("bench_labels", ROOT / "bench" / "labels.py")
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up there
    spec.loader.exec_module(bench)  # in-process: the worker's modules are imported already
    out = tmp_path / "labels.json"
    bench.main(["--size", "64", "--rounds", "1", "--json", str(out)])
    rows = json.loads(out.read_text())
    assert [r["format"] for r in rows] == ["png", "jpeg", "webp"]
    for row in rows:
        assert set(row["ms"]) == set(row["bytes"]) == {"plain", "xmp", "xmp+c2pa"}
        # the label and the manifest are in the file: each way adds bytes to the last
        assert row["bytes"]["plain"] < row["bytes"]["xmp"] < row["bytes"]["xmp+c2pa"]
    assert "+xmp+c2pa" in capsys.readouterr().out

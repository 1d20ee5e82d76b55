"""The finish-stage benchmark measures plain, labelled and signed encodes of every format,
and fidelity scoring, at each size it is given."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_output_cost_bench_measures_labelling_and_scoring(tmp_path: Path, capsys) -> None:
    path = ROOT / "bench" / "output_cost.py"
    spec = importlib.util.spec_from_file_location("bench_output_cost", path)
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up there
    spec.loader.exec_module(bench)  # in-process: the worker's modules are imported already
    out = tmp_path / "cost.json"
    bench.main(["--sizes", "64", "--rounds", "1", "--repeat", "1", "--json", str(out)])
    figures = json.loads(out.read_text())
    assert [r["format"] for r in figures["labelling"]] == ["png", "jpeg", "webp"]
    for row in figures["labelling"]:
        assert set(row["ms"]) == set(row["bytes"]) == {"plain", "xmp", "xmp+c2pa"}
        # the label and the manifest are in the file: each way adds bytes to the last
        assert row["bytes"]["plain"] < row["bytes"]["xmp"] < row["bytes"]["xmp+c2pa"]
    (scored,) = figures["fidelity"]
    assert scored["size"] == 64 and 0 < scored["min_ms"] <= scored["median_ms"]
    assert 0 <= scored["drift_error"] < 1  # stride 2 stays under a just-noticeable ΔE, even at 64²
    printed = capsys.readouterr().out
    assert "+xmp+c2pa" in printed and "fidelity 64²" in printed

"""The finish-stage benchmark measures every encoding setting against PNG level 6, plain,
labelled and signed encodes of every format, fidelity scoring and the product workflow's
steps, at each size given."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_output_cost_bench_measures_encoding_labelling_and_scoring(tmp_path: Path, capsys) -> None:
    spec = importlib.util.spec_from_file_location(
        "bench_output_cost", ROOT / "bench" / "output_cost.py"
    )
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)  # in-process: the worker's modules are imported already
    photo, out = tmp_path / "photo.png", tmp_path / "cost.json"
    Image.radial_gradient("L").convert("RGB").save(photo)
    bench.main(["--sizes", "64", "--images", str(photo), "--rounds", "1", "--repeat", "1",
                "--esrgan-blocks", "1", "--json", str(out)])  # fmt: skip
    figures = json.loads(out.read_text())
    assert [r["label"] for r in figures["encoding"]] == [
        "png level 1", "png level 3", "png level 6", "png level 9", "jpeg (q92)", "webp (q92)"
    ]  # fmt: skip
    for row in figures["encoding"]:
        assert row["size"] == 64 and row["ms_per_image"] > 0 and row["kib_per_image"] > 0
        if row["label"] == "png level 6":
            assert row["ms_vs_baseline"] == row["size_vs_baseline"] == 1.0
    assert [r["format"] for r in figures["labelling"]] == ["png", "jpeg", "webp"]
    for row in figures["labelling"]:
        assert set(row["ms"]) == set(row["bytes"]) == {"plain", "xmp", "xmp+c2pa"}
        # the label and the manifest are in the file: each way adds bytes to the last
        assert row["bytes"]["plain"] < row["bytes"]["xmp"] < row["bytes"]["xmp+c2pa"]
    (scored,) = figures["fidelity"]
    assert scored["size"] == 64 and 0 < scored["min_ms"] <= scored["median_ms"]
    assert 0 <= scored["drift_error"] < 1  # stride 2 stays under a just-noticeable ΔE, even at 64²
    printed = capsys.readouterr().out
    assert "vs png level 6" in printed and "+xmp+c2pa" in printed and "fidelity 64²" in printed
    (steps,) = figures["workflow"]
    presets = {f"preset {name}" for name in ("amazon-main", "instagram-portrait", "web-hero")}
    assert {"cutout studio", "upscale 2x lanczos", *presets} <= set(steps)
    assert all(ms > 0 for step, ms in steps.items() if step != "size")

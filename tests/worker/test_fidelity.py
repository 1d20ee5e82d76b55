"""Fidelity scores separate faithful outputs from broken ones on real photographs, with the
model defaults (worker/fidelity.py, shared/registry.py).

The photographs are scikit-image's samples (from its wheel), square-cropped to 512². Each
"output" is the photo changed as a render might change it: unchanged (echo), re-encoded
mildly (JPEG 85), or broken: the product shifted by 10%, blurred (σ=4), hue-rotated 60°, or
replaced by noise. Run with ``-s`` to see the distributions the README quotes.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data
from skimage.color import hsv2rgb, rgb2hsv

from shared.errors import ConfigError
from shared.registry import ModelSpec, load_registry
from shared.schemas import RenderParams
from worker.fidelity import Fidelity, Thresholds, review_state, score
from worker.render import build_inputs

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
SIZE = 512


def photo(name: str) -> Image.Image:
    img = Image.fromarray(getattr(data, name)()).convert("RGB")
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    square = img.crop((left, top, left + side, top + side))
    return square.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def jpeg85(img: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def shifted(img: Image.Image) -> Image.Image:
    """Moved right by 10% of its width (the left edge repeated into the gap)."""
    a = np.asarray(img)
    move = np.float32([[1, 0, a.shape[1] // 10], [0, 1, 0]])
    return Image.fromarray(
        cv2.warpAffine(a, move, (a.shape[1], a.shape[0]), borderMode=cv2.BORDER_REPLICATE)
    )


def blurred(img: Image.Image) -> Image.Image:
    return Image.fromarray(cv2.GaussianBlur(np.asarray(img), (0, 0), 4))


def hue_rotated(img: Image.Image) -> Image.Image:
    hsv = rgb2hsv(np.asarray(img))
    hsv[..., 0] = (hsv[..., 0] + 60 / 360) % 1
    return Image.fromarray((hsv2rgb(hsv) * 255).round().astype(np.uint8))


def noise(img: Image.Image) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (img.height, img.width, 3), dtype=np.uint8))


FAITHFUL = {"echo": lambda img: img.copy(), "jpeg85": jpeg85}
BROKEN = {"shift10": shifted, "blur4": blurred, "hue60": hue_rotated, "noise": noise}
DEFAULTS = Thresholds(ModelSpec("x", "y").min_structure, ModelSpec("x", "y").max_colour_drift)


@pytest.fixture(scope="module")
def scores() -> dict[str, dict[str, Fidelity]]:
    """Every class x photo scored once; the distributions printed (``-s``)."""
    sources = {name: photo(name) for name in PHOTOS}
    table = {
        kind: {name: score(src, change(src)) for name, src in sources.items()}
        for kind, change in {**FAITHFUL, **BROKEN}.items()
    }
    for kind, by_photo in table.items():
        ranges = [
            f"{field} {min(v):.3f}..{max(v):.3f}"
            for field in ("structure", "ssim", "colour_drift")
            for v in [[getattr(f, field) for f in by_photo.values()]]
        ]
        print(f"fidelity {kind:8s} " + "  ".join(ranges))
    return table


@pytest.mark.parametrize("kind", FAITHFUL)
def test_faithful_outputs_pass_with_the_defaults(scores, kind):
    for name, fidelity in scores[kind].items():
        assert review_state(fidelity, DEFAULTS, "png") == "passed", (name, fidelity)
        assert fidelity.kept_pixels_changed is None  # not an inpaint


@pytest.mark.parametrize("kind", BROKEN)
def test_broken_outputs_need_review_with_the_defaults(scores, kind):
    for name, fidelity in scores[kind].items():
        assert review_state(fidelity, DEFAULTS, "png") == "needs_review", (name, fidelity)


def test_echo_scores_perfectly_and_each_break_fails_on_its_own_score(scores):
    assert all(f == Fidelity(1.0, 1.0, 0.0, None) for f in scores["echo"].values())
    # Geometry and blur break the edges; a hue rotation keeps them and breaks the colour.
    for kind in ("shift10", "blur4", "noise"):
        assert all(f.structure < DEFAULTS.min_structure for f in scores[kind].values()), kind
    hue = scores["hue60"].values()
    assert all(f.structure >= DEFAULTS.min_structure for f in hue)
    assert all(f.colour_drift > DEFAULTS.max_colour_drift for f in hue)


def test_inpaint_counts_changed_kept_pixels_and_drift_reads_only_them():
    src = photo("coffee")
    keep = Image.new("L", src.size, 0)
    keep.paste(255, (0, 0, SIZE // 2, SIZE))  # the left half is the kept product
    repainted = Image.composite(src, noise(src), keep)  # right half repainted, left exact
    exact = score(src, repainted, keep)
    assert exact.kept_pixels_changed == 0 and exact.colour_drift == 0.0
    assert review_state(exact, Thresholds(0.0, 5.0), "png") == "passed"
    # Two kept pixels touched: counted; png fails review, a lossy format only reports it.
    touched = np.asarray(repainted).copy()
    touched[10, 10] ^= 1
    touched[20, 30, 2] ^= 1
    changed = score(src, Image.fromarray(touched), keep)
    assert changed.kept_pixels_changed == 2
    assert review_state(changed, Thresholds(0.0, 5.0), "png") == "needs_review"
    assert review_state(changed, Thresholds(0.0, 5.0), "jpeg") == "passed"
    # Without the mask the whole image is the colour region: the noise half shows.
    assert score(src, repainted).colour_drift > 10


def test_a_batch_override_replaces_only_the_thresholds_it_sets():
    model = Thresholds(min_structure=0.5, max_colour_drift=5.0)
    assert model.override(None) == model
    assert model.override({"min_structure": 0.1}) == Thresholds(0.1, 5.0)
    assert model.override({"max_colour_drift": 50}) == Thresholds(0.5, 50.0)
    noisy = Fidelity(structure=0.2, ssim=0.01, colour_drift=40.0, kept_pixels_changed=None)
    assert review_state(noisy, model, "png") == "needs_review"
    loose = model.override({"min_structure": 0, "max_colour_drift": 60})
    assert review_state(noisy, loose, "png") == "passed"


def test_registry_thresholds_are_read_from_toml_and_checked(tmp_path):
    path = tmp_path / "models.toml"
    path.write_text('[models.shoes]\nsource = "./w"\nmin_structure = 0.3\nmax_colour_drift = 8\n')
    spec = load_registry(path)["shoes"]
    assert (spec.min_structure, spec.max_colour_drift) == (0.3, 8)
    assert load_registry(None)["tiny"].min_structure == DEFAULTS.min_structure
    path.write_text('[models.shoes]\nsource = "./w"\nmin_structure = 1.5\n')
    with pytest.raises(ConfigError, match="min_structure"):
        load_registry(path)


def test_a_cut_outs_opaque_pixels_are_the_colour_region_of_other_kinds():
    """img2img of a product cut-out: the colour drift is the product's, not the backdrop's
    (the transparent part is flattened and repainted at will)."""
    src = photo("coffee")
    alpha = Image.new("L", src.size, 0)
    alpha.paste(255, (0, 0, SIZE // 2, SIZE))  # the product: the opaque left half
    cut_out = src.copy()
    cut_out.putalpha(alpha)
    params = RenderParams(
        strength=0.5,
        steps=4,
        guidance_scale=7.5,
        seed=1,
        width=SIZE,
        height=SIZE,
        output_format="png",
    )
    inputs = build_inputs(ModelSpec("x", "y"), params, cut_out, None)
    assert inputs.keep is None and inputs.product is not None
    assert np.array_equal(np.asarray(inputs.product) == 255, np.asarray(alpha) == 255)
    backdrop_repainted = Image.composite(inputs.source, noise(src), inputs.product)
    scored = score(inputs.source, backdrop_repainted, product=inputs.product)
    assert scored.colour_drift == 0.0 and scored.kept_pixels_changed is None
    assert score(inputs.source, backdrop_repainted).colour_drift > 10
    # An opaque source has no product region: the whole image is scored.
    assert build_inputs(ModelSpec("x", "y"), params, src, None).product is None

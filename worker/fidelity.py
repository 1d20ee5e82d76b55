"""How faithful an output is to its source: scores, and the review state they decide.

Every output is scored against its source as brought to the output size (RenderItem.source),
on the worker's io pool while the device lane renders the next batch (worker/tasks.py).
The scores are OpenCV's and scikit-image's, vectorised, nothing hand-rolled per pixel:

- ``structure``: F1 of the canny edges of the two luminances, an edge counting as matched
  when the other image has one within one pixel (``EDGE_TOLERANCE_PX``). A render that keeps
  the product's shape keeps its outline; a shifted, blurred or noise output does not.
- ``ssim``: scikit-image's structural similarity of the luminances (Wang et al. 2004).
- ``colour_drift``: mean CIEDE2000 ΔE between the two in Lab over the product region (the
  inpaint keep mask where anything is kept, else a cut-out source's opaque pixels, else the
  whole image): 1 is about the smallest difference a person sees, 2-3 what a print proof
  tolerates.
- ``kept_pixels_changed``: for inpaint, how many kept pixels differ from the source at all.
  Pasted back exactly (worker/masks.py), so 0 in a png; jpeg and webp are lossy and move some.

Defaults of the thresholds were chosen from tests/worker/test_fidelity.py's photographs
(README "Fidelity and review" has the distributions); models and batches override them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image
from skimage.color import deltaE_ciede2000
from skimage.metrics import structural_similarity

from shared.review_status import ReviewState

# Canny's hysteresis thresholds on the luminance gradient (OpenCV's 3x3 Sobel): 100 and 200
# are OpenCV's own example values, the ones shared/canny.py feeds ControlNets. They keep
# outlines and strong texture and drop the weak gradients a JPEG re-encode adds.
CANNY_LOW, CANNY_HIGH = 100, 200
# Luminance is smoothed first (Canny's own first step, which cv2.Canny leaves out): without
# it a re-encode's block edges count as new edges, with it a blurred output still loses its
# fine ones.
CANNY_BLUR_SIGMA = 1.0
# An edge found one pixel away still matches: a resample or a lossy re-encode moves an edge
# by a pixel without changing the shape; a 3x3 dilation forgives that and nothing more.
EDGE_TOLERANCE_PX = 1
_TOLERANCE = np.ones((2 * EDGE_TOLERANCE_PX + 1,) * 2, np.uint8)
# Colour drift is a mean: every second pixel of every second row estimates it (within 0.003
# ΔE on the sample photographs, bench/output_cost.py) for a quarter of CIEDE2000's cost, the
# biggest part of scoring. Edges, SSIM and the kept-pixel count use every pixel.
DRIFT_STRIDE = 2


@dataclass(frozen=True)
class Fidelity:
    """One output's scores against its source (see module doc)."""

    structure: float
    ssim: float
    colour_drift: float
    kept_pixels_changed: int | None

    def as_dict(self) -> dict[str, Any]:
        """As stored with the job and shown by the api (JSON numbers, rounded)."""
        return asdict(self)


@dataclass(frozen=True)
class Thresholds:
    """What an output must meet to pass without a person: a model's, or a batch's override."""

    min_structure: float
    max_colour_drift: float

    def override(self, given: dict[str, Any] | None) -> Thresholds:
        """These thresholds with a batch's ``review`` fields that are set replacing them."""
        if not given:
            return self
        return Thresholds(
            min_structure=_pick(given.get("min_structure"), self.min_structure),
            max_colour_drift=_pick(given.get("max_colour_drift"), self.max_colour_drift),
        )


def _pick(value: Any, default: float) -> float:
    return default if value is None else float(value)


def score(
    source: Image.Image,
    output: Image.Image,
    keep_mask: Image.Image | None = None,
    product: Image.Image | None = None,
) -> Fidelity:
    """``output``'s scores against ``source`` (the same size). ``keep_mask`` (mode L, 255
    keeps) is an inpaint job's: its kept pixels are counted and are the colour region;
    ``product`` (mode L, 255 where a cut-out source is opaque) is the colour region else."""
    src = np.asarray(source.convert("RGB"))
    out = np.asarray(_at_size(output, source.size).convert("RGB"))
    src_y, out_y = _luminance(src), _luminance(out)
    keep = None if keep_mask is None else np.asarray(keep_mask.convert("L")) == 255
    region = keep if product is None or keep is not None else np.asarray(product) == 255
    return Fidelity(
        structure=round(edge_f1(src_y, out_y), 4),
        ssim=round(_ssim(src_y, out_y), 4),
        colour_drift=round(colour_drift(src, out, region), 3),
        kept_pixels_changed=None if keep is None else int((keep & (src != out).any(-1)).sum()),
    )


def _at_size(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    # Outputs are made at the source's size; a pipeline that rounds it is compared resized.
    return img if img.size == size else img.resize(size, Image.Resampling.LANCZOS)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)  # ITU-R 601 luma, as PIL's "L"


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    # float32: scikit-image then filters in float32, not float64 (same SSIM to 1e-7).
    f32 = np.float32
    return float(structural_similarity(a.astype(f32), b.astype(f32), data_range=255))


def edges(luma: np.ndarray) -> np.ndarray:
    """Canny edges of a uint8 luminance, as booleans (thresholds: see the constants)."""
    smooth = cv2.GaussianBlur(luma, (0, 0), CANNY_BLUR_SIGMA)
    return cv2.Canny(smooth, CANNY_LOW, CANNY_HIGH) > 0


def edge_f1(source_luma: np.ndarray, output_luma: np.ndarray) -> float:
    """F1 of the output's edges against the source's, each matched within the tolerance:
    precision = output edges near a source edge, recall = source edges near an output edge."""
    src, out = edges(source_luma), edges(output_luma)
    n_src, n_out = int(src.sum()), int(out.sum())
    if n_src == 0 or n_out == 0:  # a flat image: structure agrees only if both are flat
        return 1.0 if n_src == n_out else 0.0
    near_src = cv2.dilate(src.astype(np.uint8), _TOLERANCE) > 0
    near_out = cv2.dilate(out.astype(np.uint8), _TOLERANCE) > 0
    precision = float((out & near_src).sum()) / n_out
    recall = float((src & near_out).sum()) / n_src
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def colour_drift(
    src: np.ndarray, out: np.ndarray, region: np.ndarray | None, stride: int = DRIFT_STRIDE
) -> float:
    """Mean ΔE2000 over ``region`` (the product's pixels, when it holds any), else over all;
    on a grid of every ``stride``-th pixel (see ``DRIFT_STRIDE``)."""
    grid = (slice(None, None, stride),) * 2
    a, b = src[grid], out[grid]
    if region is not None and region[grid].any():
        a, b = a[region[grid]][None], b[region[grid]][None]  # (1, n, 3): still an image to cv2
    return float(deltaE_ciede2000(_lab(a), _lab(b)).mean())


def _lab(rgb: np.ndarray) -> np.ndarray:
    # OpenCV's sRGB -> CIELAB (D65) on float32: ~10x faster than skimage's rgb2lab at 1024²
    # and within 0.42 L* of it (mean ΔE equal to 0.001 on the test photographs).
    return cv2.cvtColor(rgb.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)


def review_state(fidelity: Fidelity, thresholds: Thresholds, output_format: str) -> ReviewState:
    """``passed`` when every threshold is met (and a png inpaint kept every kept pixel),
    else ``needs_review``: a person decides (issue 15)."""
    kept_ok = fidelity.kept_pixels_changed in (None, 0) or output_format != "png"
    ok = (
        fidelity.structure >= thresholds.min_structure
        and fidelity.colour_drift <= thresholds.max_colour_drift
        and kept_ok
    )
    return ReviewState.PASSED if ok else ReviewState.NEEDS_REVIEW

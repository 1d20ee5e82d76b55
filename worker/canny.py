"""Canny edges in numpy: what a ``controlnet-canny`` model is conditioned on.

The same definition as OpenCV's ``Canny(image, low, high)`` with its defaults (3x3 Sobel,
L1 gradient magnitude, no pre-blur), so the thresholds published with canny ControlNets
(100, 200) mean the same here. numpy and Pillow are already dependencies; OpenCV would add
a ~50 MB wheel for one function.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

DEFAULT_LOW = 100
DEFAULT_HIGH = 200


def canny_edges(img: Image.Image, low: int = DEFAULT_LOW, high: int = DEFAULT_HIGH) -> Image.Image:
    """White edges on black (RGB, as ControlNets take them) at ``img``'s size."""
    if not 0 <= low <= high:
        raise ValueError(f"canny thresholds need 0 <= low <= high, got low={low} high={high}")
    gray = np.asarray(img.convert("L"), dtype=np.float32)
    gx, gy = _sobel(gray)
    magnitude = np.abs(gx) + np.abs(gy)
    thin = _non_maximum_suppression(magnitude, gx, gy)
    edges = _hysteresis(thin >= high, thin >= low)
    return Image.fromarray((edges * 255).astype(np.uint8)).convert("RGB")


def _sobel(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Replicated borders, so the frame of the image is not an edge.
    p = np.pad(gray, 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    return gx, gy


def _non_maximum_suppression(magnitude: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Keep only local maxima across the edge (1 px wide); ties go to the pixel behind,
    as in OpenCV, so a plateau of two equal pixels keeps one."""
    h, w = magnitude.shape
    p = np.pad(magnitude, 1)
    # Gradient direction folded into [0, 180) and binned to 0, 45, 90 or 135 degrees.
    angle = (np.degrees(np.arctan2(gy, gx)) + 180.0) % 180.0
    direction = (((angle + 22.5) // 45) % 4).astype(np.int8)
    # (dy, dx) of the neighbour along the gradient, per bin; y grows downwards.
    steps = {0: (0, 1), 1: (1, 1), 2: (1, 0), 3: (1, -1)}
    keep = np.zeros_like(magnitude, dtype=bool)
    for bin_, (dy, dx) in steps.items():
        ahead = p[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        behind = p[1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w]
        keep |= (direction == bin_) & (magnitude > ahead) & (magnitude >= behind)
    return np.where(keep, magnitude, 0.0)


def _hysteresis(strong: np.ndarray, weak: np.ndarray) -> np.ndarray:
    """Weak pixels survive when 8-connected, through weak pixels, to a strong one.

    Grown one pixel ring per round until stable; the round limit (the image's longer side)
    only bounds pathological spirals, which then keep fewer weak pixels.
    """
    edges = strong & weak
    for _ in range(max(strong.shape)):
        p = np.pad(edges, 1)
        h, w = edges.shape
        grown = edges.copy()
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                grown |= p[dy : dy + h, dx : dx + w]
        grown &= weak
        if np.array_equal(grown, edges):
            break
        edges = grown
    return edges

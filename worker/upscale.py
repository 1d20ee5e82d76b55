"""Enlarging an image after rendering: by a learned upscaler where the worker has one.

``enlarge`` is what presets and the ``upscale`` knob call. Without an upscaler it falls
back to Lanczos resampling, so a preset that needs 1600 px still delivers 1600 px on a
worker with no upscale weights; provenance says which was used.
"""

from __future__ import annotations

import math
from typing import Protocol

from PIL import Image

LANCZOS = "lanczos"


class Upscaler(Protocol):
    """A learned upscaler on the worker's device: ``scale`` x each side."""

    name: str
    scale: int

    def __call__(self, image: Image.Image) -> Image.Image: ...


def enlarge(image: Image.Image, factor: float, upscaler: Upscaler | None = None) -> Image.Image:
    """``image`` enlarged ``factor`` times (rounded to whole pixels): the upscaler applied
    as many times as it takes to reach the size, then Lanczos down to it exactly."""
    size = (round(image.width * factor), round(image.height * factor))
    if factor <= 1 or upscaler is None:
        return image.resize(size, Image.Resampling.LANCZOS)
    passes = max(1, math.ceil(math.log(factor, upscaler.scale) - 1e-9))
    for _ in range(passes):
        image = upscaler(image)
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


def method(factor: float, upscaler: Upscaler | None) -> str:
    """What ``enlarge`` uses for ``factor``: the upscaler's name, or lanczos."""
    return upscaler.name if factor > 1 and upscaler is not None else LANCZOS

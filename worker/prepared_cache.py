"""Prepared inputs, kept in the worker's memory so a product photo is decoded and resized once.

Preparing a job (worker/render.py ``prepare_inputs``) decodes its source (upright, 8-bit,
sRGB: shared/images.py ``open_rgba``), flattens and resizes it to the output size and
derives what its model kind is conditioned on (an inpaint keep mask, canny edges): ~20 ms
of CPU for a 1024² source. One photo x many prompts x many variants prepares the same pixels
for every job; with this cache, once per worker.

The key is everything those pixels depend on (``PreparedKey``, built by render.py next to
the code it describes); only content-addressed sources and masks are cached, as in
worker/source_cache.py, so an entry is never stale and never shared between teams.
Concurrent misses compute once, failures are not kept (worker/single_flight.py).

The images are shared by every job that hits, so nothing may change them in place: the
render steps make new images from them (``paste_kept``, ``repaint_mask``, echo's copy) and
diffusers' image processors convert them into new ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from PIL import Image

from worker.single_flight import SingleFlightLRU


@dataclass(frozen=True)
class PreparedInputs:
    """A job's source at the output size and its kind's conditioning (see RenderItem)."""

    source: Image.Image
    keep: Image.Image | None = None
    control: Image.Image | None = None
    product: Image.Image | None = None

    @property
    def nbytes(self) -> int:
        """Pixel bytes of the images (width x height x bands): what the cache is bounded by."""
        images = (self.source, self.keep, self.control, self.product)
        return sum(i.width * i.height * len(i.getbands()) for i in images if i is not None)


class PreparedKey(NamedTuple):
    """What prepared inputs depend on: two jobs with equal keys get equal pixels."""

    # Content-addressed bytes: orientation, bit depth and colour profile are read from them,
    # so the key of the bytes is the key of the upright sRGB pixels too.
    source_key: str
    mask_key: str | None  # only for kinds that take a mask
    width: int
    height: int
    resize_mode: str
    kind: str
    canny: tuple[int, int] | None  # (low, high), only for controlnet-canny


class PreparedCache(SingleFlightLRU[PreparedKey, PreparedInputs]):
    """Prepared inputs by key, at most ``max_bytes`` of pixels; 0 turns the cache off."""

    def __init__(
        self, max_bytes: int, on_lookup: Callable[[bool], None] = lambda hit: None
    ) -> None:
        super().__init__(max_bytes, lambda inputs: inputs.nbytes, on_lookup)

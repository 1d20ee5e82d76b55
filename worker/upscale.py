"""Enlarging an image after rendering: by a learned upscaler where the worker has one.

``enlarge`` is what presets and the ``upscale`` knob call. Without an upscaler it falls
back to Lanczos resampling, so a preset that needs 1600 px still delivers 1600 px on a
worker with no upscale weights; provenance says which was used.

The learned upscaler is an ``upscale``-kind registry entry: a weights file (ESRGAN,
Real-ESRGAN, SwinIR, ...) that spandrel loads by detecting its architecture from the
state dict, so the farm needs no code per architecture. It runs tiled (``upscale_tiled``):
peak device memory follows the tile, never the image. It is GPU work, so the render task
runs its passes on the device lane, inside step 3 and its timing (``upscale_learned``,
called by worker/render.py ``render``), never on the io pool: the lane's busy seconds
then count it, and a torch.compile'd or CUDA-graphed model stays on the thread it was
loaded on (worker/device.py). Only the last exact-size Lanczos step (``fit``) is CPU work,
done on the io pool when the output is encoded.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

LANCZOS = "lanczos"
# Input tile side and the context kept around it, in source pixels. Each tile is upscaled
# with ``TILE_OVERLAP`` px of its neighbours around it and only its own part is kept, as
# Real-ESRGAN's own ``tile_process`` does (tile_pad): an output pixel then sees the same
# neighbourhood as in one untiled call wherever the network's reach is within the overlap
# (the test measures the seams; Real-ESRGAN's default pad is 10). By arithmetic, one
# Real-ESRGAN x4 activation of a 288² tile at the output side is 64 x 1152² fp16 = 162 MiB;
# what a tile really peaks at on a GPU is still to be measured (README "Upscaling").
TILE = 256
TILE_OVERLAP = 16


class Upscaler(Protocol):
    """A learned upscaler on the worker's device: ``scale`` x each side."""

    name: str
    scale: int

    def __call__(self, image: Image.Image) -> Image.Image: ...


def enlarged_size(size: tuple[int, int], factor: float) -> tuple[int, int]:
    """``size`` enlarged ``factor`` times, rounded to whole pixels."""
    return round(size[0] * factor), round(size[1] * factor)


def passes(factor: float, upscaler: Upscaler | None) -> int:
    """How many times ``enlarge`` applies ``upscaler`` for ``factor``: enough to reach it
    (a 2x model asked for 4x: two), none without an upscaler or for factor <= 1."""
    if factor <= 1 or upscaler is None:
        return 0
    return max(1, math.ceil(math.log(factor, upscaler.scale) - 1e-9))


def upscale_learned(image: Image.Image, factor: float, upscaler: Upscaler | None) -> Image.Image:
    """The device part of ``enlarge``: ``upscaler``'s passes alone (``image`` itself when
    there are none). The result is at least ``factor`` x; ``fit`` brings it to size."""
    if upscaler is None:
        return image
    for _ in range(passes(factor, upscaler)):
        image = upscaler(image)
    return image


def fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The CPU part of ``enlarge``: ``image`` brought to ``size`` exactly, by Lanczos."""
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


def enlarge(image: Image.Image, factor: float, upscaler: Upscaler | None = None) -> Image.Image:
    """``image`` enlarged ``factor`` times (rounded to whole pixels): the upscaler applied
    as many times as it takes to reach the size, then Lanczos down to it exactly."""
    size = enlarged_size(image.size, factor)
    return fit(upscale_learned(image, factor, upscaler), size)


def method(factor: float, upscaler: Upscaler | None) -> str:
    """What ``enlarge`` uses for ``factor``: the upscaler's name, or lanczos."""
    return upscaler.name if factor > 1 and upscaler is not None else LANCZOS


def tile_spans(length: int, tile: int) -> list[tuple[int, int]]:
    """[start, end) spans of at most ``tile`` covering ``0..length``."""
    return [(start, min(start + tile, length)) for start in range(0, length, tile)]


def upscale_tiled(
    model: Any, image: Any, scale: int, tile: int = TILE, overlap: int = TILE_OVERLAP
) -> np.ndarray:
    """``image`` (1CHW float in 0..1, on the model's device and dtype) enlarged ``scale``
    times by ``model`` (a spandrel ``ImageModelDescriptor``), one tile at a time.

    Each tile of ``tile`` px is run with ``overlap`` px of context on every side (clipped
    at the image's edges) and only its own region is kept. Device memory is bounded by one
    tile (``(tile + 2 overlap)²`` in, ``scale²`` times that out); the output is assembled
    on the host as HxWx3 uint8, the size of the image it becomes.
    """
    import torch

    _, _, height, width = image.shape
    out = np.empty((height * scale, width * scale, 3), dtype=np.uint8)
    for top, bottom in tile_spans(height, tile):
        for left, right in tile_spans(width, tile):
            y0, x0 = max(top - overlap, 0), max(left - overlap, 0)
            y1, x1 = min(bottom + overlap, height), min(right + overlap, width)
            up = model(image[:, :, y0:y1, x0:x1])
            # This tile's own region within the upscaled, padded tile.
            dy, dx = (top - y0) * scale, (left - x0) * scale
            own = up[0, :, dy : dy + (bottom - top) * scale, dx : dx + (right - left) * scale]
            pixels = own.float().mul(255).round().clamp(0, 255).to(torch.uint8)
            out[top * scale : bottom * scale, left * scale : right * scale] = (
                pixels.permute(1, 2, 0).cpu().numpy()
            )
    return out


class SpandrelUpscaler:
    """An upscale-kind model's weights, loaded through spandrel on the worker's device.

    fp16 on CUDA where the architecture supports it (spandrel says per architecture;
    ESRGAN-family and SwinIR do), float32 elsewhere: CPUs gain nothing from half.
    """

    def __init__(
        self,
        name: str,
        descriptor: Any,
        *,
        tile: int = TILE,
        overlap: int = TILE_OVERLAP,
    ) -> None:
        self.name = name
        self.descriptor = descriptor
        self.scale: int = int(descriptor.scale)
        self.tile = tile
        self.overlap = overlap

    @classmethod
    def load(
        cls, name: str, path: Path, device: str, *, tile: int = TILE, overlap: int = TILE_OVERLAP
    ) -> SpandrelUpscaler:
        """Load ``path`` (.safetensors or .pth) by spandrel's architecture detection.

        Raises ValueError for a file that is no single-image super-resolution model (an
        unknown architecture, an inpainting model, a 1x restoration model)."""
        from spandrel import ImageModelDescriptor, ModelLoader

        descriptor = ModelLoader(device=device).load_from_file(path)
        if not isinstance(descriptor, ImageModelDescriptor) or descriptor.scale < 2:
            raise ValueError(
                f"{path} is a {descriptor.architecture.name} model of purpose "
                f"{descriptor.purpose!r} and scale {descriptor.scale}, not an upscaler"
            )
        if descriptor.input_channels != 3 or descriptor.output_channels != 3:
            raise ValueError(f"{path} is not an RGB model ({descriptor.input_channels} channels)")
        if device.startswith("cuda") and descriptor.supports_half:
            descriptor.half()
        descriptor.eval()
        return cls(name, descriptor, tile=tile, overlap=overlap)

    @property
    def architecture(self) -> str:
        """spandrel's name for the detected architecture (e.g. "ESRGAN")."""
        return str(self.descriptor.architecture.name)

    def __call__(self, image: Image.Image) -> Image.Image:
        """``image`` (any mode; RGB is what is upscaled) ``scale`` times larger, tiled."""
        import torch

        rgb = np.array(image.convert("RGB"))  # a writable copy, as torch wants
        tensor = torch.from_numpy(rgb).to(self.descriptor.device).permute(2, 0, 1)[None]
        tensor = tensor.to(self.descriptor.dtype).div_(255)
        with torch.inference_mode():
            out = upscale_tiled(self.descriptor, tensor, self.scale, self.tile, self.overlap)
        return Image.fromarray(out, "RGB")

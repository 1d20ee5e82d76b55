"""Bringing a rendered output to a marketplace preset's rules (shared/presets.py).

A scene preset (``background = "render"``) reframes the render: enlarged to cover (or fit
inside) the preset's frame, by the worker's upscaler where it has one (worker/upscale.py
``enlarge``, Lanczos otherwise), then center-cropped (or padded on white). A cut-out preset
(``amazon-main``: ``fit = "product"``, ``background = "white"``) is not made of the render
at all: a main image is the product itself on pure white, so it takes the product's own
source pixels through its mask (an inpaint job's keep mask, whose pixels the render kept
bit for bit; or a transparent source's opaque pixels), crops them to the product's bounding
box, scales that to span ``product_fill`` of the frame and pastes it on (255, 255, 255):
every pixel outside the mask is exactly white before encoding.

Encoding is the preset's: its format and quality, sRGB-tagged (shared/images.py
``encode_image``); a JPEG or WebP over ``max_bytes`` is encoded again at lower quality.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from shared.errors import PermanentRenderError
from shared.images import PAD_COLOR, encode_image, resize_image
from shared.presets import Preset
from worker.upscale import Upscaler, enlarge

# A mask pixel from this value up is product (keep masks are 0/255; alpha may be soft).
PRODUCT_THRESHOLD = 128
# How far a JPEG/WebP over max_bytes is taken down, QUALITY_STEP at a time: below 50 a
# product photo shows blocking, so a file still too large then fails the job, saying so.
QUALITY_STEP = 10
LOWEST_QUALITY = 50


@dataclass(frozen=True)
class Cutout:
    """The product alone: its pixels (RGB) and where they are (mode L, 255 = product),
    both the same size."""

    image: Image.Image
    mask: Image.Image


def apply(
    preset: Preset,
    rendered: Image.Image,
    cutout: Cutout | None,
    upscaler: Upscaler | None = None,
) -> Image.Image:
    """``rendered`` (or, for a cut-out preset, ``cutout``) at the preset's size and fit."""
    if preset.needs_cutout:
        if cutout is None:  # the api refuses such jobs; a registry change since may not
            raise PermanentRenderError(
                f"preset {preset.name!r} needs a cut-out of the product: use an inpaint model "
                'with a mask or mask "auto", or a transparent PNG source'
            )
        return on_white(preset, cutout, upscaler)
    return reframe(preset, rendered.convert("RGB"), upscaler)


def enlargement(preset: Preset, size: tuple[int, int]) -> float:
    """How many times a scene preset scales a render of ``size`` to reach its frame (cover
    for crop, fit inside for pad); below 1 it shrinks it."""
    ratios = (preset.width / size[0], preset.height / size[1])
    return max(ratios) if preset.fit == "crop" else min(ratios)


def reframe(preset: Preset, image: Image.Image, upscaler: Upscaler | None) -> Image.Image:
    """Crop (cover, center) or pad (fit inside, on white) ``image`` to the preset's frame,
    enlarging first where the frame is larger than the render."""
    factor = enlargement(preset, image.size)
    if factor > 1:
        image = enlarge(image, factor, upscaler)
    return resize_image(
        image, preset.width, preset.height, "crop" if preset.fit == "crop" else "pad"
    )


def on_white(preset: Preset, cutout: Cutout, upscaler: Upscaler | None) -> Image.Image:
    """The product's pixels, cropped to its bounding box, scaled to span ``product_fill``
    of the frame (on its limiting side) and centered on pure white."""
    solid = cutout.mask.point(lambda v: 255 if v >= PRODUCT_THRESHOLD else 0)
    box = solid.getbbox()
    if box is None:
        raise PermanentRenderError(f"preset {preset.name!r}: the cut-out has no product pixels")
    # Everything outside the mask made white first: resampling the edge then blends the
    # product with white, not with whatever was around it in the source.
    white = Image.new("RGB", cutout.image.size, PAD_COLOR)
    isolated = Image.composite(cutout.image.convert("RGB"), white, cutout.mask)
    product, mask = isolated.crop(box), cutout.mask.crop(box)
    scale = preset.product_fill * min(preset.width / product.width, preset.height / product.height)
    size = (
        min(preset.width, max(1, round(product.width * scale))),
        min(preset.height, max(1, round(product.height * scale))),
    )
    # The product's pixels by the upscaler (or Lanczos); its outline bilinear, which does
    # not ring: Lanczos' overshoot would blend faint product into the white around it.
    product = enlarge(product, scale, upscaler) if scale > 1 else product
    product = product.resize(size, Image.Resampling.LANCZOS)
    mask = mask.resize(size, Image.Resampling.BILINEAR)
    frame = Image.new("RGB", (preset.width, preset.height), PAD_COLOR)
    frame.paste(product, ((preset.width - size[0]) // 2, (preset.height - size[1]) // 2), mask)
    return frame


def encode(preset: Preset, image: Image.Image, xmp: bytes | None = None) -> bytes:
    """``image`` in the preset's format and quality, sRGB-tagged, with ``xmp``; a lossy file
    over ``max_bytes`` is encoded again, QUALITY_STEP lower each time, down to
    LOWEST_QUALITY."""
    quality = preset.quality
    data = encode_image(image, preset.format, xmp=xmp, quality=quality)
    while preset.max_bytes is not None and len(data) > preset.max_bytes:
        if preset.format == "png" or quality <= LOWEST_QUALITY:
            raise PermanentRenderError(
                f"preset {preset.name!r}: the output is {len(data)} bytes at quality {quality}, "
                f"over the channel's {preset.max_bytes}"
            )
        quality = max(LOWEST_QUALITY, quality - QUALITY_STEP)
        data = encode_image(image, preset.format, xmp=xmp, quality=quality)
    return data

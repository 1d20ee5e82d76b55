"""Each built-in marketplace preset applied to a 512² render: its size and format, sRGB,
within its file limit; amazon-main is the product's own pixels on pure white (exactly 255
away from the product) spanning at least 85% of the frame, never the render's scene."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from shared.errors import PermanentRenderError
from shared.images import SRGB_ICC
from shared.presets import load_presets
from worker.presets import Cutout, apply, encode

PRESETS = load_presets(None)
SIZE = 512
# The product in the source: an orange bottle-ish shape in the middle left.
PRODUCT_BOX = (120, 90, 300, 430)
ORANGE = (230, 120, 20)
# JPEG's 8x8 blocks (16x16 with chroma subsampling) near the product's outline may ring;
# every pixel farther than this from the product must be exactly white.
JPEG_REACH = 16


def scene() -> Image.Image:
    """A 'render': a smooth coloured scene, nothing white in it."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    pixels = np.stack([x * 200 // SIZE + 30, y * 180 // SIZE + 40, 160 + 0 * x], -1)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def cutout() -> Cutout:
    """The product's source pixels (on the render's scene, which the mask excludes)."""
    mask = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(mask).rounded_rectangle(PRODUCT_BOX, radius=40, fill=255)
    image = scene()
    image.paste(Image.new("RGB", (SIZE, SIZE), ORANGE), (0, 0), mask)
    return Cutout(image, mask)


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_builtin_preset_size_format_srgb_and_file_limit(name):
    preset = PRESETS[name]
    data = encode(preset, apply(preset, scene(), cutout()))
    image = decoded(data)
    assert image.size == (preset.width, preset.height)
    assert image.format == {"jpeg": "JPEG", "webp": "WEBP", "png": "PNG"}[preset.format]
    assert image.info.get("icc_profile") == SRGB_ICC
    assert preset.max_bytes is None or len(data) <= preset.max_bytes


def test_amazon_main_is_the_product_on_pure_white_filling_the_frame():
    preset = PRESETS["amazon-main"]
    assert (preset.width, preset.format, preset.min_product_fraction) == (1600, "jpeg", 0.85)
    image = np.asarray(decoded(encode(preset, apply(preset, scene(), cutout()))).convert("RGB"))
    # Product: where the pixels are clearly not white (the orange is far from it).
    product = np.abs(image.astype(int) - ORANGE).sum(-1) < 60
    rows, cols = np.nonzero(product)
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert max(height / preset.height, width / preset.width) >= 0.85
    # Every pixel farther than JPEG_REACH from the product's box is exactly (255, 255, 255).
    away = np.ones(product.shape, bool)
    away[
        max(0, rows.min() - JPEG_REACH) : rows.max() + JPEG_REACH + 1,
        max(0, cols.min() - JPEG_REACH) : cols.max() + JPEG_REACH + 1,
    ] = False
    assert away.sum() > 0.2 * away.size  # the product is taller than wide: white each side
    assert (image[away] == 255).all()
    # None of the scene came with it: nothing bluish (the scene's blue is 160, white's 255).
    assert not ((image[..., 2] > 120) & (image[..., 2] < 200) & (image[..., 0] < 200)).any()


def test_amazon_main_before_encoding_is_exactly_white_outside_the_mask():
    preset = PRESETS["amazon-main"]
    frame = np.asarray(apply(preset, scene(), cutout()))
    white = (frame == 255).all(-1)
    # The product (taller than wide) spans 0.9 of the height, centered: left of it is white.
    assert white[:, :400].all() and white[:, -400:].all()


def test_cutout_preset_without_a_cutout_fails_the_job_saying_what_to_do():
    with pytest.raises(PermanentRenderError, match="transparent PNG"):
        apply(PRESETS["amazon-main"], scene(), None)


def test_lossy_file_over_the_limit_is_encoded_again_smaller():
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (512, 512, 3), np.uint8))
    preset = PRESETS["instagram-portrait"]
    first = len(encode(preset, noise))
    limited = type(preset)(**{**preset.__dict__, "max_bytes": first // 2, "width": 512})
    data = encode(limited, noise)
    assert len(data) <= first // 2


def test_png_over_the_limit_fails_naming_the_preset():
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), np.uint8))
    preset = PRESETS["web-hero"]
    png = type(preset)(**{**preset.__dict__, "format": "png", "max_bytes": 4096})
    with pytest.raises(PermanentRenderError, match="web-hero"):
        encode(png, noise)

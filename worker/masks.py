"""Which pixels an inpaint render keeps, and pasting them back so they stay bit-identical.

A keep mask is a mode ``L`` image at the output size: 255 where the source's pixel is kept,
0 where the model repaints. It comes from, in this order:

1. the job's ``mask`` image: its luminance (any alpha flattened onto white) below 128 keeps,
   128 and above repaints ("white = repaint, black = keep"); decoded upright like the
   source (its own EXIF orientation applied), so both are compared as they are seen;
2. otherwise the source's alpha channel: fully opaque pixels (alpha 255) are kept, every
   other pixel, transparent or partly so, is repainted (a product cut-out keeps the product);
3. otherwise nothing is kept: the whole image is repainted.

Mask and alpha are resized with the source's ``resize_mode``, so they line up with it pixel
for pixel; ``pad``'s border is never kept (the model paints it: outpainting).
"""

from __future__ import annotations

from PIL import Image, ImageOps

from shared.errors import PermanentRenderError
from shared.images import ResizeMode, alpha_channel, open_rgb, resize_image

KEEP = 255
REPAINT = 0
MASK_THRESHOLD = 128  # luminance from which a mask pixel means "repaint"
OPAQUE = 255


def keep_mask(
    source: Image.Image, mask_data: bytes | None, width: int, height: int, mode: ResizeMode
) -> Image.Image:
    """The keep mask (see module doc) of a decoded source (RGB or RGBA) at the output size."""
    if mask_data is not None:
        return keep_from_mask(_decode_mask(mask_data, source.size), width, height, mode)
    alpha = alpha_channel(source)
    if alpha is not None:
        return keep_from_alpha(alpha, width, height, mode)
    return Image.new("L", (width, height), REPAINT)


def _decode_mask(data: bytes, source_size: tuple[int, int]) -> Image.Image:
    try:
        mask = open_rgb(data).convert("L")
    except OSError as e:
        raise PermanentRenderError(f"mask image cannot be decoded: {e}") from e
    if mask.size != source_size:
        # Same size, so one resize geometry serves both; the api refuses others up front.
        raise PermanentRenderError(
            f"mask is {mask.width}x{mask.height} but the source is "
            f"{source_size[0]}x{source_size[1]}; they must match"
        )
    return mask


def keep_from_mask(mask: Image.Image, width: int, height: int, mode: ResizeMode) -> Image.Image:
    """Luminance below 128 keeps. Bilinear, then thresholded: a pixel is repainted when
    about half or more of the mask area it covers is white."""
    resized = resize_image(
        mask.convert("L"), width, height, mode, resample=Image.Resampling.BILINEAR, fill=255
    )
    return resized.point(lambda v: KEEP if v < MASK_THRESHOLD else REPAINT)


def keep_from_alpha(alpha: Image.Image, width: int, height: int, mode: ResizeMode) -> Image.Image:
    """Fully opaque keeps. Resampled like the RGB (Lanczos), so it matches what is pasted."""
    resized = resize_image(alpha, width, height, mode, fill=0)
    return resized.point(lambda v: KEEP if v >= OPAQUE else REPAINT)


def repaint_mask(keep: Image.Image) -> Image.Image:
    """The pipeline's ``mask_image``: white repaints, black keeps (the inverse of keep)."""
    return ImageOps.invert(keep)


def paste_kept(rendered: Image.Image, source: Image.Image, keep: Image.Image) -> Image.Image:
    """``rendered`` with every kept pixel replaced by the source's, exactly."""
    if rendered.size != source.size:
        rendered = rendered.resize(source.size, Image.Resampling.LANCZOS)
    return Image.composite(source, rendered.convert("RGB"), keep)

"""Decode, check and encode images. The pixel limit is checked before any pixel is decoded."""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass
from typing import Literal, cast

from PIL import Image, UnidentifiedImageError

from shared.errors import InvalidRequest

OutputFormat = Literal["png", "jpeg", "webp"]
# zlib level of PNG outputs, the worker's biggest CPU cost per image. On photographs
# (bench/encode.py, 512²) level 1 encodes 3.3x faster than Pillow's default 6 for 10% more
# bytes; 9 is 2.2x slower than 6 for 1% fewer. Lossless either way: pixels are the same.
PNG_COMPRESS_LEVEL = 1
# How a source is brought to the requested size: ``fit`` stretches to exactly width x height
# (aspect ratio not kept); ``crop`` scales to cover and center-crops (the default); ``pad``
# scales to fit inside and centers it on white (for inpaint models the padding is repainted).
ResizeMode = Literal["fit", "crop", "pad"]
RESIZE_MODES: tuple[str, ...] = ("fit", "crop", "pad")
PAD_COLOR = (255, 255, 255)
CONTENT_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS: dict[str, str] = {"png": "png", "jpeg": "jpg", "webp": "webp"}
ACCEPTED_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"})
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<b64>;base64)?,(?P<data>.*)$", re.S)


@dataclass(frozen=True)
class CheckedImage:
    """Image bytes that were proven decodable and within limits."""

    data: bytes
    format: str
    width: int
    height: int

    @property
    def content_type(self) -> str:
        return Image.MIME.get(self.format, "application/octet-stream")


def check_image(data: bytes, field: str, max_pixels: int) -> CheckedImage:
    """Prove ``data`` is one image we accept, without decoding a decompression bomb."""
    if not data:
        raise InvalidRequest(field, "is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            # The header gives the size: refuse before decoding any pixel.
            width, height = img.size
            if width * height > max_pixels:
                raise InvalidRequest(
                    field,
                    f"image is {width}x{height} = {width * height} pixels; "
                    f"the limit is {max_pixels}",
                    status_code=413,
                )
            if img.format not in ACCEPTED_FORMATS:
                raise InvalidRequest(field, f"image format {img.format} is not accepted")
            img.load()
    except InvalidRequest:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InvalidRequest(field, f"image is too large: {e}", status_code=413) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InvalidRequest(field, "is not a decodable image (PNG, JPEG, WebP...)") from e
    return CheckedImage(data=data, format=img.format, width=width, height=height)


def parse_data_url(value: str, field: str) -> bytes:
    """The bytes of a ``data:image/...;base64,...`` URL."""
    match = _DATA_URL.match(value)
    if not match or not match.group("b64"):
        raise InvalidRequest(field, "data URL must look like data:image/png;base64,...")
    try:
        return base64.b64decode(match.group("data"), validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidRequest(field, "data URL is not valid base64") from e


def open_rgb(data: bytes) -> Image.Image:
    """Decode checked bytes into an RGB image (alpha flattened onto white)."""
    return flatten(open_rgba(data))


def open_rgba(data: bytes) -> Image.Image:
    """Decode checked bytes into RGB, or RGBA when the image carries transparency."""
    img: Image.Image = Image.open(io.BytesIO(data))
    img.load()
    # "P" and "RGB"/"L" images may carry transparency as a palette entry or a tRNS color.
    if img.mode in ("RGBA", "LA", "PA") or img.info.get("transparency") is not None:
        return img.convert("RGBA")
    return img.convert("RGB")


def flatten(img: Image.Image) -> Image.Image:
    """RGB with any alpha composited onto white (what a product cut-out is shot on)."""
    if img.mode != "RGBA":
        return img.convert("RGB")
    background = Image.new("RGBA", img.size, (*PAD_COLOR, 255))
    return Image.alpha_composite(background, img).convert("RGB")


def alpha_channel(img: Image.Image) -> Image.Image | None:
    """The alpha channel (mode L) of an RGBA image, or None when the image has none."""
    return img.getchannel("A") if img.mode == "RGBA" else None


def has_transparency(data: bytes) -> bool:
    """True when some pixel of the decoded image is not fully opaque."""
    alpha = alpha_channel(open_rgba(data))
    if alpha is None:
        return False
    lowest, _ = cast(tuple[int, int], alpha.getextrema())  # (min, max) of one band
    return lowest < 255


def resize_image(
    img: Image.Image,
    width: int,
    height: int,
    mode: ResizeMode = "crop",
    *,
    resample: Image.Resampling = Image.Resampling.LANCZOS,
    fill: int | tuple[int, ...] = PAD_COLOR,
) -> Image.Image:
    """Bring ``img`` to exactly ``width`` x ``height`` as ``mode`` says (see ``ResizeMode``).

    The geometry depends only on the sizes, so a mask of the source's size resized with the
    same mode lines up with the source pixel for pixel. ``fill`` colours ``pad``'s border.
    An image already at the target size comes back unresampled, pixel for pixel.
    """
    if mode == "fit":
        return img.resize((width, height), resample)
    if mode == "crop":
        scale = max(width / img.width, height / img.height)
        resized = img.resize(
            (max(width, round(img.width * scale)), max(height, round(img.height * scale))),
            resample,
        )
        left = (resized.width - width) // 2
        top = (resized.height - height) // 2
        return resized.crop((left, top, left + width, top + height))
    if mode == "pad":
        scale = min(width / img.width, height / img.height)
        inner = (
            min(width, max(1, round(img.width * scale))),
            min(height, max(1, round(img.height * scale))),
        )
        canvas = Image.new(img.mode, (width, height), fill)
        offset = ((width - inner[0]) // 2, (height - inner[1]) // 2)
        canvas.paste(img.resize(inner, resample), offset)
        return canvas
    raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")


def fit_crop(img: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover ``width``x``height`` and center-crop, keeping the aspect ratio."""
    return resize_image(img, width, height, "crop")


def encode_image(
    img: Image.Image, fmt: OutputFormat, png_compress_level: int = PNG_COMPRESS_LEVEL
) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=png_compress_level)
    elif fmt == "jpeg":
        img.convert("RGB").save(buf, format="JPEG", quality=92)
    else:
        img.save(buf, format="WEBP", quality=92)
    return buf.getvalue()

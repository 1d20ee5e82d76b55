"""Decode, check and encode images. The pixel limit is checked before any pixel is decoded."""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass
from typing import Literal

from PIL import Image, UnidentifiedImageError

from shared.errors import InvalidRequest

OutputFormat = Literal["png", "jpeg", "webp"]
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
    img: Image.Image = Image.open(io.BytesIO(data))
    img.load()
    if img.mode in ("RGBA", "LA", "P"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def fit_crop(img: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover ``width``x``height`` and center-crop, keeping the aspect ratio."""
    scale = max(width / img.width, height / img.height)
    resized = img.resize(
        (max(width, round(img.width * scale)), max(height, round(img.height * scale))),
        Image.Resampling.LANCZOS,
    )
    left = (resized.width - width) // 2
    top = (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


def encode_image(img: Image.Image, fmt: OutputFormat) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG")
    elif fmt == "jpeg":
        img.convert("RGB").save(buf, format="JPEG", quality=92)
    else:
        img.save(buf, format="WEBP", quality=92)
    return buf.getvalue()

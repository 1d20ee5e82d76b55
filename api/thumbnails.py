"""Small previews of sources and outputs for the console's grid: resized once, kept in storage.

A thumbnail is content-addressed by what it is made of (the object's key, the attempt that
wrote it and the size), so it is computed once per output and never goes stale: a rerender
is a new attempt and so a new thumbnail, while the old one stays valid for the old attempt.
"""

from __future__ import annotations

import io

from PIL import Image, ImageOps

from shared.canny import canny_edges
from shared.storage import Storage, thumbnail_key

__all__ = ["cached_thumbnail", "make_thumbnail", "thumbnail_key"]

THUMBNAIL_PX = 256  # the grid's cells are at most this wide on a 2x screen
THUMBNAIL_TYPE = "image/webp"
THUMBNAIL_QUALITY = 80  # webp: about 10 KB at 256 px, no visible loss at cell size


def make_thumbnail(data: bytes, size: int = THUMBNAIL_PX, edges: bool = False) -> bytes:
    """``data`` (any image Pillow opens) upright and fitted into ``size`` x ``size``, as webp;
    with ``edges``, its canny edges at that size (the ones a ControlNet would be given)."""
    with Image.open(io.BytesIO(data)) as opened:
        image = ImageOps.exif_transpose(opened)
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        if edges:
            image = canny_edges(image)
        if image.mode not in ("RGB", "RGBA"):
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        out = io.BytesIO()
        image.save(out, "WEBP", quality=THUMBNAIL_QUALITY, method=4)
        return out.getvalue()


def cached_thumbnail(
    storage: Storage, thumb_key: str, source_key: str, size: int, edges: bool = False
) -> bytes:
    """The stored thumbnail at ``thumb_key``, made from ``source_key`` the first time."""
    if storage.exists(thumb_key):
        return storage.get(thumb_key)
    data = make_thumbnail(storage.get(source_key), size, edges)
    # Two requests racing here write the same bytes to the same key: harmless.
    storage.put(thumb_key, data, THUMBNAIL_TYPE)
    return data

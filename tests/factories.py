"""Builders for test inputs."""

from __future__ import annotations

import base64
import io

from PIL import Image, ImageDraw


def png_bytes(
    width: int = 96, height: int = 80, color: tuple[int, int, int] = (200, 40, 40)
) -> bytes:
    img = Image.new("RGB", (width, height), (240, 240, 240))
    ImageDraw.Draw(img).ellipse((10, 10, width - 10, height - 10), fill=color)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def job_body(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "model": "tiny",
        "prompt": "a red sneaker on a snowy porch",
        "image": data_url(png_bytes()),
        "seed": 7,
    }
    body.update(overrides)
    return body


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A tiny file whose header claims a huge image (mode 1 compresses to almost nothing)."""
    img = Image.new("1", (width, height))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()

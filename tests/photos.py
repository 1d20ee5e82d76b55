"""Image files as cameras, phones and editors write them, built with Pillow at test time:
EXIF-rotated photos, a hand-made Adobe RGB ICC profile, one file per unusual mode."""

from __future__ import annotations

import io
import struct
from typing import Any

import numpy as np
from PIL import Image

# The upright picture every rotated file shows: gray, a red corner top left and a green one
# top right. Wider than tall, so a file shown unrotated has the wrong size too.
UPRIGHT_SIZE = (48, 32)
RED, GREEN, GRAY = (220, 30, 30), (30, 200, 30), (128, 128, 128)
# Where each corner's colour is looked for, upright, and what is at the bottom centre.
MARKS = {(5, 5): RED, (42, 5): GREEN, (24, 27): GRAY}


def upright() -> np.ndarray:
    width, height = UPRIGHT_SIZE
    pixels = np.full((height, width, 3), GRAY, dtype=np.uint8)
    pixels[:12, :12] = RED
    pixels[:12, -12:] = GREEN
    return pixels


def stored_for(orientation: int, pixels: np.ndarray) -> np.ndarray:
    """What a camera stores for ``pixels`` seen upright, by the EXIF definition of each
    value (where the stored rows and columns start on the scene), not by Pillow's table."""
    return {
        1: lambda p: p,  # row 0 top, column 0 left
        2: lambda p: p[:, ::-1],  # top, right: mirrored
        3: lambda p: p[::-1, ::-1],  # bottom, right: upside down
        4: lambda p: p[::-1, :],  # bottom, left
        5: lambda p: np.swapaxes(p, 0, 1),  # left, top
        6: lambda p: np.rot90(p),  # right, top: the phone held upright
        7: lambda p: np.rot90(p)[:, ::-1],  # right, bottom
        8: lambda p: np.rot90(p, -1),  # left, bottom
    }[orientation](pixels)


def oriented_photo(orientation: int, fmt: str = "JPEG", pixels: np.ndarray | None = None) -> bytes:
    """A file in ``fmt`` (JPEG, PNG: eXIf, WebP: EXIF chunk) whose EXIF orientation tag is
    ``orientation`` and whose pixels show ``pixels`` (default ``upright()``) once turned."""
    stored = Image.fromarray(
        np.ascontiguousarray(stored_for(orientation, upright() if pixels is None else pixels))
    )
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    return encoded(stored, fmt, exif=exif.tobytes())


def encoded(img: Image.Image, fmt: str, **options: Any) -> bytes:
    if fmt == "JPEG":
        options.setdefault("quality", 95)
    if fmt == "WEBP":
        options.setdefault("lossless", True)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


# --- ICC profiles -------------------------------------------------------------------------

D50 = np.array([0.9642, 1.0, 0.8249])  # the ICC profile connection space's white
D65 = (0.3127, 0.3290)
_BRADFORD = np.array(
    [[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]]
)
ADOBE_RGB_PRIMARIES = ((0.64, 0.33), (0.21, 0.71), (0.15, 0.06))
SRGB_PRIMARIES = ((0.64, 0.33), (0.30, 0.60), (0.15, 0.06))
ADOBE_RGB_GAMMA = 563 / 256  # 2.19921875, exactly as the Adobe RGB (1998) spec gives it


def _xyz(x: float, y: float) -> np.ndarray:
    return np.array([x / y, 1.0, (1 - x - y) / y])


def rgb_to_xyz(
    primaries: tuple[tuple[float, float], ...], white: tuple[float, float]
) -> np.ndarray:
    """The 3x3 matrix from linear RGB to XYZ of a colour space given by its primaries."""
    columns = np.stack([_xyz(*p) for p in primaries], axis=1)
    return columns * np.linalg.solve(columns, _xyz(*white))


def icc_rgb_profile(
    primaries: tuple[tuple[float, float], ...], gamma: float, name: str, white=D65
) -> bytes:
    """A version 2 matrix/TRC display profile (ICC.1:2001-04): header, tag table, tags."""
    src, dst = _BRADFORD @ _xyz(*white), _BRADFORD @ D50
    to_d50 = np.linalg.inv(_BRADFORD) @ np.diag(dst / src) @ _BRADFORD  # chromatic adaptation
    matrix = to_d50 @ rgb_to_xyz(primaries, white)

    def s15(v: float) -> bytes:
        return struct.pack(">i", round(v * 65536))

    def xyz(values) -> bytes:
        return b"XYZ " + bytes(4) + b"".join(s15(v) for v in values)

    text = name.encode() + b"\0"
    curve = b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256)) + bytes(2)
    tags = [
        (b"desc", b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(78)),
        (b"cprt", b"text" + bytes(4) + b"test data, no rights reserved\0"),
        (b"wtpt", xyz(D50)),
        *((sig, xyz(matrix[:, i])) for i, sig in enumerate((b"rXYZ", b"gXYZ", b"bXYZ"))),
        *((sig, curve) for sig in (b"rTRC", b"gTRC", b"bTRC")),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for sig, body in tags:
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body + bytes(-len(body) % 4)
    header = struct.pack(
        ">I4sI4s4s4s", offset + len(data), b"none", 0x02100000, b"mntr", b"RGB ", b"XYZ "
    )
    header += bytes(12) + b"acsp" + bytes(28) + b"".join(s15(v) for v in D50)
    return header + bytes(128 - len(header)) + struct.pack(">I", len(tags)) + table + data


ADOBE_RGB_ICC = icc_rgb_profile(ADOBE_RGB_PRIMARIES, ADOBE_RGB_GAMMA, "Adobe RGB (1998) compatible")


def adobe_rgb_in_srgb(rgb: tuple[int, int, int]) -> np.ndarray:
    """An Adobe RGB colour in sRGB (0..255, clipped to sRGB's gamut), by the textbook maths:
    linearize, through XYZ (both D65), clip, sRGB's transfer curve."""
    linear = (np.array(rgb) / 255) ** ADOBE_RGB_GAMMA
    to_srgb = np.linalg.solve(rgb_to_xyz(SRGB_PRIMARIES, D65), rgb_to_xyz(ADOBE_RGB_PRIMARIES, D65))
    s = np.clip(to_srgb @ linear, 0, 1)
    return 255 * np.where(s <= 0.0031308, 12.92 * s, 1.055 * s ** (1 / 2.4) - 0.055)


# --- slivers --------------------------------------------------------------------------------


def sliver_png(width: int, height: int) -> bytes:
    """A real, decodable 1-bit PNG of an absurd aspect ratio: a few KB on the wire."""
    return encoded(Image.new("1", (width, height)), "PNG", optimize=True)


# --- products on a studio background (mask "auto", worker/cutout.py) ----------------------

# The shapes a generated product takes: a mug has a hole (background seen through its
# handle), a sneaker a white label (product as light as the background), a pair two parts.
PRODUCT_SHAPES = ("bottle", "sneaker", "mug", "pair", "box")
LABEL = (248, 248, 246)


def _draw_product(draw: Any, shape: str, w: int, h: int, body: Any, label: Any, hole: Any) -> None:
    if shape == "bottle":
        draw.rounded_rectangle((0.38 * w, 0.30 * h, 0.62 * w, 0.85 * h), radius=w // 20, fill=body)
        draw.rectangle((0.46 * w, 0.12 * h, 0.54 * w, 0.31 * h), fill=body)
    elif shape == "sneaker":
        outline = [(0.15, 0.70), (0.20, 0.45), (0.45, 0.40), (0.60, 0.55), (0.85, 0.62)]
        outline += [(0.86, 0.75), (0.15, 0.76)]
        draw.polygon([(x * w, y * h) for x, y in outline], fill=body)
        draw.ellipse((0.22 * w, 0.50 * h, 0.40 * w, 0.60 * h), fill=label)
    elif shape == "mug":
        draw.ellipse((0.58 * w, 0.38 * h, 0.78 * w, 0.62 * h), fill=body)  # handle ring
        draw.ellipse((0.63 * w, 0.44 * h, 0.72 * w, 0.56 * h), fill=hole)
        draw.rectangle((0.28 * w, 0.30 * h, 0.64 * w, 0.75 * h), fill=body)
    elif shape == "pair":  # two shoes apart: two components, both the product
        draw.ellipse((0.10 * w, 0.40 * h, 0.45 * w, 0.65 * h), fill=body)
        draw.ellipse((0.55 * w, 0.38 * h, 0.90 * w, 0.63 * h), fill=body)
    else:
        outline = [(0.30, 0.35), (0.55, 0.25), (0.75, 0.35), (0.75, 0.75), (0.50, 0.85)]
        outline += [(0.30, 0.75)]
        draw.polygon([(x * w, y * h) for x, y in outline], fill=body)


def studio_scene(
    size: tuple[int, int], background: tuple[int, int, int], rng: np.random.Generator
) -> np.ndarray:
    """A plain light backdrop as float RGB: a slight vertical gradient (darker at the top,
    as lit in a studio) and a soft contact shadow along the bottom."""
    from PIL import ImageDraw, ImageFilter

    w, h = size
    ys = np.linspace(-6.0, 0.0, h)[:, None, None]
    scene = np.broadcast_to(np.asarray(background, dtype=np.float64), (h, w, 3)) + ys
    blob = Image.new("L", size, 0)
    ImageDraw.Draw(blob).ellipse((0.12 * w, 0.74 * h, 0.90 * w, 0.90 * h), fill=255)
    blob = blob.filter(ImageFilter.GaussianBlur(w / 30))
    return scene - 28.0 * (np.asarray(blob, dtype=np.float64)[..., None] / 255.0)


def product_on_white(
    shape: str,
    size: tuple[int, int] = (256, 256),
    background: tuple[int, int, int] = (255, 255, 255),
    colour: tuple[int, int, int] = (40, 90, 170),
    *,
    jpeg_quality: int | None = None,
    seed: int = 0,
) -> tuple[Image.Image, np.ndarray]:
    """A generated product shot: ``shape`` in ``colour`` (textured, not flat) on
    ``studio_scene``, sensor noise everywhere, JPEG-compressed at ``jpeg_quality`` if
    given. Returns (RGB image, the product's known mask: True = product)."""
    from PIL import ImageDraw

    w, h = size
    rng = np.random.default_rng(seed)
    known = Image.new("L", size, 0)
    _draw_product(ImageDraw.Draw(known), shape, w, h, 255, 255, 0)
    layer = Image.new("RGB", size, colour)
    _draw_product(ImageDraw.Draw(layer), shape, w, h, colour, LABEL, colour)
    product = np.asarray(known) > 127
    texture = np.asarray(layer, dtype=np.float64) + rng.normal(0, 10, (h, w, 1))
    return finish(
        np.where(product[..., None], texture, studio_scene(size, background, rng)),
        rng,
        jpeg_quality,
    ), product


def finish(scene: np.ndarray, rng: np.random.Generator, jpeg_quality: int | None) -> Image.Image:
    """``scene`` (float RGB) with sensor noise, as 8-bit RGB, through JPEG if asked."""
    noisy = scene + rng.normal(0, 2.0, scene.shape)
    img = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    if jpeg_quality is not None:
        img = Image.open(io.BytesIO(encoded(img, "JPEG", quality=jpeg_quality))).convert("RGB")
    return img


def iou(found: np.ndarray, known: np.ndarray) -> float:
    """Intersection over union of two boolean masks."""
    union = np.logical_or(found, known).sum()
    return float(np.logical_and(found, known).sum() / union) if union else 1.0


def coffee_on_white(
    background: tuple[int, int, int] = (255, 255, 255), *, jpeg_quality: int | None = None
) -> tuple[Image.Image, np.ndarray]:
    """A real photograph's product on a studio backdrop: skimage's ``coffee`` (a cup with a
    spoon on a saucer, shot on a wooden table), cut out along an outline drawn by hand on
    that photo (the saucer's ellipse, the cup's rim, the spoon's handle), composited with a
    one-pixel feathered edge onto ``studio_scene``. The product's pixels, its white rim and
    the spoon's reflections included, are the camera's. Returns (RGB image 600x400, the
    hand-drawn mask: True = product)."""
    from PIL import ImageDraw, ImageFilter
    from skimage import data

    photo = data.coffee()
    h, w = photo.shape[:2]
    outline = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(outline)
    draw.ellipse((77, 70, 479, 391), fill=255)  # the saucer
    draw.ellipse((173, 17, 411, 197), fill=255)  # the cup's rim, above the saucer
    draw.polygon([(396, 80), (404, 68), (416, 66), (424, 74), (418, 100), (405, 110)], fill=255)
    alpha = np.asarray(outline.filter(ImageFilter.GaussianBlur(1)), dtype=np.float64) / 255.0
    rng = np.random.default_rng(3)
    scene = studio_scene((w, h), background, rng)
    composite = alpha[..., None] * photo + (1 - alpha[..., None]) * scene
    return finish(composite, rng, jpeg_quality), np.asarray(outline) > 127

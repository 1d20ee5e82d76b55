"""Decode, check and encode images.

Every image the farm reads goes through ``open_rgba``: upright (EXIF orientation applied),
8-bit (high bit depths scaled, not clipped) and in sRGB (an embedded ICC profile converted),
as RGB or RGBA. The api's checks and the worker both see those pixels, so a size the api
compares is the size the worker resizes. The pixel limit and the aspect-ratio limit are
checked on the header, before any pixel is decoded; resizing costs memory in proportion to
the output, whatever the source's shape (``resize_image``).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
import struct
from dataclasses import dataclass
from typing import Literal, cast

from PIL import Image, ImageCms, ImageFile, ImageOps, PngImagePlugin, UnidentifiedImageError

from shared.errors import InvalidRequest

OutputFormat = Literal["png", "jpeg", "webp"]
# zlib level of PNG outputs, the worker's biggest CPU cost per image. On photographs
# (bench/output_cost.py, 512²) level 1 encodes 3.3x faster than Pillow's default 6 for 10% more
# bytes; 9 is 2.2x slower than 6 for 1% fewer. Lossless either way: pixels are the same.
PNG_COMPRESS_LEVEL = 1
# How a source is brought to the requested size: ``fit`` stretches to exactly width x height
# (aspect ratio not kept); ``crop`` scales to cover and center-crops (the default); ``pad``
# scales to fit inside and centers it on white (for inpaint models the padding is repainted).
ResizeMode = Literal["fit", "crop", "pad"]
RESIZE_MODES: tuple[str, ...] = ("fit", "crop", "pad")
PAD_COLOR = (255, 255, 255)
# Pillow reduces by an integer factor (a box average) before resampling when the scale is
# over this many times: the resampling filter then spans a few source pixels per output
# pixel, not thousands (its coefficient tables grow with the scale: a 16777216-wide sliver
# to 512 would take ~800 MB of them). 3.0 is what Pillow's docs call indistinguishable from
# fair resampling; below 3x it changes nothing.
REDUCING_GAP = 3.0
CONTENT_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS: dict[str, str] = {"png": "png", "jpeg": "jpg", "webp": "webp"}
# What product photos come as: phones write JPEG (MPO, a JPEG with extra frames, on many
# Android phones and cameras; AVIF more and more), editors and shops PNG, WebP and AVIF,
# studios and DAMs TIFF; GIF and BMP from older catalogues. Only these decoders ever see
# client bytes. HEIC is not here: Pillow needs the pillow-heif plugin for it.
ACCEPTED_FORMATS = frozenset({"PNG", "JPEG", "MPO", "WEBP", "AVIF", "GIF", "BMP", "TIFF"})
# Pillow's plugins for them, tried in this order (JPEG's opens MPO too). AVIF only where
# this Pillow was built with it.
_DECODERS = ("PNG", "JPEG", "WEBP", "AVIF", "GIF", "BMP", "TIFF")
# An MPO is a JPEG to every browser and reader: stored and served as one.
_MIME = {"MPO": "image/jpeg"}
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<b64>;base64)?,(?P<data>.*)$", re.S)
_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
# Embedded in JPEG and WebP outputs (588 bytes); PNG outputs carry the 1-byte sRGB chunk.
SRGB_ICC = _SRGB.tobytes()
# Modes with 16-bit samples (PNG and TIFF grayscale; "I" is how older Pillows and some
# TIFFs hold them): Pillow's convert("L") clips them at 255, nearly all white.
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
# The ICC colour space (header field, padded to 4) each 8-bit mode's pixels are in.
_ICC_SPACES = {"RGB": "RGB", "RGBA": "RGB", "L": "GRAY", "LA": "GRAY", "CMYK": "CMYK"}


@dataclass(frozen=True)
class CheckedImage:
    """Image bytes that were proven decodable and within limits; the size is upright."""

    data: bytes
    format: str
    width: int
    height: int

    @property
    def content_type(self) -> str:
        return _MIME.get(self.format) or Image.MIME.get(self.format, "application/octet-stream")


def check_image(data: bytes, field: str, max_pixels: int, max_aspect_ratio: float) -> CheckedImage:
    """Prove ``data`` is one image we accept, without decoding a decompression bomb.

    ``max_pixels`` and ``max_aspect_ratio`` (longest over shortest side) are checked on the
    header, before Pillow's own bomb check could answer with its limit instead of ours
    (413, 422); then the image is decoded as the worker will decode it.
    """
    if not data:
        raise InvalidRequest(field, "is empty")
    try:
        header = _open_header(data)
        _check_shape(header.size, field, max_pixels, max_aspect_ratio)
        image = open_rgba(data)
    except InvalidRequest:
        raise
    except Image.DecompressionBombError as e:  # a later frame or tile claims more
        raise InvalidRequest(field, f"image is too large: {e}", status_code=413) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        accepted = ", ".join(sorted(ACCEPTED_FORMATS))
        raise InvalidRequest(
            field, f"is not a decodable image in a format we accept ({accepted})"
        ) from e
    return CheckedImage(
        data=data, format=str(header.format), width=image.width, height=image.height
    )


def _check_shape(
    size: tuple[int, int], field: str, max_pixels: int, max_aspect_ratio: float
) -> None:
    width, height = size
    if width * height > max_pixels:
        raise InvalidRequest(
            field,
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
            status_code=413,
        )
    ratio = max(width, height) / max(1, min(width, height))
    if ratio > max_aspect_ratio:
        raise InvalidRequest(
            field,
            f"image is {width}x{height}, an aspect ratio of {ratio:.4g}:1; "
            f"the limit is {max_aspect_ratio:g}:1",
        )


def _open_header(data: bytes) -> ImageFile.ImageFile:
    """``Image.open`` limited to the accepted formats' decoders, without its bomb check.

    Pillow refuses (or warns about) images over its own MAX_IMAGE_PIXELS while opening,
    with a message quoting its limit, not ours; and a process-wide setting of it would race
    between threads. Only the header is read: the caller checks our limits next.
    """
    Image.init()
    prefix = data[:16]
    for name in _DECODERS:
        if name not in Image.OPEN:
            continue  # a Pillow built without it (AVIF)
        factory, accept = Image.OPEN[name]
        if accept is not None and accept(prefix) is not True:
            continue
        try:
            return factory(io.BytesIO(data), "")
        except (SyntaxError, IndexError, TypeError, struct.error) as e:
            raise UnidentifiedImageError(f"not a valid {name} file: {e}") from e
    raise UnidentifiedImageError("not an image in an accepted format")


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
    """Decode checked bytes as ``open_rgba`` does, then flatten any alpha onto white."""
    return flatten(open_rgba(data))


def open_rgba(data: bytes) -> Image.Image:
    """Decode bytes that passed ``check_image``: upright, 8-bit, sRGB; RGB, or RGBA when the
    image carries transparency. The first frame of a multi-frame file (MPO, GIF, TIFF).

    The one way the farm decodes an image: the api's checks and the worker's prepare step
    see the same pixels at the same size.
    """
    img = _open_header(data)
    img.load()
    icc = img.info.get("icc_profile")
    # EXIF (JPEG APP1, PNG eXIf, WebP EXIF) or XMP orientation: phones store the sensor's
    # landscape pixels and a tag saying how to turn them.
    ImageOps.exif_transpose(img, in_place=True)
    srgb = _to_srgb(_to_8bit(img), icc)
    mode = "RGBA" if "A" in srgb.getbands() else "RGB"
    out = srgb if srgb.mode == mode else srgb.convert(mode)
    # Nothing of the file's metadata may reach an output: its profile no longer describes
    # these pixels, its EXIF no longer their orientation.
    out.info = {}
    return out


def _to_8bit(img: Image.Image) -> Image.Image:
    """L, LA, RGB, RGBA or CMYK (or a mode ``convert`` turns into RGB): deeper samples
    scaled to 8 bits, palettes and transparency colours expanded."""
    if img.mode in _SIXTEEN_BIT:
        # 0..65535 to 0..255, rounded (Pillow's point() on "I": value * scale + offset).
        return img.convert("I").point(lambda v: v * (1 / 257) + 0.5).convert("L")
    if img.mode == "F":  # floating-point TIFF: 0.0 black .. 1.0 white
        return img.point(lambda v: v * 255 + 0.5).convert("L")
    if img.mode == "1":
        return img.convert("L")
    # A palette entry or a tRNS colour marks transparent pixels; PA has an alpha band.
    if img.mode in ("P", "PA", "L", "RGB") and img.info.get("transparency") is not None:
        return img.convert("LA" if img.mode == "L" else "RGBA")
    if img.mode in ("P", "PA"):
        return img.convert("RGBA" if img.mode == "PA" else "RGB")
    return img


def _to_srgb(img: Image.Image, icc: bytes | None) -> Image.Image:
    """``img``'s pixels in sRGB, converted from the embedded ICC profile (Adobe RGB, Display
    P3, a CMYK press profile, a gray gamma...). Without a profile they are taken as sRGB, as
    browsers take them; so is a profile that cannot be read or that does not describe the
    image's colour space (e.g. an RGB profile on a grayscale image), as browsers ignore it."""
    space = _ICC_SPACES.get(img.mode)
    if not icc or space is None:
        return img
    alpha = img.getchannel("A") if img.mode in ("LA", "RGBA") else None
    colour = img.convert(img.mode[:-1]) if alpha is not None else img
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if profile.profile.xcolor_space.strip() != space or _is_srgb(profile):
            return img
        # Perceptual intent: LUT profiles (CMYK) map their gamut as their makers meant;
        # matrix profiles (RGB, gray) have only the colorimetric mapping.
        out = ImageCms.profileToProfile(colour, profile, _SRGB, outputMode="RGB")
    except (OSError, ImageCms.PyCMSError):
        return img
    assert out is not None  # None only with inPlace=True
    if alpha is not None:
        out.putalpha(alpha)
    return out


def _is_srgb(profile: ImageCms.ImageCmsProfile) -> bool:
    """Whether ``profile`` is sRGB itself (by name and primaries), as most cameras and many
    phones embed: converting would cost ~30 ms of CPU per megapixel to change nothing."""
    theirs, ours = profile.profile, _SRGB.profile
    if "srgb" not in (theirs.profile_description or "").lower():
        return False
    pairs = [
        (theirs.red_colorant, ours.red_colorant),
        (theirs.green_colorant, ours.green_colorant),
        (theirs.blue_colorant, ours.blue_colorant),
    ]
    for a, b in pairs:  # ((X, Y, Z), (x, y, Y)) of each primary, adapted to D50
        if a is None or b is None:
            return False
        if not all(math.isclose(u, v, abs_tol=0.002) for u, v in zip(a[0], b[0], strict=True)):
            return False
    return True


def flatten(img: Image.Image) -> Image.Image:
    """RGB with any alpha composited onto white (what a product cut-out is shot on)."""
    if img.mode != "RGBA":
        return img.convert("RGB")
    background = Image.new("RGBA", img.size, (*PAD_COLOR, 255))
    return Image.alpha_composite(background, img).convert("RGB")


def alpha_channel(img: Image.Image) -> Image.Image | None:
    """The alpha channel (mode L) of an RGBA image, or None when the image has none."""
    return img.getchannel("A") if img.mode == "RGBA" else None


def has_transparency(img: Image.Image) -> bool:
    """True when some pixel of a decoded image (``open_rgba``) is not fully opaque."""
    alpha = alpha_channel(img)
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
    An image already at the target size comes back unresampled, pixel for pixel. Memory
    goes with the output, whatever the source's shape: no intermediate larger than either.
    """
    if mode == "fit":
        return img.resize((width, height), resample, reducing_gap=REDUCING_GAP)
    if mode == "crop":
        # The region of the source that covers the output, in source coordinates, resampled
        # straight to the output: a sliver scaled to cover first would be the sliver's
        # length times the scale (65536x64 to 512² crop: 524288x512 pixels, 0.8 GB).
        return img.resize(
            (width, height),
            resample,
            box=crop_box(img.size, width, height),
            reducing_gap=REDUCING_GAP,
        )
    if mode == "pad":
        scale = min(width / img.width, height / img.height)
        inner = (
            min(width, max(1, round(img.width * scale))),
            min(height, max(1, round(img.height * scale))),
        )
        canvas = Image.new(img.mode, (width, height), fill)
        offset = ((width - inner[0]) // 2, (height - inner[1]) // 2)
        canvas.paste(img.resize(inner, resample, reducing_gap=REDUCING_GAP), offset)
        return canvas
    raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")


def crop_box(size: tuple[int, int], width: int, height: int) -> tuple[float, float, float, float]:
    """The centered region of an image of ``size`` with the aspect ratio of ``width`` x
    ``height``, as large as fits: what ``crop`` scales to the output."""
    scale = max(width / size[0], height / size[1])
    box_width, box_height = min(size[0], width / scale), min(size[1], height / scale)
    left, top = (size[0] - box_width) / 2, (size[1] - box_height) / 2
    return (left, top, left + box_width, top + box_height)


def fit_crop(img: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover ``width``x``height`` and center-crop, keeping the aspect ratio."""
    return resize_image(img, width, height, "crop")


def encode_image(
    img: Image.Image,
    fmt: OutputFormat,
    png_compress_level: int = PNG_COMPRESS_LEVEL,
    xmp: bytes | None = None,
    quality: int = 92,
) -> bytes:
    """``img`` (sRGB pixels) in ``fmt``, saying it is sRGB: PNG's sRGB chunk, an embedded
    sRGB ICC profile in JPEG and WebP. Nothing else of any input's metadata is written, but
    ``xmp`` (a packet, worker/labels.py): PNG's iTXt ``XML:com.adobe.xmp``, JPEG's APP1,
    WebP's XMP chunk. ``quality``: JPEG's and WebP's (a marketplace preset's, else 92)."""
    buf = io.BytesIO()
    if fmt == "png":
        chunks = PngImagePlugin.PngInfo()
        chunks.add(b"sRGB", b"\x00")  # rendering intent: perceptual
        if xmp is not None:  # Pillow's xmp= does not reach PNG files: the chunk, by hand
            chunks.add_itxt("XML:com.adobe.xmp", xmp.decode(), zip=False)
        # icc_profile=None: PNG would fall back to img.info's; sRGB and iCCP exclude each other.
        img.save(
            buf, format="PNG", compress_level=png_compress_level, pnginfo=chunks, icc_profile=None
        )
    elif fmt == "jpeg":
        img.convert("RGB").save(
            buf, format="JPEG", quality=quality, icc_profile=SRGB_ICC, xmp=xmp or b""
        )
    else:
        img.save(buf, format="WEBP", quality=quality, icc_profile=SRGB_ICC, xmp=xmp or b"")
    return buf.getvalue()

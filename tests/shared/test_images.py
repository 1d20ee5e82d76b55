"""Image checks: bombs and slivers refused before decoding, non-images refused, formats
encoded as sRGB; real photos (rotated, 16-bit, MPO, Adobe RGB) decoded upright and in sRGB;
resizing bounded by the output."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageCms

from shared.errors import InvalidRequest
from shared.images import (
    SRGB_ICC,
    check_image,
    encode_image,
    fit_crop,
    open_rgba,
    parse_data_url,
)
from tests.factories import bomb_png, data_url, png_bytes
from tests.photos import (
    ADOBE_RGB_ICC,
    GREEN,
    MARKS,
    RED,
    UPRIGHT_SIZE,
    adobe_rgb_in_srgb,
    encoded,
    oriented_photo,
    sliver_png,
)


def test_accepts_a_png_and_reports_its_size():
    checked = check_image(png_bytes(96, 80), "image", 10_000, 16)
    assert (checked.width, checked.height, checked.content_type) == (96, 80, "image/png")


def test_refuses_pixel_bomb_with_413_before_decoding():
    data = bomb_png()
    assert len(data) < 200_000, "the bomb must be small on the wire"
    with pytest.raises(InvalidRequest) as e:
        check_image(data, "image", 4096 * 4096, 16)
    assert e.value.status_code == 413 and e.value.field == "image"
    assert "400000000" in e.value.message


@pytest.mark.parametrize("data", [b"%PDF-1.4 not an image", b"\x89PNG\r\n\x1a\n truncated", b""])
def test_refuses_non_images(data):
    with pytest.raises(InvalidRequest) as e:
        check_image(data, "files[0]", 10**6, 16)
    assert e.value.field == "files[0]"


def test_data_url_round_trip_and_errors():
    assert parse_data_url(data_url(b"abc"), "image") == b"abc"
    with pytest.raises(InvalidRequest, match="base64"):
        parse_data_url("data:image/png;base64,@@@", "image")
    with pytest.raises(InvalidRequest, match="data URL"):
        parse_data_url("data:image/png,rawtext", "image")


def test_fit_crop_gives_exact_size_keeping_center():
    img = Image.new("RGB", (200, 100), (0, 0, 255))
    out = fit_crop(img, 64, 64)
    assert out.size == (64, 64)


@pytest.mark.parametrize("fmt,pil_format", [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_encode_formats(fmt, pil_format):
    data = encode_image(Image.new("RGB", (32, 24)), fmt)
    assert Image.open(io.BytesIO(data)).format == pil_format


def test_png_compress_level_trades_bytes_for_time_never_pixels():
    # A smooth gradient with some texture: compressible, unlike random noise.
    img = Image.radial_gradient("L").convert("RGB").resize((128, 128))
    img.paste(Image.effect_noise((32, 32), 40).convert("RGB"), (48, 48))
    stored = encode_image(img, "png", png_compress_level=0)
    fast = encode_image(img, "png", png_compress_level=1)
    small = encode_image(img, "png", png_compress_level=9)
    assert len(stored) > len(fast) >= len(small), "the level reaches zlib"
    for data in (stored, fast, small):
        assert Image.open(io.BytesIO(data)).tobytes() == img.tobytes()


# --- real photos in: upright, 8-bit, sRGB ----------------------------------------------------


def close(pixel: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_opens_upright(orientation, fmt):
    data = oriented_photo(orientation, fmt)
    img = open_rgba(data)
    assert img.size == UPRIGHT_SIZE
    for xy, colour in MARKS.items():
        assert close(img.getpixel(xy), colour), (xy, img.getpixel(xy), colour)
    checked = check_image(data, "image", 10_000, 16)
    assert (checked.width, checked.height) == UPRIGHT_SIZE, "uploads report the upright size"


def palette_with_trns() -> Image.Image:
    img = Image.new("P", (8, 8), 0)
    img.putpalette([128, 128, 128, 255, 0, 0])
    img.paste(1, (4, 0, 8, 8))  # the right half: index 1, transparent
    img.info["transparency"] = 1
    return img


@pytest.mark.parametrize(
    "mode,make,expected",
    [
        # 16-bit gray: mid-gray (32768 of 65535) stays mid-gray; a clip made it white.
        ("I;16", lambda: Image.new("I;16", (8, 8), 32768), (128, 128, 128)),
        ("I;16B", lambda: Image.frombytes("I;16B", (8, 8), bytes([64, 0]) * 64), (64, 64, 64)),
        ("I", lambda: Image.new("I", (8, 8), 49152), (191, 191, 191)),
        ("F", lambda: Image.new("F", (8, 8), 0.5), (128, 128, 128)),
        ("LA", lambda: Image.new("LA", (8, 8), (128, 100)), (128, 128, 128, 100)),
        ("P", palette_with_trns, (128, 128, 128, 255)),
        ("CMYK", lambda: Image.new("CMYK", (8, 8), (0, 0, 0, 127)), (128, 128, 128)),
        ("1", lambda: Image.new("1", (8, 8), 1), (255, 255, 255)),
        ("L", lambda: Image.new("L", (8, 8), 77), (77, 77, 77)),
    ],
)
def test_every_mode_comes_out_8_bit_rgb_scaled_not_clipped(mode, make, expected):
    img = make()
    assert img.mode == mode
    fmt = "PNG" if mode in ("I;16", "LA", "P", "1", "L") else "TIFF"
    out = open_rgba(encoded(img, fmt))
    assert out.mode == ("RGBA" if len(expected) == 4 else "RGB")
    assert close(out.getpixel((2, 3)), expected, tolerance=1), out.getpixel((2, 3))
    if mode == "P":
        assert out.getpixel((6, 3))[3] == 0, "the tRNS entry stays transparent"


def test_mpo_from_phones_and_cameras_is_accepted_as_its_first_frame():
    first, second = Image.new("RGB", (40, 30), RED), Image.new("RGB", (40, 30), GREEN)
    buf = io.BytesIO()
    first.save(buf, format="MPO", save_all=True, append_images=[second])
    checked = check_image(buf.getvalue(), "image", 10_000, 16)
    assert (checked.format, checked.content_type) == ("MPO", "image/jpeg")
    assert close(open_rgba(checked.data).getpixel((20, 15)), RED)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_an_adobe_rgb_source_is_converted_to_srgb(fmt):
    colour = (100, 200, 100)  # a green Adobe RGB holds and sRGB can barely show
    src = Image.new("RGB", (16, 16), colour)
    out = open_rgba(encoded(src, fmt, icc_profile=ADOBE_RGB_ICC))
    pixel = out.getpixel((8, 8))
    expected = adobe_rgb_in_srgb(colour)  # ~(0, 201, 92): red and blue drop, green holds
    assert close(pixel, tuple(round(v) for v in expected), tolerance=3), (pixel, expected)
    assert "icc_profile" not in out.info, "the pixels are sRGB now, the profile is gone"


def test_icc_conversion_keeps_alpha_and_ignores_a_broken_profile():
    src = Image.new("RGBA", (16, 16), (100, 200, 100, 77))
    out = open_rgba(encoded(src, "PNG", icc_profile=ADOBE_RGB_ICC))
    assert out.mode == "RGBA" and out.getpixel((8, 8))[3] == 77
    assert out.getpixel((8, 8))[0] < 10, "converted"
    # A profile that cannot be read: the pixels are taken as sRGB, as browsers take them.
    broken = open_rgba(encoded(src, "PNG", icc_profile=b"not an icc profile at all"))
    assert broken.getpixel((8, 8)) == (100, 200, 100, 77)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_outputs_say_they_are_srgb(fmt):
    # An echo of an Adobe RGB source: its pixels are sRGB, its old profile must not follow.
    source = open_rgba(
        encoded(Image.new("RGB", (8, 8), (9, 9, 9)), "PNG", icc_profile=ADOBE_RGB_ICC)
    )
    out = Image.open(io.BytesIO(encode_image(source, fmt)))
    if fmt == "png":
        assert out.info.get("srgb") == 0 and "icc_profile" not in out.info
    else:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(out.info["icc_profile"]))
        assert "sRGB" in profile.profile.profile_description


# --- limits on the header; memory that goes with the output --------------------------------


def test_pixel_limit_413_names_our_limit_not_pillows():
    # 400 Mpx: over Pillow's own bomb limits (89478485, 2x that), which fired first.
    with pytest.raises(InvalidRequest) as e:
        check_image(bomb_png(), "image", 4096 * 4096, 16)
    assert e.value.status_code == 413
    assert "the limit is 16777216" in e.value.message, e.value.message
    assert "89478485" not in e.value.message and "178956970" not in e.value.message


@pytest.mark.parametrize("size", [(65536, 64), (64, 65536), (16_777_216, 1)])
def test_absurd_aspect_ratio_is_refused_naming_the_field(size):
    with pytest.raises(InvalidRequest) as e:
        check_image(sliver_png(*size), "mask", 4096 * 4096, 16)
    assert e.value.status_code == 422 and e.value.field == "mask"
    assert "aspect ratio" in e.value.message and "16:1" in e.value.message
    assert check_image(sliver_png(1024, 64), "mask", 4096 * 4096, 16).width == 1024, "16:1 is in"


PEAK_RSS = """
import resource, sys
from PIL import Image
from shared.images import resize_image
img = Image.new("RGB", (65536, 64), (128, 128, 128))
sliver = Image.new("RGB", (16_777_216, 1), (128, 128, 128))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for mode in ("crop", "pad", "fit"):
    for side in (512, 2048):
        assert resize_image(img, side, side, mode).size == (side, side)
    assert resize_image(sliver, 512, 512, mode).size == (512, 512)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_resizing_a_sliver_costs_memory_in_proportion_to_the_output():
    """65536x64 to a 512² crop scaled the whole sliver first (524288x512: 1.2 GB peak);
    at 2048² it was 12 GiB, and the 16777216x1 sliver overflowed. Pillow allocates in C,
    so the peak resident size of a fresh process is what is measured."""
    result = subprocess.run(
        [sys.executable, "-c", PEAK_RSS],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr
    grown_mib = int(result.stdout)
    # Outputs are 0.75 MiB (512²) and 12 MiB (2048²) of RGB; leave room for Pillow's tables.
    assert grown_mib < 100, f"resizing grew the process by {grown_mib} MiB"


def test_an_embedded_srgb_profile_costs_no_conversion(monkeypatch):
    """Most cameras embed sRGB: a transform to sRGB would be ~30 ms of CPU per Mpx for nothing."""
    calls = []
    convert = ImageCms.profileToProfile
    monkeypatch.setattr(
        ImageCms, "profileToProfile", lambda *a, **k: calls.append(1) or convert(*a, **k)
    )
    src = Image.new("RGB", (8, 8), (100, 200, 100))
    assert open_rgba(encoded(src, "PNG", icc_profile=SRGB_ICC)).getpixel((4, 4)) == (100, 200, 100)
    assert calls == []
    open_rgba(encoded(src, "PNG", icc_profile=ADOBE_RGB_ICC))
    assert calls == [1], "other profiles are converted"

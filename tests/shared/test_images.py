"""Image checks: bombs refused before decoding, non-images refused, formats encoded."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from shared.errors import InvalidRequest
from shared.images import check_image, encode_image, fit_crop, parse_data_url
from tests.factories import bomb_png, data_url, png_bytes


def test_accepts_a_png_and_reports_its_size():
    checked = check_image(png_bytes(96, 80), "image", 10_000)
    assert (checked.width, checked.height, checked.content_type) == (96, 80, "image/png")


def test_refuses_pixel_bomb_with_413_before_decoding():
    data = bomb_png()
    assert len(data) < 200_000, "the bomb must be small on the wire"
    with pytest.raises(InvalidRequest) as e:
        check_image(data, "image", 4096 * 4096)
    assert e.value.status_code == 413 and e.value.field == "image"
    assert "400000000" in e.value.message


@pytest.mark.parametrize("data", [b"%PDF-1.4 not an image", b"\x89PNG\r\n\x1a\n truncated", b""])
def test_refuses_non_images(data):
    with pytest.raises(InvalidRequest) as e:
        check_image(data, "files[0]", 10**6)
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

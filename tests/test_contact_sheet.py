"""The demo's contact sheet: escaped captions, the kept region outlined on the sheet only."""

from __future__ import annotations

import numpy as np
from PIL import Image

from imgfarm.contact_sheet import OUTLINE, TILE, Row, Tile, render_html, render_png, tile_image


def test_sheet_html_escapes_every_text():
    hostile = '<script>alert("x")</script> & more'
    tile = Tile(Image.new("RGB", (64, 64)), hostile, (hostile,), href='a".png')

    page = render_html(hostile, [Row(hostile, [tile])], png_href='b"<.png')

    assert "<script>" not in page
    escaped = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more"
    assert page.count(escaped) == 6, "title, h1, h2, alt, tile name, caption"
    assert 'href="a&quot;.png"' in page and 'href="b&quot;&lt;.png"' in page


def test_kept_region_outline_is_drawn_on_the_tile_not_the_render():
    render = Image.new("RGB", (64, 64), (128, 128, 128))
    keep = Image.new("L", (64, 64), 0)
    keep.paste(255, (16, 16, 48, 48))  # kept: a 32 px square in the middle

    tile = np.asarray(tile_image(Tile(render, "inpaint", keep=keep)))

    assert tile.shape == (TILE, TILE, 3)
    outlined = np.all(tile == OUTLINE, axis=-1)
    scale = TILE // 64
    lo, hi = 16 * scale, 48 * scale  # the square's border on the tile
    assert outlined[lo, lo:hi].all() and outlined[hi - 1, lo:hi].all()
    assert outlined[lo:hi, lo].all() and outlined[lo:hi, hi - 1].all()
    assert not outlined[: lo - 1].any() and not outlined[lo + 2 : hi - 2, lo + 2 : hi - 2].any()
    assert np.all(np.asarray(render) == 128), "the render itself is left untouched"


def test_a_large_portrait_image_is_shrunk_whole_into_its_tile():
    """A marketplace image (1080x1350) fits the tile whole, aspect kept, on white."""
    portrait = Image.new("RGB", (1080, 1350), (200, 30, 30))

    tile = np.asarray(tile_image(Tile(portrait, "Instagram portrait post 1080×1350")))

    assert tile.shape == (TILE, TILE, 3)
    red = np.all(tile == (200, 30, 30), axis=-1)
    rows, cols = np.nonzero(red)
    assert (rows.min(), rows.max() + 1) == (0, TILE)  # the full height
    assert cols.max() + 1 - cols.min() == round(TILE * 1080 / 1350)  # 4:5, not stretched
    assert np.all(tile[:, : cols.min()] == 255) and np.all(tile[:, cols.max() + 1 :] == 255)


def test_the_png_draws_what_its_font_lacks_as_ascii_and_the_html_keeps_it():
    def sheet(title: str) -> bytes:
        tile = Tile(Image.new("RGB", (64, 64)), title, (f"caption {title}",))
        return render_png(title, [Row(title, [tile])])

    assert sheet("1600×1600 – 2048²") == sheet("1600x1600 - 20482")  # no box glyphs
    tile = Tile(Image.new("RGB", (64, 64)), "1600×1600")
    assert "1600×1600" in render_html("t", [Row("r", [tile])], png_href="s.png")

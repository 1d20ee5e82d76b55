"""A contact sheet: captioned tiles of small renders, as one PNG and as an HTML page."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

# 64 px renders scaled 3x with NEAREST: every pixel stays visible, labels stay legible.
TILE = 192
GAP = 12
FONT_SIZE = 12
LINE = FONT_SIZE + 4
OUTLINE = (255, 0, 255)  # magenta: rare in product shots, visible on noise
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
MUTED = (90, 90, 90)


@dataclass(frozen=True)
class Tile:
    """One image on the sheet; ``keep`` (mode L, non-zero = kept) gets its outline drawn."""

    image: Image.Image
    title: str
    caption: Sequence[str] = ()
    href: str = ""
    keep: Image.Image | None = None


@dataclass(frozen=True)
class Row:
    """A heading and the tiles under it."""

    heading: str
    tiles: Sequence[Tile] = field(default_factory=tuple)


def tile_image(tile: Tile) -> Image.Image:
    """The tile in a ``TILE`` px square, its aspect ratio kept (centered on white), with the
    outline of its kept region if any. A render smaller than the tile is scaled up with
    NEAREST (every pixel stays visible); a larger one (a marketplace image, 1600 px) down
    with Lanczos."""
    image = tile.image.convert("RGB")
    scale = TILE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
    scaled = image.resize(size, resample)
    if tile.keep is not None:
        keep = tile.keep.convert("L").point(lambda v: 255 if v else 0)
        keep = keep.resize(size, Image.Resampling.NEAREST)
        # The kept region minus its 2 px erosion: a band just inside its border.
        edge = ImageChops.subtract(keep, keep.filter(ImageFilter.MinFilter(5)))
        scaled.paste(OUTLINE, mask=edge)
    if size == (TILE, TILE):
        return scaled
    framed = Image.new("RGB", (TILE, TILE), BACKGROUND)
    framed.paste(scaled, ((TILE - size[0]) // 2, (TILE - size[1]) // 2))
    return framed


# Characters Pillow's built-in font lacks (drawn as a box), and what the PNG shows instead;
# the HTML sheet keeps them.
PNG_FALLBACKS = str.maketrans({"×": "x", "²": "2", "–": "-", "—": "-"})


def _drawable(text: str) -> str:
    return text.translate(PNG_FALLBACKS)


def render_png(title: str, rows: Sequence[Row]) -> bytes:
    """The sheet as PNG bytes: a title, then each row's heading and captioned tiles."""
    font = ImageFont.load_default(size=FONT_SIZE)
    wrapped = {
        id(tile): [_drawable(tile.title), *_wrap_all([_drawable(c) for c in tile.caption], font)]
        for row in rows
        for tile in row.tiles
    }
    caption_h = LINE * max((len(lines) for lines in wrapped.values()), default=1)
    row_h = LINE + TILE + 4 + caption_h + GAP
    columns = max((len(row.tiles) for row in rows), default=1)
    width = GAP + columns * (TILE + GAP)
    sheet = Image.new("RGB", (width, GAP + LINE * 2 + row_h * len(rows)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((GAP, GAP), _drawable(title), fill=INK, font=font)
    y = GAP + LINE * 2
    for row in rows:
        draw.text((GAP, y), _drawable(row.heading), fill=MUTED, font=font)
        for i, tile in enumerate(row.tiles):
            x = GAP + i * (TILE + GAP)
            sheet.paste(tile_image(tile), (x, y + LINE))
            for j, line in enumerate(wrapped[id(tile)]):
                draw.text((x, y + LINE + TILE + 4 + j * LINE), line, fill=INK, font=font)
        y += row_h
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


def render_html(title: str, rows: Sequence[Row], png_href: str = "") -> str:
    """The sheet as a self-contained page (tiles inlined); every text is HTML-escaped."""
    e = html.escape
    sections = "\n".join(
        f"<section><h2>{e(row.heading)}</h2><div class=row>\n"
        + "\n".join(_figure(tile) for tile in row.tiles)
        + "\n</div></section>"
        for row in rows
    )
    link = f'<p><a href="{e(png_href)}">The same sheet as a PNG</a></p>' if png_href else ""
    return f"""<!doctype html>
<html lang="en">
<meta charset="utf-8">
<title>{e(title)}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #141414; }}
.row {{ display: flex; flex-wrap: wrap; gap: {GAP}px; }}
figure {{ margin: 0; width: {TILE}px; }}
img {{ display: block; width: {TILE}px; height: {TILE}px; image-rendering: pixelated; }}
figcaption {{ font-size: 12px; margin-top: 4px; }}
h2 {{ font-size: 14px; color: #5a5a5a; font-weight: normal; }}
</style>
<h1>{e(title)}</h1>
{link}
{sections}
</html>
"""


def _figure(tile: Tile) -> str:
    e = html.escape
    img = f'<img src="{_data_url(tile_image(tile))}" alt="{e(tile.title)}">'
    if tile.href:
        img = f'<a href="{e(tile.href)}">{img}</a>'
    caption = "".join(f"<br>{e(line)}" for line in tile.caption)
    return f"<figure>{img}<figcaption><b>{e(tile.title)}</b>{caption}</figcaption></figure>"


def _data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _wrap_all(lines: Sequence[str], font: Font) -> list[str]:
    return [part for line in lines for part in _wrap(line, font)]


def _wrap(text: str, font: Font) -> list[str]:
    """Greedy word wrap to the tile's width, measured in the font's own pixels."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= TILE:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]

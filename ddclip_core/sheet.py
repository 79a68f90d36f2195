"""Contact sheets: the query and its top matches as thumbnails with names and scores, in one PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .atomic import atomic_path
from .bank import Match

TILE, CAPTION, PAD = 160, 40, 8


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _thumbnail(match: Match) -> Image.Image | None:
    path = match.metadata.get("image")
    if not path or not Path(path).is_file():
        return None
    try:
        image = Image.open(path).convert("RGB")
    except OSError:
        return None
    views = int(match.metadata.get("strip_views") or 1)
    if views > 1:  # a vertical strip: show its first view
        image = image.crop((0, 0, image.width, image.height // views))
    return image


def _tile(image: Image.Image | None, lines: list[str]) -> Image.Image:
    tile = Image.new("RGB", (TILE, TILE + CAPTION), "white")
    draw = ImageDraw.Draw(tile)
    if image is None:
        draw.rectangle((4, 4, TILE - 5, TILE - 5), fill=(225, 225, 225))
        draw.text((TILE // 2, TILE // 2), "no image", fill=(120, 120, 120), font=_font(13), anchor="mm")
    else:
        image.thumbnail((TILE - 8, TILE - 8))
        tile.paste(image, ((TILE - image.width) // 2, (TILE - image.height) // 2))
    for row, line in enumerate(lines[:2]):
        text = line if len(line) <= 24 else line[:23] + "…"
        draw.text((4, TILE + 2 + 18 * row), text, fill=(0, 0, 0), font=_font(13))
    return tile


def contact_sheet(query: str | np.ndarray | Image.Image, matches: list[Match], out: str | Path) -> Path:
    """Write a PNG: the query (an image or a text) first, then each match with rank, name and score."""
    if isinstance(query, str):
        first = _tile(None, ["query:", query])
        draw = ImageDraw.Draw(first)
        draw.rectangle((4, 4, TILE - 5, TILE - 5), fill=(240, 246, 255))
        draw.multiline_text((10, 10), _wrap(query, 18), fill=(20, 40, 120), font=_font(15))
    else:
        image = query if isinstance(query, Image.Image) else Image.fromarray(np.asarray(query))
        first = _tile(image.convert("RGB"), ["query"])
    tiles = [first] + [
        _tile(_thumbnail(m), [f"{i}. {m.name}", f"score {m.score:.3f}"]) for i, m in enumerate(matches, 1)
    ]
    columns = min(len(tiles), 6)
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (TILE + PAD) + PAD, rows * (TILE + CAPTION + PAD) + PAD), (245, 245, 245))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (PAD + (i % columns) * (TILE + PAD), PAD + (i // columns) * (TILE + CAPTION + PAD)))
    out = Path(out)
    with atomic_path(out) as tmp:  # (the format from the name it ends up with)
        sheet.save(tmp, format=Image.registered_extensions().get(out.suffix.lower(), "PNG"))
    return out


def _wrap(text: str, width: int) -> str:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join([*lines, line][:7])

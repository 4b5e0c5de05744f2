"""Figures made of titled panels: the heat map of a signed map shown honestly (a legend and a
note when its positive part is small, as `tsgb explain` does), titles, section headings, boxes,
a grid, and a PNG encoding that keeps large figures small.

Text is drawn with Pillow's default font: ASCII only (its bitmap fallback, and the scalable
font of Pillow >= 10.1, have no Greek letters or arrows).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from tsgb_onnx.io.render import heatmap, robust_max, sign_balance, with_legend

WHITE = 255
INK = (20, 20, 20)
GREY = (90, 90, 90)


def font(size: int = 13):
    """Pillow's default font at `size` (the fixed bitmap font on Pillow < 10.1)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _line_height(fnt) -> int:
    from PIL import Image, ImageDraw

    return ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), "0Ag", font=fnt)[3] + 3


def text_block(
    lines: Sequence[str], width: int, size: int = 13, colours: Sequence | None = None
) -> np.ndarray:
    """White strip `width` wide holding `lines` (one text line each), uint8 RGB."""
    from PIL import Image, ImageDraw

    fnt = font(size)
    step = _line_height(fnt)
    strip = Image.new("RGB", (width, 4 + step * len(lines)), (WHITE,) * 3)
    draw = ImageDraw.Draw(strip)
    for i, line in enumerate(lines):
        colour = colours[i] if colours is not None else (INK if i == 0 else GREY)
        draw.text((4, 3 + i * step), line, fill=colour, font=fnt)
    return np.asarray(strip)


def titled(picture: np.ndarray, lines: Sequence[str], size: int = 13) -> np.ndarray:
    """`picture` with `lines` above it (the first in black, the others in grey)."""
    return np.concatenate([text_block(lines, picture.shape[1], size), picture], axis=0)


def map_panel(
    saliency: np.ndarray,
    image: np.ndarray | None = None,
    colormap: str = "positive",
    cmap: str | None = None,
    blend: float = 0.5,
) -> np.ndarray:
    """The heat map of `saliency` (over `image` when given), scaled by a robust maximum in
    both views: the positive view clips the positive part at its `ROBUST_PERCENTILE`-th
    percentile (a few extreme pixels of a pixel-sharp map would leave the rest dark), the
    diverging view scales |map| the same way (`heatmap`). A legend strip (colour bar and
    range) goes under it in the diverging view and, with the sign-balance note, whenever the
    positive view would show little or nothing of the map."""
    shown = np.asarray(saliency, dtype=np.float32)
    if colormap == "positive":
        shown = np.minimum(np.maximum(shown, 0), robust_max(np.maximum(shown, 0)))
    pic = heatmap(shown, image, blend=blend, colormap=colormap, cmap=cmap)
    note = sign_balance(saliency, colormap).note
    if note is not None or colormap == "diverging":
        pic = with_legend(pic, shown, colormap, cmap, note)
    return pic


def outline(rgb: np.ndarray, box: Sequence[int], colour=(255, 255, 255), width: int = 2):
    """A copy of `rgb` with the box (x0, y0, x1, y1), end-exclusive, drawn on it."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(np.ascontiguousarray(rgb))
    x0, y0, x1, y1 = (int(v) for v in box)
    ImageDraw.Draw(im).rectangle((x0, y0, x1 - 1, y1 - 1), outline=colour, width=width)
    return np.asarray(im)


def pad(picture: np.ndarray, height: int, width: int) -> np.ndarray:
    """`picture` padded with white at the bottom and right to `height` x `width`."""
    h, w = picture.shape[:2]
    return np.pad(picture, ((0, height - h), (0, width - w), (0, 0)), constant_values=WHITE)


def hstack(panels: Sequence[np.ndarray], gap: int = 8) -> np.ndarray:
    """Panels side by side, top-aligned (shorter ones padded with white below)."""
    height = max(p.shape[0] for p in panels)
    parts = []
    for i, p in enumerate(panels):
        if i:
            parts.append(np.full((height, gap, 3), WHITE, np.uint8))
        parts.append(pad(p, height, p.shape[1]))
    return np.concatenate(parts, axis=1)


def vstack(rows: Sequence[np.ndarray], gap: int = 8) -> np.ndarray:
    """Rows one under the other, left-aligned (narrower ones padded with white)."""
    width = max(r.shape[1] for r in rows)
    parts = []
    for i, r in enumerate(rows):
        if i:
            parts.append(np.full((gap, width, 3), WHITE, np.uint8))
        parts.append(pad(r, r.shape[0], width))
    return np.concatenate(parts, axis=0)


def compact_png(rgb: np.ndarray, colours: int = 256) -> bytes:
    """PNG bytes of `rgb` with an adaptive palette of `colours` (a figure of photos and heat
    maps is a fraction of its true-colour size and looks the same)."""
    from PIL import Image

    quantize = getattr(Image, "Quantize", Image)  # Pillow < 9.1: module constants
    im = Image.fromarray(np.ascontiguousarray(rgb)).quantize(colours, method=quantize.FASTOCTREE)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()

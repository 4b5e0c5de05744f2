"""Heat maps: saliency → RGB.

Two scalings: `positive` (negative values truncated and the rest scaled by the maximum, as
in the TSGB paper) and `diverging` (symmetric around zero: blue negative, white zero, red
positive; scaled by a robust maximum of |map|, the 99.5th percentile, so a few extreme
pixels do not wash the rest out to white). Colours come from a matplotlib colormap when
matplotlib is installed, else from a built-in table. 1-D maps become strips, 3-D maps a
montage of their slices.

`sign_balance` measures a map's positive and negative mass and says, in one line, when the
positive part is empty or small (the `positive` display then shows little or nothing);
`with_legend` draws a colour bar with its range, and that note, under a picture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tsgb_onnx.errors import InputError

# anchor colours of a jet-like map (dark blue → cyan → yellow → red)
_ANCHORS = np.array(
    [
        [0.0, 0.0, 0.5],
        [0.0, 0.0, 1.0],
        [0.0, 1.0, 1.0],
        [1.0, 1.0, 0.0],
        [1.0, 0.0, 0.0],
        [0.5, 0.0, 0.0],
    ],
    dtype=np.float32,
)
# saturated blue → white → saturated red
_DIVERGING = np.array(
    [
        [0.0, 0.10, 0.75],
        [0.35, 0.55, 1.0],
        [1.0, 1.0, 1.0],
        [1.0, 0.45, 0.35],
        [0.80, 0.0, 0.0],
    ],
    dtype=np.float32,
)
COLORMAPS = ("positive", "diverging")
# the diverging view's scale: this percentile of |map| (not its maximum) maps to the ends
ROBUST_PERCENTILE = 99.5
# a note when the positive mass is under this share of the total |mass|
SMALL_POSITIVE = 0.1


def normalize_positive(saliency: np.ndarray) -> np.ndarray:
    """Clip negatives to 0 and scale to [0, 1] (all-zero maps stay zero)."""
    s = np.maximum(np.asarray(saliency, dtype=np.float32), 0)
    top = float(s.max()) if s.size else 0.0
    return s / top if top > 0 else s


def robust_max(saliency: np.ndarray, percentile: float = ROBUST_PERCENTILE) -> float:
    """The `percentile`-th percentile of |saliency| (its maximum when that is 0; NaNs
    ignored): the half-range of the diverging view."""
    a = np.abs(np.asarray(saliency, dtype=np.float32))
    a = a[np.isfinite(a)]
    if not a.size:
        return 0.0
    top = float(np.percentile(a, percentile))
    return top if top > 0 else float(a.max())


def normalize_diverging(saliency: np.ndarray, top: float | None = None) -> np.ndarray:
    """Map [-m, m] to [0, 1] (zero lands on 0.5; values beyond ±m clip to the ends), with
    m = `top`, by default the robust maximum of |saliency| (`robust_max`)."""
    s = np.asarray(saliency, dtype=np.float32)
    top = robust_max(s) if top is None else top
    if not top > 0:
        return np.full(s.shape, 0.5, np.float32)
    return np.clip(0.5 + 0.5 * s / top, 0, 1)


@dataclass(frozen=True)
class SignBalance:
    """A map's positive mass (sum of its positive part), negative mass (sum of |negative
    part|) and, when the positive part is empty or small, a one-line note."""

    positive_mass: float
    negative_mass: float
    note: str | None

    @property
    def ratio(self) -> float:
        """negative / positive mass (inf when the positive part is empty)."""
        if self.positive_mass > 0:
            return self.negative_mass / self.positive_mass
        return math.inf if self.negative_mass > 0 else 0.0


def sign_balance(saliency: np.ndarray, colormap: str = "positive") -> SignBalance:
    """Positive and negative mass of a map, and a note when the positive mass is under
    `SMALL_POSITIVE` of the total |mass| (the `positive` display then shows little; the
    note points to `--colormap diverging` unless that is the `colormap` in use)."""
    s = np.nan_to_num(np.asarray(saliency, dtype=np.float64))
    pos = float(np.maximum(s, 0).sum())
    neg = float(-np.minimum(s, 0).sum())
    if not (neg > 0 and pos < SMALL_POSITIVE * (pos + neg)):
        return SignBalance(pos, neg, None)
    if pos == 0:
        note, shows = f"the map has no positive part (negative mass {neg:.3g})", "nothing"
    else:
        ratio = neg / pos
        note, shows = f"the map is mostly negative (negative/positive mass {ratio:.1f})", "little"
    if colormap != "diverging":
        note += f": the positive display shows {shows}; see --colormap diverging"
    return SignBalance(pos, neg, note)


def _table(anchors: np.ndarray, unit: np.ndarray) -> np.ndarray:
    pos = np.clip(np.nan_to_num(unit), 0, 1) * (len(anchors) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(anchors) - 2)
    frac = (pos - lo)[..., None]
    rgb = anchors[lo] * (1 - frac) + anchors[lo + 1] * frac
    return (rgb * 255).round().astype(np.uint8)


def colorize(unit: np.ndarray, cmap: str | None = None, diverging: bool = False) -> np.ndarray:
    """[...] values in [0, 1] → uint8 RGB [..., 3].

    `cmap`: a matplotlib colormap name (used when matplotlib is installed); None uses the
    built-in table (jet-like, or blue-white-red when `diverging`).
    """
    if cmap is not None:
        try:
            from matplotlib import colormaps
        except ImportError:
            cmap = None
        else:
            rgba = colormaps[cmap](np.clip(np.nan_to_num(unit), 0, 1))
            return (rgba[..., :3] * 255).round().astype(np.uint8)
    return _table(_DIVERGING if diverging else _ANCHORS, unit)


def check_cmap(name: str) -> None:
    """Refuse a `--cmap` that would be ignored: an unknown matplotlib colormap name, or any
    name when matplotlib (which provides them) is not installed."""
    try:
        from matplotlib import colormaps
    except ImportError:
        raise InputError(
            f"--cmap '{name}' needs matplotlib (pip install matplotlib); without it the "
            "built-in colours are used: leave --cmap out"
        ) from None
    if name not in colormaps:
        import difflib

        close = difflib.get_close_matches(name, list(colormaps), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "e.g. jet, viridis, RdBu_r"
        raise InputError(f"--cmap: unknown matplotlib colormap '{name}'; {hint}")


def default_cmap(diverging: bool) -> str | None:
    """matplotlib's 'jet' / 'RdBu_r' when matplotlib is installed, else None (built-in)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return None
    return "RdBu_r" if diverging else "jet"


def as_plane(saliency: np.ndarray, strip: int = 32) -> np.ndarray:
    """A 1-D, 2-D or 3-D map as one 2-D plane: 1-D → a strip `strip` rows high,
    3-D [D, H, W] → a near-square montage of its D slices (1-pixel gaps, value NaN)."""
    sal = np.asarray(saliency, dtype=np.float32)
    if sal.ndim == 1:
        return np.repeat(sal[None], strip, axis=0)
    if sal.ndim == 2:
        return sal
    if sal.ndim == 3:
        depth, h, w = sal.shape
        cols = math.ceil(math.sqrt(depth))
        rows = math.ceil(depth / cols)
        plane = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan, np.float32)
        for d in range(depth):
            r, c = divmod(d, cols)
            plane[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = sal[d]
        return plane
    raise ValueError(f"a heat map needs a 1-D, 2-D or 3-D map, got shape {sal.shape}")


def heatmap(
    saliency: np.ndarray,
    image: np.ndarray | None = None,
    blend: float = 0.5,
    colormap: str = "positive",
    cmap: str | None = None,
) -> np.ndarray:
    """RGB heat map of a 1-D/2-D/3-D saliency map, blended over `image` (uint8 RGB) when given.

    `colormap`: 'positive' (negatives truncated; the paper's display) or 'diverging'.
    `cmap`: a matplotlib colormap name; None → the built-in table.
    """
    from PIL import Image

    if colormap not in COLORMAPS:
        raise ValueError(f"colormap must be one of {', '.join(COLORMAPS)}, got {colormap!r}")
    plane = as_plane(saliency)
    gaps = np.isnan(plane)
    finite = np.where(gaps, 0, plane)
    diverging = colormap == "diverging"
    unit = (
        normalize_diverging(finite, robust_max(plane)) if diverging else normalize_positive(finite)
    )
    colours = colorize(unit, cmap, diverging)
    colours[gaps] = 255
    if image is None:
        return colours
    if colours.shape[:2] != image.shape[:2]:
        colours = np.asarray(Image.fromarray(colours).resize(image.shape[1::-1], Image.BILINEAR))
    mixed = blend * colours.astype(np.float32) + (1 - blend) * image.astype(np.float32)
    return mixed.round().clip(0, 255).astype(np.uint8)


def display_range(saliency: np.ndarray, colormap: str = "positive") -> tuple[float, float]:
    """The values `heatmap` puts at the two ends of its colour scale: [0, max] for
    'positive', [-m, m] with m the robust maximum of |map| for 'diverging'."""
    plane = np.asarray(saliency, dtype=np.float32)
    if colormap == "diverging":
        top = robust_max(plane)
        return -top, top
    finite = plane[np.isfinite(plane)]
    return 0.0, max(float(finite.max()), 0.0) if finite.size else 0.0


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _wrap(draw, text: str, font, width: int) -> list[str]:
    lines: list[str] = []
    line = ""
    for word in text.split():
        trial = f"{line} {word}" if line else word
        if line and draw.textlength(trial, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + ([line] if line else [])


LEGEND_WIDTH = 224  # pictures narrower than this are enlarged (nearest) before the legend


def with_legend(
    picture: np.ndarray,
    saliency: np.ndarray,
    colormap: str = "positive",
    cmap: str | None = None,
    note: str | None = None,
) -> np.ndarray:
    """`picture` (uint8 RGB) with a legend strip under it: the colour bar, the map values at
    its ends (and 0 in the middle of a diverging bar), and `note` (wrapped) when given.
    A picture narrower than `LEGEND_WIDTH` is first enlarged by a whole factor."""
    from PIL import Image, ImageDraw

    factor = max(1, math.ceil(LEGEND_WIDTH / max(1, picture.shape[1])))
    if factor > 1 and max(picture.shape[:2]) * factor <= 4096:
        picture = np.repeat(np.repeat(picture, factor, axis=0), factor, axis=1)
    width = picture.shape[1]
    margin, bar_h = 6, 10
    font = _font(11)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_h = probe.textbbox((0, 0), "0Ag", font=font)[3] + 3
    notes = _wrap(probe, note, font, width - 2 * margin) if note else []
    height = margin + bar_h + 2 + text_h + len(notes) * text_h + margin
    strip = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    diverging = colormap == "diverging"
    bar = colorize(np.linspace(0, 1, width - 2 * margin, dtype=np.float32), cmap, diverging)
    strip.paste(Image.fromarray(np.repeat(bar[None], bar_h, axis=0)), (margin, margin))
    draw.rectangle((margin - 1, margin - 1, width - margin, margin + bar_h), outline=(80, 80, 80))
    lo, hi = display_range(saliency, colormap)
    y = margin + bar_h + 2
    ink = (30, 30, 30)
    draw.text((margin, y), f"{lo:.3g}", fill=ink, font=font)
    right = f"{hi:.3g}"
    draw.text((width - margin - draw.textlength(right, font=font), y), right, fill=ink, font=font)
    if diverging:
        draw.text((width / 2 - draw.textlength("0", font=font) / 2, y), "0", fill=ink, font=font)
    for i, line in enumerate(notes):
        draw.text((margin, y + (i + 1) * text_h), line, fill=(150, 0, 0), font=font)
    return np.concatenate([picture, np.asarray(strip)], axis=0)


def signal_plot(values: np.ndarray, height: int = 64) -> np.ndarray:
    """A 1-D signal drawn as a black line on white, uint8 RGB [height, len, 3]."""
    v = np.asarray(values, dtype=np.float32).ravel()
    out = np.full((height, max(len(v), 1), 3), 255, np.uint8)
    if not v.size:
        return out
    lo, hi = float(v.min()), float(v.max())
    rows = (
        np.full(v.shape, height // 2)
        if hi <= lo
        else ((hi - v) / (hi - lo) * (height - 1)).round().astype(int)
    )
    for i in range(len(v)):  # vertical segments join neighbours: a continuous line
        a = rows[i]
        b = rows[i + 1] if i + 1 < len(v) else a
        out[min(a, b) : max(a, b) + 1, i] = 0
    return out


def input_picture(x: np.ndarray) -> np.ndarray | None:
    """A displayable picture of one input row that is not an image file: a 1-D signal
    [C, L] → its channel mean as a line plot, a volume [C, D, H, W] → a montage of the
    channel-mean slices, a [C, H, W] tensor → the channel mean in grey."""
    a = np.asarray(x, dtype=np.float32)
    if a.ndim < 2:
        return None
    mean = a.mean(axis=0)
    if mean.ndim == 1:
        return signal_plot(mean)
    plane = as_plane(mean)
    gaps = np.isnan(plane)
    finite = plane[~gaps]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    grey = np.zeros(plane.shape, np.float32) if hi <= lo else (plane - lo) / (hi - lo)
    grey = (np.where(gaps, 1.0, grey) * 255).round().astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def upscale(rgb: np.ndarray, min_side: int = 128) -> np.ndarray:
    """Nearest-neighbour enlarge small pictures so they are visible in a page."""
    h, w = rgb.shape[:2]
    factor = max(1, math.ceil(min_side / max(1, min(h, w))))
    if factor == 1 or max(h, w) * factor > 4096:
        return rgb
    return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)


def save_png(rgb: np.ndarray, path: str | Path) -> None:
    from PIL import Image

    Image.fromarray(rgb).save(path)


def png_bytes(rgb: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()

"""Heat maps: saliency → RGB.

Two scalings: `positive` (negative values truncated and the rest scaled by the maximum, as
in the TSGB paper) and `diverging` (symmetric around zero: blue negative, white zero, red
positive). Colours come from a matplotlib colormap when matplotlib is installed, else from
a built-in jet-like table. 1-D maps become strips, 3-D maps a montage of their slices.
"""

from __future__ import annotations

import math
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
# blue → white → red
_DIVERGING = np.array(
    [
        [0.02, 0.19, 0.38],
        [0.26, 0.58, 0.76],
        [0.97, 0.97, 0.97],
        [0.84, 0.38, 0.30],
        [0.40, 0.0, 0.12],
    ],
    dtype=np.float32,
)
COLORMAPS = ("positive", "diverging")


def normalize_positive(saliency: np.ndarray) -> np.ndarray:
    """Clip negatives to 0 and scale to [0, 1] (all-zero maps stay zero)."""
    s = np.maximum(np.asarray(saliency, dtype=np.float32), 0)
    top = float(s.max()) if s.size else 0.0
    return s / top if top > 0 else s


def normalize_diverging(saliency: np.ndarray) -> np.ndarray:
    """Map [-m, m] to [0, 1] with m = max |saliency| (zero lands on 0.5)."""
    s = np.asarray(saliency, dtype=np.float32)
    top = float(np.abs(s).max()) if s.size else 0.0
    return 0.5 + 0.5 * s / top if top > 0 else np.full(s.shape, 0.5, np.float32)


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
    unit = normalize_diverging(finite) if diverging else normalize_positive(finite)
    colours = colorize(unit, cmap, diverging)
    colours[gaps] = 255
    if image is None:
        return colours
    if colours.shape[:2] != image.shape[:2]:
        colours = np.asarray(Image.fromarray(colours).resize(image.shape[1::-1], Image.BILINEAR))
    mixed = blend * colours.astype(np.float32) + (1 - blend) * image.astype(np.float32)
    return mixed.round().clip(0, 255).astype(np.uint8)


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

"""Heat maps: saliency → RGB (negative values truncated, as in the TSGB paper)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# anchor colours of a jet-like map (dark blue → cyan → yellow → red)
_ANCHORS = np.array([[0.0, 0.0, 0.5], [0.0, 0.0, 1.0], [0.0, 1.0, 1.0],
                     [1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.0, 0.0]], dtype=np.float32)


def normalize_positive(saliency: np.ndarray) -> np.ndarray:
    """Clip negatives to 0 and scale to [0, 1] (all-zero maps stay zero)."""
    s = np.maximum(np.asarray(saliency, dtype=np.float32), 0)
    top = float(s.max()) if s.size else 0.0
    return s / top if top > 0 else s


def colorize(unit: np.ndarray) -> np.ndarray:
    """[H, W] values in [0, 1] → uint8 RGB [H, W, 3]."""
    pos = np.clip(unit, 0, 1) * (len(_ANCHORS) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_ANCHORS) - 2)
    frac = (pos - lo)[..., None]
    rgb = _ANCHORS[lo] * (1 - frac) + _ANCHORS[lo + 1] * frac
    return (rgb * 255).round().astype(np.uint8)


def heatmap(saliency: np.ndarray, image: np.ndarray | None = None, blend: float = 0.5) -> np.ndarray:
    """RGB heat map of a 2-D saliency map, blended over `image` (uint8 RGB) when given."""
    from PIL import Image

    sal = np.asarray(saliency)
    if sal.ndim == 1:  # 1-D signals: a strip 32 rows high
        sal = np.repeat(sal[None], 32, axis=0)
    if sal.ndim != 2:
        raise ValueError(f"a heat map needs a 1-D or 2-D map, got shape {sal.shape}")
    colours = colorize(normalize_positive(sal))
    if image is None:
        return colours
    if colours.shape[:2] != image.shape[:2]:
        colours = np.asarray(Image.fromarray(colours).resize(image.shape[1::-1], Image.BILINEAR))
    mixed = blend * colours.astype(np.float32) + (1 - blend) * image.astype(np.float32)
    return mixed.round().clip(0, 255).astype(np.uint8)


def save_png(rgb: np.ndarray, path: str | Path) -> None:
    from PIL import Image

    Image.fromarray(rgb).save(path)

"""Image loading and preprocessing for the CLI (ImageNet-style by default)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class Preprocessing:
    """Resize shorter side to size*resize_ratio, center-crop `size`, scale to [0,1], normalise."""

    size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    layout: str = "nchw"
    crop: bool = True
    resize_ratio: float = 256 / 224

    def __post_init__(self):
        if self.size <= 0:
            raise InputError(f"image size must be positive, got {self.size}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise InputError(
                f"--mean and --std need 3 values (R,G,B), got {len(self.mean)} and {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise InputError(f"--std values must be positive, got {','.join(map(str, self.std))}")
        if self.layout not in ("nchw", "nhwc"):
            raise InputError(f"layout must be nchw or nhwc, got '{self.layout}'")


def load_rgb(path: str | Path) -> np.ndarray:
    """An image file as uint8 RGB [H, W, 3]."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise InputError(f"image '{path}' does not exist") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"image '{path}' cannot be read as an image: {exc}") from None


def fit_image(rgb: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """Resize and center-crop an RGB image to prep.size × prep.size (uint8)."""
    from PIL import Image

    im = Image.fromarray(rgb)
    if prep.crop:
        short = round(prep.size * prep.resize_ratio)
        w, h = im.size
        scale = short / min(w, h)
        im = im.resize((max(prep.size, round(w * scale)), max(prep.size, round(h * scale))),
                       Image.BILINEAR)
        w, h = im.size
        left, top = (w - prep.size) // 2, (h - prep.size) // 2
        im = im.crop((left, top, left + prep.size, top + prep.size))
    else:
        im = im.resize((prep.size, prep.size), Image.BILINEAR)
    return np.asarray(im)


def to_tensor(rgb: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """uint8 RGB [H, W, 3] → float32 [1, 3, H, W] (or [1, H, W, 3] for nhwc), normalised."""
    x = rgb.astype(np.float32) / 255.0
    x = (x - np.asarray(prep.mean, np.float32)) / np.asarray(prep.std, np.float32)
    x = x[None]
    if prep.layout == "nchw":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=np.float32)


def load_inputs(paths: Sequence[str], prep: Preprocessing, rank: int = 4):
    """Read .npy tensors or images; return (batch, display images or None per row, names).

    A .npy array of the model input's `rank` is a batch; one of rank - 1 is one row.
    """
    arrays, shown, names = [], [], []
    for p in paths:
        path = Path(p)
        if path.suffix.lower() == ".npy":
            try:
                a = np.load(path, allow_pickle=False)
            except FileNotFoundError:
                raise InputError(f"input '{p}' does not exist") from None
            except Exception as exc:
                raise InputError(f"input '{p}' is not a readable .npy array: {exc}") from None
            if a.ndim >= 1 and a.dtype.kind in "iuf":
                a = a.astype(np.float32)
            if a.ndim == rank - 1:
                a = a[None]
            elif a.ndim != rank:
                raise InputError(
                    f"input '{p}' has shape {a.shape}; the model takes {rank}-D batches "
                    f"(give [{'batch, ' if rank > 1 else ''}...] with {rank} or {rank - 1} axes)")
            rows = a
            arrays.append(rows)
            shown += [None] * len(rows)
            names += [f"{path.stem}[{i}]" if len(rows) > 1 else path.stem for i in range(len(rows))]
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            rgb = fit_image(load_rgb(path), prep)
            arrays.append(to_tensor(rgb, prep))
            shown.append(rgb)
            names.append(path.stem)
        elif not path.exists():
            raise InputError(f"input '{p}' does not exist")
        else:
            raise InputError(
                f"input '{p}': unknown file type '{path.suffix}' (give .npy or an image file)")
    try:
        batch = np.concatenate(arrays, axis=0)
    except ValueError as exc:
        raise InputError(f"inputs have different shapes and cannot form one batch: {exc}") from None
    return batch, shown, names


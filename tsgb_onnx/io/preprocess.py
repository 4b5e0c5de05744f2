"""Image loading and preprocessing: presets, model metadata, explicit settings.

A `Preprocessing` turns an image file into the model's input tensor: resize (and center-crop),
channel order (RGB or BGR), scale pixels to [0, pixel_max], subtract `mean`, divide by `std`
(both per channel of the model input, i.e. after the channel order), then NCHW or NHWC.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from tsgb_onnx.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
PREPROCESS_KEY = "tsgb.preprocess"  # ONNX metadata_props key: Preprocessing as JSON

# name → settings; every preset names all the value settings, never size or layout
PRESETS: dict[str, dict[str, Any]] = {
    # torchvision / timm ImageNet models: [0,1] RGB, ImageNet mean/std, resize 256 crop 224
    "torchvision": dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, pixel_max=1.0, channel_order="rgb"),
    # Keras "caffe" mode (VGG16, ResNet50 v1): BGR, 0..255, minus the BGR mean, no scaling
    "caffe": dict(
        mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0), pixel_max=255.0, channel_order="bgr"
    ),
    # Keras "tf" mode (MobileNet, Inception, Xception): RGB scaled to [-1, 1]
    "tf": dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), pixel_max=1.0, channel_order="rgb"),
    # raw pixels 0..255 RGB (models that normalise inside, e.g. Keras EfficientNet)
    "none": dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), pixel_max=255.0, channel_order="rgb"),
}


@dataclass(frozen=True)
class Preprocessing:
    """Resize shorter side to size*resize_ratio, center-crop `size` (or resize to `size` with
    crop=False), reorder channels, scale to [0, pixel_max], normalise, lay out."""

    size: int | tuple[int, int] = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    layout: str = "nchw"
    crop: bool = True
    resize_ratio: float = 256 / 224
    channel_order: str = "rgb"
    pixel_max: float = 1.0

    def __post_init__(self):
        size = self.size
        if isinstance(size, (list, tuple)):
            if len(size) != 2:
                raise InputError(f"image size must be one number or (height, width), got {size}")
            object.__setattr__(self, "size", (int(size[0]), int(size[1])))
        if any(s <= 0 for s in self.hw):
            raise InputError(f"image size must be positive, got {self.size}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.mean) != 3 or len(self.std) != 3:
            raise InputError(
                f"--mean and --std need 3 values (one per channel), got {len(self.mean)} "
                f"and {len(self.std)}"
            )
        if any(s <= 0 for s in self.std):
            raise InputError(f"--std values must be positive, got {','.join(map(str, self.std))}")
        if self.layout not in ("nchw", "nhwc"):
            raise InputError(f"layout must be nchw or nhwc, got '{self.layout}'")
        if self.channel_order not in ("rgb", "bgr"):
            raise InputError(f"channel order must be rgb or bgr, got '{self.channel_order}'")
        if not self.pixel_max > 0:
            raise InputError(f"pixel range must be positive (1 or 255), got {self.pixel_max}")
        if not self.resize_ratio >= 1:
            raise InputError(f"resize ratio must be at least 1, got {self.resize_ratio}")

    @property
    def hw(self) -> tuple[int, int]:
        """(height, width) of the model input."""
        return self.size if isinstance(self.size, tuple) else (int(self.size), int(self.size))

    @classmethod
    def from_json(cls, text: str, where: str = f"model metadata '{PREPROCESS_KEY}'"):
        return cls(**settings_from_json(text, where))


def settings_from_json(text: str, where: str) -> dict[str, Any]:
    """The known settings of a `tsgb.preprocess` JSON text (unknown keys are ignored)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"{where} must be a JSON object of preprocessing settings")
    known = {f.name for f in fields(Preprocessing)}
    out = {k: v for k, v in data.items() if k in known}
    if "preset" in data:  # {"preset": "caffe", ...}: the preset, then the explicit keys
        out = {**preset_settings(str(data["preset"])), **out}
    for key in ("mean", "std"):
        if key in out:
            out[key] = tuple(out[key])
    return out


def preset_settings(name: str) -> dict[str, Any]:
    try:
        return dict(PRESETS[name.lower()])
    except KeyError:
        raise InputError(
            f"unknown preprocessing preset '{name}'; choose one of {', '.join(PRESETS)}"
        ) from None


def resolve_preprocessing(*layers: Mapping[str, Any] | None) -> Preprocessing:
    """Merge settings: later layers override earlier ones; None values are skipped.

    The CLI passes (defaults, model metadata, preset, explicit flags).
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            if value is not None:
                merged[key] = value
    return Preprocessing(**merged)


def as_settings(prep: Preprocessing | str | Mapping[str, Any] | None) -> dict[str, Any]:
    """A preset name, a dict of settings or a Preprocessing → dict of settings."""
    if prep is None:
        return {}
    if isinstance(prep, Preprocessing):
        return {f.name: getattr(prep, f.name) for f in fields(Preprocessing)}
    if isinstance(prep, str):
        return preset_settings(prep)
    settings = dict(prep)
    if "preset" in settings:
        settings = {**preset_settings(str(settings.pop("preset"))), **settings}
    return settings


# -- images --------------------------------------------------------------------------------------


def load_rgb(path: str | Path) -> np.ndarray:
    """An image file as uint8 RGB [H, W, 3]: the picture an 8-bit RGB rendering shows.

    Every Pillow mode is read by its meaning (`to_rgb8`): 16-bit greys scaled to 8 bits,
    LAB converted through LittleCMS, and an alpha channel **dropped** (the colour stored
    under a transparent pixel is used as it is, as torchvision's loader does, so a model sees
    what it was trained on). An image over Pillow's decompression-bomb limit, or one that
    cannot be read or converted, is an InputError.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return to_rgb8(im, f"image '{path}'")
    except FileNotFoundError:
        raise InputError(f"image '{path}' does not exist") from None
    except Image.DecompressionBombError as exc:
        raise InputError(
            f"image '{path}' is over Pillow's decompression-bomb limit: {str(exc).rstrip('.')}; "
            "give a smaller image (or raise PIL.Image.MAX_IMAGE_PIXELS if you trust it)"
        ) from None
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"image '{path}' cannot be read as an image: {exc}") from None


_GREY16 = ("I;16", "I;16L", "I;16B", "I;16N")  # unsigned 16-bit grey: white is 65535
_ALPHA = ("LA", "La", "PA", "RGBA", "RGBa")
# 32-bit modes carry no white level: the smallest of these that holds every value is used
_INT_WHITES = (255, 65535)  # "I": 8-bit values (Pillow's own L → I), else 16-bit (older
# Pillow opens 16-bit PNGs as "I")
_FLOAT_WHITES = (1.0, 255.0)  # "F": [0, 1] (float images), else [0, 255] (Pillow's L → F)


def to_rgb8(im, where: str = "image") -> np.ndarray:
    """A Pillow image of any mode as uint8 RGB [H, W, 3].

    1, L, P, RGB, CMYK, YCbCr, HSV: Pillow's conversion. LA, PA, RGBA and P with a
    transparent colour: alpha dropped. I;16 / I;16B / I;16L: value / 257, rounded (65535 →
    255, the inverse of 8 → 16-bit's ×257). I (32-bit integers) and F (32-bit floats): scaled
    from the first white level that holds every value (I: 255, then 65535; F: 1.0, then
    255); negative values, NaN or values above the largest level are an InputError (no white
    level is known). LAB: CIE L*a*b* (D50) → sRGB through LittleCMS (ImageCms).
    """
    mode = im.mode
    if mode in _GREY16 or mode in ("I", "F"):
        return np.repeat(_grey8(im, where)[..., None], 3, axis=2)
    if mode == "LAB":
        return _lab_to_rgb(im, where)
    if mode in _ALPHA or (mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")  # alpha dropped below
    try:
        return np.asarray(im.convert("RGB"))
    except ValueError as exc:
        raise InputError(
            f"{where} has Pillow mode '{mode}', which cannot be converted to RGB ({exc}); "
            "save it as 8-bit RGB or grey"
        ) from None


def _grey8(im, where: str) -> np.ndarray:
    """A one-band 16-bit or 32-bit image as uint8 grey, scaled by its white level."""
    a = np.asarray(im)
    if im.mode in _GREY16:
        white = 65535.0
    else:
        white = _white_level(a, im.mode, where)
    grey = np.rint(a.astype(np.float64) * (255.0 / white))
    return np.clip(grey, 0, 255).astype(np.uint8)


def _white_level(a: np.ndarray, mode: str, where: str) -> float:
    if a.size == 0:
        return 255.0
    if mode == "F" and not np.isfinite(a).all():
        raise InputError(f"{where} is a float image holding NaN or Inf: clean it first")
    lo, hi = float(a.min()), float(a.max())
    whites = _FLOAT_WHITES if mode == "F" else _INT_WHITES
    if lo >= 0:
        for white in whites:
            if hi <= white:
                return float(white)
    kind = "32-bit float" if mode == "F" else "32-bit integer"
    ranges = " or ".join(f"[0, {w:g}]" for w in whites)
    raise InputError(
        f"{where} is a {kind} image with values in [{lo:g}, {hi:g}], outside {ranges}: "
        "its white level is unknown; save it as an 8- or 16-bit image"
    )


def _lab_to_rgb(im, where: str) -> np.ndarray:
    try:
        from PIL import ImageCms

        transform = _lab_transform()
    except Exception as exc:  # Pillow built without LittleCMS, or LittleCMS refused
        raise InputError(
            f"{where} is a LAB image; converting it needs Pillow with LittleCMS ({exc}): "
            "save it as RGB"
        ) from None
    return np.asarray(ImageCms.applyTransform(im, transform))


@functools.lru_cache(maxsize=1)
def _lab_transform():
    from PIL import ImageCms

    lab, srgb = ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB")
    return ImageCms.buildTransform(lab, srgb, "LAB", "RGB")


def fit_image(rgb: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """Resize and center-crop an RGB image to the model's height × width (uint8)."""
    from PIL import Image

    im = Image.fromarray(rgb)
    out_h, out_w = prep.hw
    if prep.crop:
        w, h = im.size
        scale = round(min(out_h, out_w) * prep.resize_ratio) / min(w, h)
        new_w, new_h = max(out_w, round(w * scale)), max(out_h, round(h * scale))
        im = im.resize((new_w, new_h), Image.BILINEAR)
        left, top = (new_w - out_w) // 2, (new_h - out_h) // 2
        im = im.crop((left, top, left + out_w, top + out_h))
    else:
        im = im.resize((out_w, out_h), Image.BILINEAR)
    return np.asarray(im)


def to_tensor(rgb: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """uint8 RGB [H, W, 3] → float32 [1, 3, H, W] (or [1, H, W, 3] for nhwc), normalised."""
    x = rgb.astype(np.float32) * np.float32(prep.pixel_max / 255.0)
    if prep.channel_order == "bgr":
        x = x[..., ::-1]
    x = (x - np.asarray(prep.mean, np.float32)) / np.asarray(prep.std, np.float32)
    x = x[None]
    if prep.layout == "nchw":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=np.float32)


# -- files and folders ---------------------------------------------------------------------------


def discover(paths: Iterable[str]) -> list[tuple[Path, str]]:
    """Expand folders (recursively, sorted) into image and .npy files.

    Returns (file, display name) pairs; names are paths relative to the folder given, without
    suffix. A folder without any usable file is an InputError.
    """
    found: list[tuple[Path, str]] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            files = sorted(
                f
                for f in path.rglob("*")
                if f.is_file() and _usable(f) and not _hidden(f.relative_to(path))
            )
            if not files:
                raise InputError(
                    f"folder '{p}' holds no image or .npy files "
                    f"({', '.join(sorted(IMAGE_SUFFIXES))}, .npy)"
                )
            found += [(f, f.relative_to(path).with_suffix("").as_posix()) for f in files]
        else:
            found.append((path, path.stem))
    return found


def _usable(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES or path.suffix.lower() == ".npy"


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def read_npy(path: Path, rank: int) -> np.ndarray:
    """A .npy file as a float32 batch of `rank` axes (one row when it has rank - 1)."""
    try:
        a = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"input '{path}' does not exist") from None
    except Exception as exc:
        raise InputError(f"input '{path}' is not a readable .npy array: {exc}") from None
    if a.ndim >= 1:
        a = _as_float32(a, path)
    if a.ndim == rank - 1:
        a = a[None]
    elif a.ndim != rank:
        raise InputError(
            f"input '{path}' has shape {a.shape}; the model takes {rank}-D batches "
            f"(give [{'batch, ' if rank > 1 else ''}...] with {rank} or {rank - 1} axes)"
        )
    return a


def _as_float32(a: np.ndarray, path: Path) -> np.ndarray:
    """Booleans, integers and floats as float32; anything else, or a finite value beyond
    float32's range, is an InputError (never a silent cast)."""
    if a.dtype.kind not in "biuf":
        what = "complex" if a.dtype.kind == "c" else "non-numeric"
        raise InputError(
            f"input '{path}' holds {what} values ({a.dtype}); the model takes real numbers: "
            "save a float array (e.g. its real part or magnitude, if that is what you mean)"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        out = a.astype(np.float32)
    if a.dtype.kind == "f" and a.dtype.itemsize > 4:
        overflow = np.isinf(out) & np.isfinite(a)
        if overflow.any():
            first = tuple(int(i) for i in np.argwhere(overflow)[0])
            raise InputError(
                f"input '{path}' holds {a[first]:g} (at index {first}), which overflows "
                f"float32 (largest {np.finfo(np.float32).max:.4g}); the model runs in float32: "
                "rescale the input"
            )
    return out


def read_input(path: Path, name: str, prep: Preprocessing, rank: int = 4):
    """One file → (rows [n, ...], display images (uint8 RGB or None) per row, names per row)."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        rows = read_npy(path, rank)
        names = [f"{name}[{i}]" if len(rows) > 1 else name for i in range(len(rows))]
        return rows, [None] * len(rows), names
    if suffix in IMAGE_SUFFIXES:
        if rank != 4:
            raise InputError(
                f"input '{path}' is an image but the model takes {rank}-D tensors: give .npy arrays"
            )
        rgb = fit_image(load_rgb(path), prep)
        return to_tensor(rgb, prep), [rgb], [name]
    if not path.exists():
        raise InputError(f"input '{path}' does not exist")
    raise InputError(
        f"input '{path}': unknown file type '{path.suffix}' (give .npy or an image file)"
    )

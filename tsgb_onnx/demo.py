"""`tsgb demo`: TSGB vs the exact gradient on a real photo with pretrained EfficientNet-Lite0."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import TsgbError
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, fit_image, to_tensor
from .render import heatmap, save_png


def cache_dir() -> Path:
    root = os.environ.get("TSGB_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tsgb-onnx")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def lite0_onnx(dynamo: bool = False, size: tuple[int, int] = (224, 224)) -> Path:
    """Pretrained EfficientNet-Lite0 exported to ONNX once per input size, cached on disk.

    TF-"SAME" pads depend on the input size, so each size is its own export.
    """
    tag = ("_dynamo" if dynamo else "") + ("" if size == (224, 224) else f"_{size[0]}x{size[1]}")
    path = cache_dir() / f"efficientnet_lite0{tag}.onnx"
    if not path.exists():
        import torch

        from .export import from_torch
        from .zoo.efficientnet_lite0 import efficientnet_lite0

        tmp = path.with_suffix(".tmp")
        example = torch.zeros((1, 3) + tuple(size))
        from_torch(efficientnet_lite0(pretrained=True), example, tmp, dynamo=dynamo)
        tmp.replace(path)
    return path


def photo(name: str) -> np.ndarray:
    """A photo bundled with scikit-image (e.g. 'chelsea', 'coffee') as uint8 RGB."""
    try:
        import skimage.data
    except ImportError:
        raise TsgbError("the demo photos come from scikit-image: pip install scikit-image") from None
    return np.asarray(getattr(skimage.data, name)())


LITE0_PREP = Preprocessing(size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, crop=False)
CAT, ESPRESSO = 285, 967  # ImageNet classes of chelsea (Egyptian cat) and coffee (espresso)


def two_photo_input() -> tuple[np.ndarray, np.ndarray]:
    """chelsea (left) and coffee (right), each 224x224: (uint8 RGB [224, 448, 3], x [1,3,224,448])."""
    rgb = np.concatenate([fit_image(photo("chelsea"), LITE0_PREP),
                          fit_image(photo("coffee"), LITE0_PREP)], axis=1)
    return rgb, to_tensor(rgb, LITE0_PREP)


def half_shares(saliency: np.ndarray) -> tuple[float, float]:
    """Share of positive saliency mass on the left and right halves of a [H, W] map."""
    positive = np.maximum(saliency, 0)
    total = float(positive.sum())
    if total == 0:
        return 0.0, 0.0
    left = float(positive[:, : positive.shape[1] // 2].sum()) / total
    return left, 1.0 - left


def _label(rgb: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    im = Image.fromarray(np.pad(rgb, ((22, 0), (0, 0), (0, 0)), constant_values=255))
    ImageDraw.Draw(im).text((4, 5), text, fill=(0, 0, 0))
    return np.asarray(im)


def run_demo(out: str | os.PathLike = "tsgb_demo.png", alpha: float = 1.0,
             image: str = "chelsea") -> Path:
    """Write a PNG: the photo, its TSGB map and its exact-gradient map side by side."""
    from .explainer import Explainer

    model = lite0_onnx()
    rgb = fit_image(photo(image), LITE0_PREP)
    x = to_tensor(rgb, LITE0_PREP)
    tsgb = Explainer(model, method="tsgb", alpha=alpha).explain(x)
    grad = Explainer(model, method="gradient").explain(x, target=tsgb.target)
    target = int(tsgb.target[0])
    probs = np.exp(tsgb.logits[0] - tsgb.logits[0].max())
    probs /= probs.sum()
    panels = [
        _label(rgb, f"{image}: class {target} p={probs[target]:.2f}"),
        _label(heatmap(tsgb.saliency[0]), f"TSGB (alpha={alpha:g})"),
        _label(heatmap(grad.saliency[0]), "exact gradient x input"),
    ]
    gap = np.full((panels[0].shape[0], 6, 3), 255, np.uint8)
    strip = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
    out = Path(out)
    save_png(strip, out)
    print(f"{image}: class {target} (p={probs[target]:.2f}); wrote {out}")
    return out

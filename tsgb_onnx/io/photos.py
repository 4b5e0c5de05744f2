"""Real photos and the pretrained EfficientNet-Lite0 they are explained with (the demo, the
evaluation photos, the benchmarks)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tsgb_onnx.errors import TsgbError
from tsgb_onnx.io.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, fit_image, to_tensor


def cache_dir() -> Path:
    root = os.environ.get("TSGB_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "tsgb-onnx"
    )
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

        from tsgb_onnx.io.export import from_torch
        from tsgb_onnx.io.zoo.efficientnet_lite0 import efficientnet_lite0

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
        raise TsgbError(
            "the demo photos come from scikit-image: pip install scikit-image"
        ) from None
    return np.asarray(getattr(skimage.data, name)())


LITE0_PREP = Preprocessing(size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, crop=False)
CAT, ESPRESSO = 285, 967  # ImageNet classes of chelsea (Egyptian cat) and coffee (espresso)


def two_photo_input() -> tuple[np.ndarray, np.ndarray]:
    """chelsea (left) and coffee (right), each 224x224:
    (uint8 RGB [224, 448, 3], x [1, 3, 224, 448])."""
    rgb = np.concatenate(
        [fit_image(photo("chelsea"), LITE0_PREP), fit_image(photo("coffee"), LITE0_PREP)], axis=1
    )
    return rgb, to_tensor(rgb, LITE0_PREP)


def half_shares(saliency: np.ndarray) -> tuple[float, float]:
    """Share of positive saliency mass on the left and right halves of a [H, W] map."""
    positive = np.maximum(saliency, 0)
    total = float(positive.sum())
    if total == 0:
        return 0.0, 0.0
    left = float(positive[:, : positive.shape[1] // 2].sum()) / total
    return left, 1.0 - left

"""The result of an explanation, and per-row target resolution (a leaf module)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tsgb_onnx.errors import TargetError

TargetLike = int | Sequence[int] | np.ndarray | None


@dataclass
class Explanation:
    """Result of one explanation call: NumPy arrays, or CPU torch tensors when the input
    was a torch tensor."""

    saliency: np.ndarray  # [B, *spatial] = sum over channels of signal * activation at `layer`
    #                       (channels-last inputs, e.g. NHWC Keras exports, are detected);
    #                       map methods (gradcam, fullgrad, ...): their map, at the input size
    signal: np.ndarray | None  # backward signal at `layer`, same shape as that tensor (map
    #                            methods: the signal their map is built from, or None)
    logits: np.ndarray  # [B, classes]
    target: np.ndarray  # [B] int64
    layer: str
    method: str
    # the value at `layer` (a reference method: its difference from the reference pass);
    # None for map methods
    activation: np.ndarray | None = None

    @property
    def attribution(self) -> np.ndarray | None:
        """Per-channel attribution signal * activation at `layer` (Captum's attribution of
        input x gradient, DeepLIFT, LRP, ...); `saliency` is its sum over channels."""
        if self.signal is None or self.activation is None:
            return None
        return self.signal * self.activation


def resolve_targets(target: TargetLike, logits: np.ndarray) -> np.ndarray:
    """Per-row target classes: None → top-1, an int → every row, a sequence → one per row."""
    batch, classes = logits.shape
    if target is None:
        return np.argmax(logits, axis=1).astype(np.int64)
    arr = np.asarray(target)
    if arr.dtype.kind not in "iu" and not (arr.dtype.kind == "f" and np.all(arr == np.round(arr))):
        raise TargetError(f"target must be integer class indices, got {target!r}")
    arr = arr.astype(np.int64)
    if arr.ndim == 0:
        arr = np.full(batch, int(arr), dtype=np.int64)
    elif arr.shape != (batch,):
        raise TargetError(
            f"got {arr.size} targets for a batch of {batch}: give one per row or one int"
        )
    bad = arr[(arr < 0) | (arr >= classes)]
    if bad.size:
        raise TargetError(
            f"target {int(bad[0])} is out of range: the model has {classes} classes "
            f"(0..{classes - 1})"
        )
    return arr

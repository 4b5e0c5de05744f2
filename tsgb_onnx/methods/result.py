"""The result of an explanation, and per-row target resolution (a leaf module): class
indices for a classifier's logits [B, classes], `DenseTarget`s (a channel summed over a mask
or box of positions) for a dense output such as a segmentation map [B, C, H, W]."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tsgb_onnx.errors import TargetError


@dataclass
class Explanation:
    """Result of one explanation call: NumPy arrays, or CPU torch tensors when the input
    was a torch tensor."""

    saliency: np.ndarray  # [B, *spatial] = sum over channels of signal * activation at `layer`
    #                       (channels-last inputs, e.g. NHWC Keras exports, are detected);
    #                       map methods (gradcam, fullgrad, ...): their map, at the input size
    signal: np.ndarray | None  # backward signal at `layer`, same shape as that tensor (map
    #                            methods: the signal their map is built from, or None)
    logits: np.ndarray  # [B, classes]; for a dense target: the model's dense output
    target: np.ndarray  # [B] int64; for a dense target: [B] objects, each row's resolved
    #                     DenseTarget (its channel, axis and mask of the output's positions)
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


class DenseTarget:
    """The score of a dense output (segmentation map [B, C, H, W], detection or sequence
    head [B, C, N] / [B, T, C]) that an explanation explains: output channel `channel`
    summed over `mask` or `box` of the output's positions (pytorch-grad-cam's
    ``SemanticSegmentationTarget(category, mask)``). The backward is seeded with
    channel one-hot x mask at the output instead of one_hot(class) at the logits.

    `mask`: bool or float weights of the output's position shape (e.g. [H, W]), or one per
    row ([B, H, W]). `box`: (y0, x0, y1, x1) in output positions, ends excluded (a 1-D
    output: (t0, t1)). Neither: every position. `axis`: the output's channel axis (default 1,
    or the last for a channels-last output)."""

    __slots__ = ("channel", "mask", "box", "axis")

    def __init__(
        self,
        channel: int,
        mask: np.ndarray | Sequence | None = None,
        box: Sequence[int] | None = None,
        axis: int | None = None,
    ):
        self.channel = _index(channel, "DenseTarget channel")
        if mask is not None and box is not None:
            raise TargetError("DenseTarget takes a mask or a box, not both")
        self.mask = None if mask is None else _mask_array(mask)
        self.box = None if box is None else _box(box)
        self.axis = None if axis is None else _axis(axis)

    def __repr__(self) -> str:
        region = (
            f", mask={list(self.mask.shape)}"
            if self.mask is not None
            else f", box={self.box}"
            if self.box is not None
            else ""
        )
        axis = f", axis={self.axis}" if self.axis is not None else ""
        return f"DenseTarget({self.channel}{region}{axis})"

    def score(self, output_row: np.ndarray) -> float:
        """The explained score of one row of the output (a resolved target: its channel
        times its mask, summed)."""
        if self.mask is None or self.axis is None:
            raise TargetError("DenseTarget.score needs a resolved target (Explanation.target)")
        plane = np.moveaxis(np.asarray(output_row), self.axis - 1, 0)[self.channel]
        return float((plane.astype(np.float64) * self.mask).sum())


TargetLike = int | Sequence[int] | np.ndarray | DenseTarget | Sequence[DenseTarget] | None


def _index(value, what: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TargetError(f"{what} must be a non-negative int, got {value!r}")
    if value < 0:
        raise TargetError(f"{what} must be a non-negative int, got {value}")
    return int(value)


def _mask_array(mask) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.dtype.kind not in "biuf" or arr.ndim == 0:
        raise TargetError(
            f"DenseTarget mask must be a bool or number array of the output's positions, got "
            f"{type(mask).__name__} of dtype {arr.dtype}, shape {arr.shape}"
        )
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise TargetError("DenseTarget mask holds NaN or Inf: give finite weights")
    return arr


def _box(box) -> tuple[int, ...]:
    values = tuple(box) if isinstance(box, (list, tuple, np.ndarray)) else None
    if not values or len(values) % 2:
        raise TargetError(
            f"DenseTarget box must be (y0, x0, y1, x1) (starts, then ends), got {box!r}"
        )
    values = tuple(_index(v, "a DenseTarget box value") for v in values)
    half = len(values) // 2
    for start, stop in zip(values[:half], values[half:]):
        if stop <= start:
            raise TargetError(
                f"DenseTarget box {values} is empty: give (y0, x0, y1, x1) with y0 < y1, x0 < x1"
            )
    return values


def _axis(axis) -> int:
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise TargetError(f"DenseTarget axis must be an int, got {axis!r}")
    if axis == 0:
        raise TargetError("DenseTarget axis 0 is the batch: give the output's channel axis")
    return int(axis)


def is_dense_target(target) -> bool:
    """Whether `target` is a DenseTarget or one per row (a mix with class indices is an
    error)."""
    if isinstance(target, DenseTarget):
        return True
    if isinstance(target, (list, tuple)) or (
        isinstance(target, np.ndarray) and target.dtype == object
    ):
        dense = [isinstance(t, DenseTarget) for t in np.asarray(target, dtype=object).ravel()]
        if any(dense) and not all(dense):
            raise TargetError("targets mix DenseTargets and class indices: give one kind")
        return bool(dense) and all(dense)
    return False


def resolve_dense_targets(target, output_shape: tuple, default_axis: int) -> np.ndarray:
    """Per-row resolved `DenseTarget`s ([B] objects, each with its concrete channel axis
    and a float32 mask of the output's positions) for an output of `output_shape`."""
    shape = tuple(int(d) for d in output_shape)
    batch, rank = shape[0], len(shape)
    if rank < 3:
        raise TargetError(
            f"a DenseTarget explains a dense output [batch, channels, *positions]; this "
            f"output has shape {list(shape)} ([batch, classes]): give the class index instead"
        )
    rows = [target] * batch if isinstance(target, DenseTarget) else list(np.ravel(target))
    if len(rows) != batch:
        raise TargetError(
            f"got {len(rows)} DenseTargets for a batch of {batch}: give one per row or one"
        )
    if isinstance(target, DenseTarget) and target.mask is not None:
        positions = _positions(shape, _axis_of(target, default_axis, rank))
        if target.mask.shape == (batch,) + positions:  # one mask per row
            return _objects([_resolve_row(target, shape, default_axis, b) for b in range(batch)])
    return _objects([_resolve_row(t, shape, default_axis, None) for t in rows])


def _objects(items: list) -> np.ndarray:
    """A 1-D object array of `items` (NumPy would nest arrays held by them)."""
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        out[i] = item
    return out


def _axis_of(target: DenseTarget, default_axis: int, rank: int) -> int:
    axis = default_axis if target.axis is None else target.axis
    if not -rank < axis < rank or axis % rank == 0:
        raise TargetError(
            f"DenseTarget axis {axis} is not a channel axis of the {rank}-D output "
            f"(1..{rank - 1} or -1..-{rank - 1})"
        )
    return axis % rank


def _positions(shape: tuple, axis: int) -> tuple:
    return tuple(d for i, d in enumerate(shape) if i not in (0, axis))


def _resolve_row(target, shape: tuple, default_axis: int, row: int | None) -> DenseTarget:
    """`target` for one row: channel checked, its mask (or box, or all positions) as a
    float32 array of the output's position shape."""
    if not isinstance(target, DenseTarget):
        raise TargetError(f"targets mix DenseTargets and {type(target).__name__}: give one kind")
    axis = _axis_of(target, default_axis, len(shape))
    channels, positions = shape[axis], _positions(shape, axis)
    if target.channel >= channels:
        raise TargetError(
            f"DenseTarget channel {target.channel} is out of range: the output has {channels} "
            f"channels on axis {axis} (0..{channels - 1})"
        )
    if target.mask is not None:
        mask = target.mask if row is None else target.mask[row]
        if mask.shape != positions:
            raise TargetError(
                f"DenseTarget mask has shape {list(target.mask.shape)} but the output's "
                f"positions are {list(positions)} (output {list(shape)}, channels on axis "
                f"{axis}): give a mask of shape {list(positions)}, or one per row"
            )
    elif target.box is not None:
        mask = _box_mask(target.box, positions)
    else:
        mask = np.ones(positions, dtype=np.float32)
    if not mask.any():
        raise TargetError("DenseTarget mask selects no output position: its score would be 0")
    resolved = DenseTarget(target.channel, axis=axis)
    resolved.mask = np.ascontiguousarray(mask, dtype=np.float32)
    return resolved


def _box_mask(box: tuple[int, ...], positions: tuple) -> np.ndarray:
    half = len(box) // 2
    if half != len(positions):
        raise TargetError(
            f"DenseTarget box {box} has {half} start/end pairs but the output has "
            f"{len(positions)} position axes {list(positions)}: give "
            + ("(y0, x0, y1, x1)" if len(positions) == 2 else f"{len(positions)} starts, then ends")
        )
    for stop, size in zip(box[half:], positions):
        if stop > size:
            raise TargetError(
                f"DenseTarget box {box} reaches past the output's positions {list(positions)} "
                "(box in output positions, ends excluded)"
            )
    mask = np.zeros(positions, dtype=np.float32)
    mask[tuple(slice(a, b) for a, b in zip(box[:half], box[half:]))] = 1.0
    return mask


def dense_seed(targets: np.ndarray, output_shape: tuple) -> np.ndarray:
    """The backward's seed at the output for resolved `targets`: zeros, and each row's
    mask on its channel."""
    seed = np.zeros(tuple(int(d) for d in output_shape), dtype=np.float32)
    for b, t in enumerate(targets):
        np.moveaxis(seed[b], t.axis - 1, 0)[t.channel] = t.mask
    return seed

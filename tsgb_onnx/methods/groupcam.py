"""Group-CAM (Zhang et al., paper 002, Algorithm 1) as a map method.

Grad-CAM weights and activations at a feature map; channels split into contiguous groups;
each group's ReLU'd weighted sum is de-noised (values at or below the θ-th percentile set
to 0), bilinearly upsampled to the input size and min-max normalised; each mask blends the
input with its Gaussian-blurred copy, and the softmax gain of the target over the blurred
input weighs the mask. All masked inputs of a batch go through the model together.
"""

from __future__ import annotations

import numpy as np

from tsgb_onnx.errors import MethodError
from tsgb_onnx.methods.cam import (
    along_axis,
    channels_first,
    check_feature_map,
    chunk_rows,
    default_cam_layer,
    resize_linear,
)
from tsgb_onnx.methods.result import Explanation


def gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian of `size` taps (odd)."""
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
    kernel = np.exp(-(offsets**2) / (2.0 * sigma**2))
    return kernel / kernel.sum()


def _reflect(index: np.ndarray, n: int) -> np.ndarray:
    """Mirror indices into [0, n) without repeating the edge (NumPy/PyTorch 'reflect')."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    index = np.abs(index) % period
    return np.where(index >= n, period - index, index)


def blur_matrix(n: int, kernel: np.ndarray) -> np.ndarray:
    """[n, n] matrix of a 1-D convolution with `kernel` under reflect padding."""
    radius = (len(kernel) - 1) // 2
    rows = np.repeat(np.arange(n), len(kernel))
    cols = _reflect(np.arange(n)[:, None] + np.arange(-radius, radius + 1)[None, :], n).ravel()
    matrix = np.zeros((n, n))
    np.add.at(matrix, (rows, cols), np.tile(kernel, n))
    return matrix


def gaussian_blur(x: np.ndarray, size: int = 51, sigma: float = 50.0) -> np.ndarray:
    """Blur the spatial axes (2, 3, ...) of a channels-first batch, reflect padding."""
    kernel = gaussian_kernel(size, sigma)
    out = np.asarray(x, dtype=np.float64)
    for axis in range(2, out.ndim):
        matrix = blur_matrix(out.shape[axis], kernel)
        out = along_axis(out, matrix, axis)
    return out.astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def _minmax(masks: np.ndarray) -> np.ndarray:
    """Min-max normalise each mask over its trailing axes; constant masks stay as they are."""
    flat = masks.reshape(masks.shape[:2] + (-1,))
    low, high = flat.min(axis=2), flat.max(axis=2)
    span = high - low
    shape = masks.shape[:2] + (1,) * (masks.ndim - 2)
    safe = np.where(span > 0, span, 1.0).reshape(shape)
    scaled = (masks - low.reshape(shape)) / safe
    return np.where((span > 0).reshape(shape), scaled, masks).astype(np.float32)


def group_masks(
    activation: np.ndarray, signal: np.ndarray, groups: int, threshold: float, size
) -> np.ndarray:
    """The de-noised, upsampled, normalised group masks M' [B, groups, *size]."""
    axes = tuple(range(2, activation.ndim))
    weights = signal.mean(axis=axes, keepdims=True)
    weighted = weights * activation
    parts = np.array_split(np.arange(activation.shape[1]), groups)
    masks = np.stack([np.maximum(weighted[:, idx].sum(axis=1), 0.0) for idx in parts], axis=1)
    flat = masks.reshape(masks.shape[:2] + (-1,))
    cut = np.percentile(flat, threshold, axis=2).reshape(masks.shape[:2] + (1,) * len(axes))
    masks = np.where(masks > cut, masks, 0.0).astype(np.float32)
    return _minmax(resize_linear(masks, size))


def _forward_in_chunks(explainer, batch: np.ndarray, chunk: int | None) -> np.ndarray:
    """Logits of `batch`: one forward, or chunks of `chunk` rows (a fixed batch: its size)."""
    step = chunk_rows(explainer, chunk or batch.shape[0])
    return np.concatenate(
        [explainer.infer(batch[i : i + step]) for i in range(0, batch.shape[0], step)]
    )


def groupcam(explainer, x, target, layer, options):
    graph = explainer.graph
    layer = layer or options["layer"] or default_cam_layer(graph)
    logits, targets, taken = explainer.signals(x, target, [layer])
    activation, signal = (channels_first(graph, layer, t) for t in taken[layer])
    check_feature_map(graph, "groupcam", layer, activation)
    groups = int(options["groups"])
    if groups > activation.shape[1]:
        raise MethodError(
            f"groupcam: groups={groups} exceeds the {activation.shape[1]} channels "
            f"of '{layer}': use groups <= {activation.shape[1]}"
        )
    image = channels_first(graph, graph.input_name, x)
    masks = group_masks(
        activation, signal, groups, float(options["threshold"]), image.shape[2:]
    )  # [B, G, *S]
    blurred = gaussian_blur(image, int(options["blur_size"]), float(options["blur_sigma"]))
    m = masks[:, :, None]  # [B, G, 1, *S]
    mixed = image[:, None] * m + blurred[:, None] * (1.0 - m)  # [B, G, C, *S]
    batch = np.concatenate([mixed.reshape((-1,) + image.shape[1:]), blurred])
    if graph.channel_axis(graph.input_name) == -1:
        batch = np.moveaxis(batch, 1, -1)
    scores = softmax(
        _forward_in_chunks(explainer, np.ascontiguousarray(batch), options["batch_size"])
    )
    rows = np.arange(x.shape[0])
    b, g = masks.shape[:2]
    masked_scores = scores[: b * g].reshape(b, g, -1)[rows, :, targets]  # [B, G]
    base_scores = scores[b * g :][rows, targets]  # [B]
    gains = masked_scores - base_scores[:, None]
    saliency = np.maximum(np.einsum("bg,bg...->b...", gains, masks), 0.0)
    saliency = _minmax(saliency[:, None])[:, 0]
    return Explanation(
        saliency=saliency.astype(np.float32),
        signal=signal,
        logits=logits,
        target=targets,
        layer=layer,
        method="groupcam",
    )


def check_options(options: dict) -> None:
    groups, threshold = options["groups"], options["threshold"]
    if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool) or groups < 1:
        raise MethodError(f"groupcam: groups must be a positive integer, got {groups!r}")
    if not isinstance(threshold, (int, float)) or not 0 <= threshold <= 100:
        raise MethodError(f"groupcam: threshold is a percentile in [0, 100], got {threshold!r}")
    size, sigma = options["blur_size"], options["blur_sigma"]
    if not isinstance(size, (int, np.integer)) or size < 1 or size % 2 == 0:
        raise MethodError(f"groupcam: blur_size must be an odd positive integer, got {size!r}")
    if not isinstance(sigma, (int, float)) or not sigma > 0:
        raise MethodError(f"groupcam: blur_sigma must be > 0, got {sigma!r}")
    chunk = options["batch_size"]
    if chunk is not None and (not isinstance(chunk, (int, np.integer)) or chunk < 1):
        raise MethodError(
            f"groupcam: batch_size must be a positive integer or None (one "
            f"forward for all masked inputs), got {chunk!r}"
        )
    layer = options["layer"]
    if layer is not None and not isinstance(layer, str):
        raise MethodError(f"groupcam: layer must be a tensor name, got {layer!r}")

"""Methods computed from forward passes and backward signals: Grad-CAM and FullGrad.

Each is a `MapMethod`: it reads activations and signals at several tensors from one
backward pass (`Explainer.signals`) and builds its map in NumPy. Importing this module
also registers DeepLIFT (a rule set with a reference pass) and the SmoothGrad /
Integrated Gradients wrappers.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np

from tsgb_onnx.engine.program import live_tensors
from tsgb_onnx.errors import MethodError
from tsgb_onnx.ir.graph import Graph
from tsgb_onnx.methods.result import Explanation

# ops that only move or relabel values: a CAM layer is the feature map before them
LAYOUT_OPS = {"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Cast"}


# -- helpers shared by map methods ---------------------------------------------------------
_BLAS: list = []  # the process's threadpoolctl controller, made on first use


def along_axis(a: np.ndarray, matrix: np.ndarray, axis: int) -> np.ndarray:
    """`a` with `axis` replaced by `matrix` [out, in] applied along it (a resize, a blur),
    on one BLAS thread: a multi-threaded BLAS leaves its threads spinning after each of
    these small products, and they slowed the ONNX Runtime runs that follow (Group-CAM and
    FullGrad up to 2x on the small nets; docs/benchmarks.md). The process's own BLAS
    setting is restored after each product."""
    if not _BLAS:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS.append(ThreadpoolController())
        except ImportError:  # threadpoolctl is a dependency; without it, BLAS as it is
            _BLAS.append(None)
    one_thread = _BLAS[0].limit(limits=1, user_api="blas") if _BLAS[0] else nullcontext()
    with one_thread:
        return np.moveaxis(np.tensordot(a, matrix, axes=([axis], [1])), -1, axis)


def _interp_matrix(size_in: int, size_out: int, align_corners: bool) -> np.ndarray:
    """[size_out, size_in] linear interpolation weights (torch F.interpolate semantics)."""
    dst = np.arange(size_out, dtype=np.float64)
    if align_corners:
        src = dst * ((size_in - 1) / (size_out - 1)) if size_out > 1 else np.zeros_like(dst)
    else:
        src = np.maximum((dst + 0.5) * (size_in / size_out) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
    hi = np.minimum(lo + 1, size_in - 1)
    frac = src - lo
    weights = np.zeros((size_out, size_in))
    np.add.at(weights, (np.arange(size_out), lo), 1.0 - frac)
    np.add.at(weights, (np.arange(size_out), hi), frac)
    return weights


def resize_linear(a: np.ndarray, size, align_corners: bool = False) -> np.ndarray:
    """Resize the trailing `len(size)` axes of `a` by (bi/tri)linear interpolation, as
    torch's ``F.interpolate(mode='bilinear' | 'linear' | 'trilinear')``."""
    size = tuple(int(s) for s in size)
    out = np.asarray(a, dtype=np.float32)
    nd = len(size)
    for k, target in enumerate(size):
        axis = out.ndim - nd + k
        if out.shape[axis] == target:
            continue
        weights = _interp_matrix(out.shape[axis], target, align_corners).astype(np.float32)
        out = along_axis(out, weights, axis)
    return np.ascontiguousarray(out)


def channels_first(graph: Graph, tensor: str, a: np.ndarray) -> np.ndarray:
    """`a` (a value of `tensor`) with its channel axis at position 1."""
    return np.moveaxis(a, -1, 1) if graph.channel_axis(tensor) == -1 and a.ndim > 2 else a


def input_spatial(graph: Graph, x: np.ndarray) -> tuple[int, ...]:
    """The spatial size of the model input `x`."""
    first = channels_first(graph, graph.input_name, x)
    return tuple(first.shape[2:])


def _spatial_size(shape) -> int | None:
    dims = shape[2:]
    if any(not isinstance(d, int) for d in dims):
        return None
    return int(np.prod(dims))


def spatial_rank(graph: Graph) -> int | None:
    """How many spatial axes the model input has (2 for images), None when unknown."""
    shape = graph.input_shape
    return len(shape) - 2 if shape and len(shape) >= 3 else None


def block_outputs(graph: Graph) -> list[str]:
    """The tensors every path from the input to the logits passes through (dominators: the
    outputs of whole blocks, never of a branch inside one), in topological order.

    Walking the nodes on the path in order, a tensor is one iff right after its producer
    runs it is the only float tensor from the input still waiting for a consumer."""
    live = live_tensors(graph)
    active = [
        n
        for n in graph.nodes
        if any(t in live for t in n.inputs) and any(t in live for t in n.outputs)
    ]
    waiting: dict[str, int] = {}  # live tensor -> its consumers on the path not yet run
    for node in active:
        for t in set(node.inputs) & live:
            waiting[t] = waiting.get(t, 0) + 1
    pending = {graph.input_name} & set(waiting)
    found = []
    for node in active:
        for t in set(node.inputs) & live:
            waiting[t] -= 1
            if not waiting[t]:
                pending.discard(t)
        made = [t for t in node.outputs if t in live]
        pending.update(made)
        if len(made) == 1 and pending == set(made):
            found.append(made[0])
    return found


def _channels_first_shape(graph: Graph, tensor: str) -> tuple | None:
    """`tensor`'s static shape with its channel axis at position 1 (None: unknown)."""
    shape = graph.shapes.get(tensor)
    if not shape:
        return None
    if len(shape) >= 3 and graph.channel_axis(tensor) == -1:
        return (shape[0], shape[-1]) + tuple(shape[1:-1])
    return tuple(shape)


def default_cam_layer(graph: Graph) -> str:
    """The default Grad-CAM layer: the last block output on the path to the logits (a tensor
    every path from the input passes through; `block_outputs`) with the input's spatial
    rank and spatial size > 1, not the output of a layout op such as the channels-last
    Transpose of a Keras export. On a CNN this is the last block's output before the global
    pooling; on a token net (ViT, MLP-Mixer) the patch-embedding map."""
    rank = spatial_rank(graph)
    best = None
    for out in block_outputs(graph):
        if graph.producer[out].op_type in LAYOUT_OPS:
            continue
        shape = _channels_first_shape(graph, out)
        if not shape or len(shape) < 3 or (rank is not None and len(shape) - 2 != rank):
            continue
        spatial = _spatial_size(shape)
        if spatial is None or spatial > 1:
            best = out
    if best is None:
        axes = f"the input's {rank} spatial axes" if rank is not None else "spatial axes"
        raise MethodError(
            f"no spatial tensor (a block output with {axes}, spatial size > 1) "
            "feeds the logits: choose the tensor with layer=NAME (CLI: --layer NAME)"
        )
    return best


def check_feature_map(graph: Graph, method: str, layer: str, activation: np.ndarray) -> None:
    """MethodError unless `activation` (the value of `layer`, channels first) is a feature
    map [batch, channels, *spatial] with as many spatial axes as the model input."""
    rank = spatial_rank(graph)
    if activation.ndim >= 3 and rank in (None, activation.ndim - 2):
        return
    axes = "" if rank is None else f" with the input's {rank} spatial axes"
    token = " (a token tensor [batch, tokens, channels]?)" if activation.ndim == 3 else ""
    try:
        default = default_cam_layer(graph)
    except MethodError:
        default = None
    such = f", e.g. '{default}' (the default)" if default not in (None, layer) else ""
    raise MethodError(
        f"{method}: layer '{layer}' has shape {tuple(activation.shape)}, not [batch, channels, "
        f"*spatial]{axes}{token}: choose a feature map{such}"
    )


def chunk_rows(explainer, batch_size: int) -> int:
    """Rows per model run: the model's fixed batch size if it has one, else `batch_size`."""
    fixed = (explainer.graph.input_shape or (None,))[0]
    return fixed if isinstance(fixed, int) and fixed > 0 else batch_size


def normalise_rows(a: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """FullGrad's post-processing: |a|, then per row shift to min 0 and scale to max ~1."""
    a = np.abs(a)
    flat = a.reshape(a.shape[0], -1)
    a = a - flat.min(axis=1).reshape((-1,) + (1,) * (a.ndim - 1))
    flat = a.reshape(a.shape[0], -1)
    return a / (flat.max(axis=1).reshape((-1,) + (1,) * (a.ndim - 1)) + eps)


# -- Grad-CAM --------------------------------------------------------------------------------
UPSAMPLING = ("bilinear", "nearest", "none")


def resize_nearest(a: np.ndarray, size) -> np.ndarray:
    """Nearest-neighbour resize of the trailing axes (torch's ``mode='nearest'``)."""
    out = np.asarray(a, dtype=np.float32)
    nd = len(size)
    for k, target in enumerate(size):
        axis = out.ndim - nd + k
        index = np.floor(np.arange(int(target)) * (out.shape[axis] / int(target))).astype(int)
        out = np.take(out, np.minimum(index, out.shape[axis] - 1), axis=axis)
    return np.ascontiguousarray(out)


def upsample(a: np.ndarray, size, mode: str) -> np.ndarray:
    """`a` [B, *spatial] at `size` by `mode` (one of UPSAMPLING; "none" keeps it)."""
    if mode == "none":
        return np.ascontiguousarray(a, dtype=np.float32)
    return resize_nearest(a, size) if mode == "nearest" else resize_linear(a, size)


def minmax_rows(a: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Per row: shift to min 0 and scale to max 1 (a constant row becomes 0)."""
    flat = a.reshape(a.shape[0], -1)
    low = flat.min(axis=1).reshape((-1,) + (1,) * (a.ndim - 1))
    span = (flat.max(axis=1) - flat.min(axis=1)).reshape((-1,) + (1,) * (a.ndim - 1))
    return ((a - low) / np.maximum(span, eps)).astype(np.float32)


def cam_layers(graph: Graph, layer) -> list[str]:
    """The Grad-CAM layers: one tensor name, several, or None (the default layer)."""
    if layer is None:
        return [default_cam_layer(graph)]
    return [layer] if isinstance(layer, str) else list(layer)


def gradcam_layers(graph: Graph, options: dict) -> list[str]:
    """The tensors Grad-CAM (and Group-CAM) reads with `options`: its `layer` option, else
    the default layer; none when the graph has no default (explaining says why)."""
    try:
        return cam_layers(graph, options.get("layer"))
    except MethodError:
        return []


def _cam(graph: Graph, layer: str, activation: np.ndarray, signal: np.ndarray) -> np.ndarray:
    a = channels_first(graph, layer, activation)
    g = channels_first(graph, layer, signal)
    check_feature_map(graph, "gradcam", layer, a)
    weights = g.mean(axis=tuple(range(2, a.ndim)), keepdims=True)
    return np.maximum((weights * a).sum(axis=1), 0.0)


def _check_map_shape(saliency: np.ndarray, x_rows: int, size: tuple, mode: str) -> None:
    """MethodError unless the map is [B, *input spatial] (upsample 'none': the layer's own
    spatial size, with the input's spatial rank): a wrong-shaped map is never returned."""
    rows, spatial = saliency.shape[0], saliency.shape[1:]
    if rows == x_rows and len(spatial) == len(size) and (mode == "none" or spatial == size):
        return
    raise MethodError(
        f"gradcam: the map has shape {saliency.shape}, not [{x_rows}, "
        f"{', '.join(map(str, size))}] (the input's rows and spatial size): choose a "
        "feature map with the input's spatial axes as the layer"
    )


def gradcam(explainer, x, target, layer, options):
    """Grad-CAM at one layer (raw map), or at several: each layer's map min-max scaled,
    upsampled and averaged, then scaled again (pytorch-grad-cam's several target layers)."""
    graph = explainer.graph
    layers = cam_layers(graph, layer or options["layer"])
    logits, targets, taken = explainer.signals(x, target, layers)
    size = input_spatial(graph, x)
    mode = options["upsample"]
    cams = [_cam(graph, t, *taken[t]) for t in layers]
    if len(cams) == 1:
        saliency = upsample(cams[0], size, mode)
    else:
        if mode == "none":
            raise MethodError(
                "gradcam: several layers are combined at the input size: "
                "use upsample='bilinear' or 'nearest'"
            )
        scaled = [upsample(minmax_rows(c), size, mode) for c in cams]
        saliency = minmax_rows(np.mean(scaled, axis=0))
    _check_map_shape(saliency, len(x), tuple(size), mode)
    return Explanation(
        saliency=saliency,
        signal=taken[layers[0]][1],
        logits=logits,
        target=targets,
        layer=layers[0],
        method="gradcam",
    )


def check_layer(options: dict) -> None:
    layer = options.get("layer")
    names = [layer] if isinstance(layer, str) else layer
    if layer is not None and (
        not isinstance(names, (list, tuple))
        or not names
        or not all(isinstance(n, str) for n in names)
    ):
        raise MethodError(f"layer must be a tensor name or a list of them, got {layer!r}")
    mode = options.get("upsample", "bilinear")
    if mode not in UPSAMPLING:
        raise MethodError(f"upsample must be one of {', '.join(UPSAMPLING)}, got {mode!r}")


# -- FullGrad -------------------------------------------------------------------------------------
def _bias_of(node) -> np.ndarray | None:
    """The bias a node adds per channel: Conv's B, BatchNormalization's effective shift."""
    if node.op_type == "Conv":
        return node.const(2) if node.has_input(2) else None
    if node.op_type == "BatchNormalization":
        scale, shift, mean, var = (node.const(i) for i in (1, 2, 3, 4))
        if any(v is None for v in (scale, shift, mean, var)):
            return None
        eps = node.attr("epsilon", 1e-5)
        std = np.sqrt(var.astype(np.float64) + eps)
        return (shift - mean * scale / std).astype(np.float32)
    return None


def bias_nodes(graph: Graph) -> list:
    """Conv / BatchNormalization nodes on the path to the logits with a spatial output and a
    constant bias: FullGrad's bias-gradient terms."""
    live = live_tensors(graph)
    rank = len(graph.input_shape or ())
    found = []
    for node in graph.nodes:
        out = node.outputs[0]
        shape = graph.shapes.get(out)
        if out in live and shape and len(shape) == rank and _bias_of(node) is not None:
            found.append(node)
    return found


def fullgrad_layers(graph: Graph, options: dict) -> list[str]:
    """The tensors FullGrad reads: the model input, then every bias node's output."""
    return [graph.input_name] + [n.outputs[0] for n in bias_nodes(graph)]


def fullgrad(explainer, x, target, layer, options):
    graph = explainer.graph
    if layer not in (None, graph.input_name):
        raise MethodError("fullgrad builds its map at the model input: do not give a layer")
    nodes = bias_nodes(graph)
    layers = fullgrad_layers(graph, options)
    logits, targets, taken = explainer.signals(x, target, layers)
    activation, grad_x = taken[graph.input_name]
    saliency = normalise_rows(channels_first(graph, graph.input_name, grad_x * activation)).sum(1)
    size = saliency.shape[1:]
    for node in nodes:
        out = node.outputs[0]
        g = channels_first(graph, out, taken[out][1])
        bias = _bias_of(node).reshape((1, -1) + (1,) * (g.ndim - 2))
        # upsampling is linear: sum the channels first (C times less to resize)
        term = normalise_rows(g * bias).sum(1)
        saliency += resize_linear(term, size, align_corners=True)
    return Explanation(
        saliency=saliency.astype(np.float32),
        signal=grad_x,
        logits=logits,
        target=targets,
        layer=graph.input_name,
        method="fullgrad",
    )

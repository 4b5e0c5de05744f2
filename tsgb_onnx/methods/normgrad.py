"""NormGrad and selective NormGrad (paper 003, sec. 3-5) as map methods.

At a tensor with activation ``x`` and exact-gradient signal ``g`` (channels at axis 1):

* ``normgrad`` with ``variant="identity"`` (the virtual identity 1×1 layer):
  ``||g(u)|| * ||x(u)||``, norms over channels at each location u;
* ``normgrad`` with ``variant="conv"`` at the output of an existing Conv:
  ``||g_out(u)|| * ||unfold_k(x_in)(u)||`` with the conv's kernel, strides, dilations and
  pads (per conv group: the Frobenius norm of the block-diagonal contribution);
* ``selective_normgrad``: ``||(g ⊙ x)_+||``.

Several layers (``layers="a,b,c"``) come from one backward pass; each layer's map is min-max
normalised per image, upsampled to the input size and combined with normalised weights,
additively (``combine="sum"``) or as a weighted product (``combine="product"``). One layer
gives its raw map upsampled. ``meta_saliency=True`` adds the paper's inner SGD step
(sec. 5, see `tsgb_onnx.meta`).
"""

from __future__ import annotations

import numpy as np

from tsgb_onnx.backends.numpy_ops import NumpyOps
from tsgb_onnx.engine.program import live_tensors
from tsgb_onnx.errors import MethodError
from tsgb_onnx.ir.geometry import window_of
from tsgb_onnx.methods.cam import (
    channels_first,
    check_feature_map,
    default_cam_layer,
    input_spatial,
    resize_linear,
)
from tsgb_onnx.methods.meta_saliency import meta_explain
from tsgb_onnx.methods.result import Explanation

VARIANTS = ("identity", "conv")
COMBINE = ("sum", "product")


def last_conv_output(graph) -> str:
    """The output of the last Conv on the path to the logits."""
    live = live_tensors(graph)
    convs = [n for n in graph.nodes if n.op_type == "Conv" and n.outputs[0] in live]
    if not convs:
        raise MethodError(
            "normgrad: variant='conv' found no Conv on the path to the logits: "
            "use variant='identity'"
        )
    return convs[-1].outputs[0]


def layer_list(value, graph, variant: str = "identity") -> list[str]:
    """The `layers` option as a list. None: the last spatial tensor before pooling
    (variant 'identity') or the last Conv's output (variant 'conv')."""
    if value is None:
        return [last_conv_output(graph) if variant == "conv" else default_cam_layer(graph)]
    names = value.split(",") if isinstance(value, str) else list(value)
    names = [str(n).strip() for n in names if str(n).strip()]
    if not names:
        raise MethodError("normgrad: layers is empty: give tensor names, e.g. layers=a,b")
    return list(dict.fromkeys(names))


def needed_layers(graph, options: dict) -> list[str]:
    """The tensors (selective) NormGrad reads with `options`: its layers, with each Conv's
    input for variant 'conv'; the model input with `meta_saliency` (the weight gradients);
    none when the graph has no default layer (explaining says why)."""
    if options["meta_saliency"]:
        return [graph.input_name]
    variant = options.get("variant", "identity")
    try:
        layers = layer_list(options["layers"], graph, variant)
    except MethodError:
        return []
    if variant == "conv":
        producers = (graph.producer.get(t) for t in layers)
        layers += [n.inputs[0] for n in producers if n is not None and n.op_type == "Conv"]
    return layers


def _channel_norm(a: np.ndarray) -> np.ndarray:
    return np.sqrt(np.square(a, dtype=np.float64).sum(axis=1))


def identity_map(activation: np.ndarray, signal: np.ndarray) -> np.ndarray:
    """Virtual identity layer: ||g(u)|| ||x(u)||."""
    return _channel_norm(signal) * _channel_norm(activation)


def selective_map(activation: np.ndarray, signal: np.ndarray) -> np.ndarray:
    """Selective NormGrad: ||(g ⊙ x)_+||."""
    return _channel_norm(np.maximum(signal * activation, 0.0))


def conv_map(node, x_in: np.ndarray, g_out: np.ndarray) -> np.ndarray:
    """Existing conv: per group ||g_out,grp(u)||² ||unfold(x_in,grp)(u)||², summed, rooted."""
    groups = int(node.attr("group", 1))
    weight = node.const(1)
    kernel = weight.shape[2:] if weight is not None else None
    win = window_of(node, x_in.shape[2:], kernel=kernel)
    b, m = x_in.shape[:2]
    out = g_out.shape[2:]
    squares = np.square(x_in.astype(np.float64)).reshape((b, groups, m // groups) + x_in.shape[2:])
    patch = NumpyOps().box_sum(squares.sum(axis=2), win, out)  # [B, groups, *out]
    n = g_out.shape[1]
    g2 = np.square(g_out.astype(np.float64)).reshape((b, groups, n // groups) + out).sum(axis=2)
    return np.sqrt((g2 * patch).sum(axis=1))


def normalise_minmax(maps: np.ndarray) -> np.ndarray:
    """Per-image min-max to [0, 1]; a constant map becomes 0."""
    flat = maps.reshape(maps.shape[0], -1)
    low = flat.min(axis=1).reshape((-1,) + (1,) * (maps.ndim - 1))
    span = (flat.max(axis=1) - flat.min(axis=1)).reshape(low.shape)
    return np.where(span > 0, (maps - low) / np.where(span > 0, span, 1.0), 0.0)


def combine_maps(maps: list[np.ndarray], weights, how: str) -> np.ndarray:
    """Weighted sum or weighted product of per-layer maps (already normalised, same size)."""
    gamma = np.ones(len(maps)) if weights is None else np.asarray(weights, dtype=np.float64)
    gamma = gamma / gamma.sum()
    if how == "sum":
        return sum(g * m for g, m in zip(gamma, maps))
    result = np.ones_like(maps[0])
    for g, m in zip(gamma, maps):
        result = result * np.power(m, g)
    return result


def _layer_maps(explainer, x, target, layers, variant, selective):
    """{layer: raw map [B, *spatial of layer]} from one backward pass, plus logits, targets."""
    graph = explainer.graph
    wanted = list(layers)
    conv_nodes = {}
    if variant == "conv":
        for layer in layers:
            node = graph.producer.get(layer)
            if node is None or node.op_type != "Conv":
                raise MethodError(
                    f"normgrad: variant='conv' needs each layer to be a Conv output; "
                    f"'{layer}' is produced by "
                    f"{node.op_type + ' ' + repr(node.name) if node else 'no node'}: "
                    "name Conv outputs or use variant='identity'"
                )
            conv_nodes[layer] = node
            wanted.append(node.inputs[0])
    logits, targets, taken = explainer.signals(x, target, list(dict.fromkeys(wanted)))
    maps = {}
    for layer in layers:
        act, sig = (channels_first(graph, layer, t) for t in taken[layer])
        check_feature_map(graph, "normgrad", layer, act)
        if variant == "conv":
            node = conv_nodes[layer]
            x_in = channels_first(graph, node.inputs[0], taken[node.inputs[0]][0])
            maps[layer] = conv_map(node, x_in, sig)
        elif selective:
            maps[layer] = selective_map(act, sig)
        else:
            maps[layer] = identity_map(act, sig)
    return logits, targets, maps, taken


def normgrad_maps(explainer, x, target, layer, options, selective: bool):
    """The combined NormGrad map at the input size (no meta step)."""
    graph = explainer.graph
    variant = "identity" if selective else options["variant"]
    layers = [layer] if layer else layer_list(options["layers"], graph, variant)
    weights = options["weights"]
    if weights is not None and len(weights) != len(layers):
        raise MethodError(
            f"normgrad: {len(weights)} weights for {len(layers)} layers: give one weight per layer"
        )
    logits, targets, maps, taken = _layer_maps(explainer, x, target, layers, variant, selective)
    size = input_spatial(graph, x)
    if len(layers) == 1:
        saliency = resize_linear(maps[layers[0]].astype(np.float32), size)
    else:
        parts = [resize_linear(normalise_minmax(maps[t]).astype(np.float32), size) for t in layers]
        saliency = combine_maps(parts, weights, options["combine"])
    name = "selective_normgrad" if selective else "normgrad"
    return Explanation(
        saliency=np.asarray(saliency, dtype=np.float32),
        signal=taken[layers[0]][1],
        logits=logits,
        target=targets,
        layer=",".join(layers),
        method=name,
    )


def _compute(selective: bool):
    def compute(explainer, x, target, layer, options):
        if options["meta_saliency"]:
            name = "selective_normgrad" if selective else "normgrad"
            inner = {k: v for k, v in options.items() if k not in ("meta_saliency", "meta_lr")}
            return meta_explain(explainer, x, target, layer, name, inner, float(options["meta_lr"]))
        return normgrad_maps(explainer, x, target, layer, options, selective)

    return compute


def check_options(options: dict) -> None:
    if options.get("variant", "identity") not in VARIANTS:
        raise MethodError(
            f"normgrad: variant must be one of {', '.join(VARIANTS)}, got {options['variant']!r}"
        )
    if options["combine"] not in COMBINE:
        raise MethodError(
            f"normgrad: combine must be one of {', '.join(COMBINE)}, got {options['combine']!r}"
        )
    weights = options["weights"]
    if weights is not None:
        if isinstance(weights, str):
            try:
                weights = [float(w) for w in weights.split(",")]
            except ValueError:
                raise MethodError(f"normgrad: weights must be numbers, got {weights!r}") from None
        elif isinstance(weights, (int, float)):
            weights = [float(weights)]
        weights = [float(w) for w in weights]
        if not weights or any(not np.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
            raise MethodError(
                f"normgrad: weights must be finite, >= 0 and not all 0, got {options['weights']!r}"
            )
        options["weights"] = weights
    lr = options["meta_lr"]
    if not isinstance(lr, (int, float)) or not np.isfinite(lr):
        raise MethodError(f"normgrad: meta_lr must be a finite number, got {lr!r}")


COMMON_DEFAULTS = {
    "layers": None,
    "combine": "sum",
    "weights": None,
    "meta_saliency": False,
    "meta_lr": 1e-3,
}
normgrad_map = _compute(False)
selective_normgrad_map = _compute(True)

"""Exact gradients of the target logits with respect to the weights (constant initializers)
of Conv, Gemm, MatMul and BatchNormalization, from one backward pass.

The backward taps the signal at each layer's output; the weight gradient then follows from
the recorded layer input (for a Conv: a correlation of the padded input with the output
signal, per kernel offset and group).
"""

from __future__ import annotations

import numpy as np

from tsgb_onnx.backends.numpy_ops import NumpyOps
from tsgb_onnx.engine.program import live_tensors
from tsgb_onnx.ir.geometry import window_of

LAYER_OPS = ("Conv", "Gemm", "MatMul", "BatchNormalization")


def weight_layers(graph) -> list:
    """Nodes on the path to the logits with a constant weight and a live data input."""
    live = live_tensors(graph)
    found = []
    for node in graph.nodes:
        if node.op_type not in LAYER_OPS or node.outputs[0] not in live:
            continue
        if node.is_const(0) or not node.is_const(1):
            continue
        found.append(node)
    return found


def _conv_weight_grad(node, x: np.ndarray, g: np.ndarray, w_shape) -> np.ndarray:
    groups = int(node.attr("group", 1))
    win = window_of(node, x.shape[2:], kernel=w_shape[2:])
    b, m = x.shape[:2]
    n, out = g.shape[1], g.shape[2:]
    padded = win.padded_size(x.shape[2:], out)
    xp = np.zeros((b, m) + padded, dtype=np.float64)
    xp[(slice(None), slice(None)) + win.crop(x.shape[2:])] = x
    xg = xp.reshape((b, groups, m // groups) + padded)
    gg = g.astype(np.float64).reshape((b, groups, n // groups, -1))
    grad = np.zeros((groups, n // groups, m // groups) + tuple(win.kernel))
    for offset in win.offsets():
        patch = xg[(slice(None),) * 3 + win.window_slices(offset, out)].reshape(
            (b, groups, m // groups, -1)
        )
        grad[(slice(None),) * 3 + tuple(offset)] = np.einsum("bgnp,bgmp->gnm", gg, patch)
    return grad.reshape(w_shape)


def layer_weight_grads(node, x: np.ndarray, g: np.ndarray) -> dict[str, np.ndarray]:
    """{initializer name: gradient} of one layer from its input `x` and output signal `g`."""
    x = np.asarray(x, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    grads: dict[str, np.ndarray] = {}
    w = node.const(1)
    if node.op_type == "Conv":
        grads[node.inputs[1]] = _conv_weight_grad(node, x, g, w.shape)
        if node.has_input(2) and node.is_const(2):
            grads[node.inputs[2]] = g.sum(axis=(0,) + tuple(range(2, g.ndim)))
    elif node.op_type == "Gemm":
        a = x.T if node.attr("transA", 0) else x
        alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
        dw = alpha * a.T @ g
        grads[node.inputs[1]] = dw.T if node.attr("transB", 0) else dw
        if node.has_input(2) and node.is_const(2):
            grads[node.inputs[2]] = NumpyOps().sum_to_shape(beta * g, node.const(2).shape)
    elif node.op_type == "MatMul":
        x2 = x.reshape(-1, x.shape[-1]) if x.ndim > 2 else x
        g2 = g.reshape(-1, g.shape[-1]) if g.ndim > 2 else g
        grads[node.inputs[1]] = (x2.T @ g2).reshape(w.shape)
    elif node.op_type == "BatchNormalization":
        mean, var = node.const(3), node.const(4)
        if mean is not None and var is not None:
            shape = (1, -1) + (1,) * (x.ndim - 2)
            eps = node.attr("epsilon", 1e-5)
            normed = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
            axes = (0,) + tuple(range(2, x.ndim))
            grads[node.inputs[1]] = (g * normed).sum(axis=axes)
            if node.is_const(2):
                grads[node.inputs[2]] = g.sum(axis=axes)
    return grads


def weight_gradients(explainer, x: np.ndarray, target=None) -> dict[str, np.ndarray]:
    """Exact gradients of the targets' logits (summed over the batch) with respect to the
    constant weights and biases of every Conv, Gemm, MatMul and BatchNormalization."""
    graph = explainer.graph
    gradient = explainer.sub_explainer("gradient")
    nodes = weight_layers(graph)
    layers = list(
        dict.fromkeys([graph.input_name] + [t for n in nodes for t in (n.inputs[0], n.outputs[0])])
    )
    _, _, taken = gradient.signals(x, target, layers)
    total: dict[str, np.ndarray] = {}
    for node in nodes:
        for name, grad in layer_weight_grads(
            node, taken[node.inputs[0]][0], taken[node.outputs[0]][1]
        ).items():
            total[name] = total[name] + grad if name in total else grad
    return total

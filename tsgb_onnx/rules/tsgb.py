"""The `tsgb` rule set: Target-Selective Gradient Backprop (TSGB paper eq. 1-6).

Overrides of the exact gradient:
* TSGB-FC (eq. 1-2) on the linear layer that produces the logits only;
* TSGB-Conv (eq. 3-5) on every Conv, groups kept (depthwise works per channel);
* eq. 6 on BatchNormalization, LRN and InstanceNormalization;
* the eq. 6 variant on AveragePool for batch rows whose input holds negatives.
Options: ``alpha`` (eq. 2 scale; default 0.8 in `methods.table`, 1.0 reproduces the reference
code), ``reference_compat`` (the reference code's variants: ``|sum_i x W-|`` in TSGB-FC and conv
groups ignored in TSGB-Conv).
"""

from __future__ import annotations

import warnings

import numpy as np

from tsgb_onnx.engine.ops import composite
from tsgb_onnx.errors import MethodError
from tsgb_onnx.ir.geometry import window_of
from tsgb_onnx.rules.gradient import GRADIENT, avgpool_adjoint, clip_bounds, pad_amounts
from tsgb_onnx.rules.gradient import clip as exact_clip
from tsgb_onnx.rules.gradient import max_pool as exact_max_pool
from tsgb_onnx.rules.registry import RuleSet, opt

TSGB = RuleSet("tsgb", parent=GRADIENT)
register = TSGB.register

# ops the logits may pass through after the final linear layer (and a bias Add)
_PASS_THROUGH = {"Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Dropout", "Cast"}


class TsgbWarning(UserWarning):
    """TSGB-specific notices (e.g. no linear layer to rectify)."""


def relu_after(node) -> str | None:
    """The output of a Relu or Clip that is the only consumer of `node`'s output, if any.

    Y * G[Y] equals A(Y) * G[Y] for A = Relu or Clip under their exact gradients: G[Y] is 0
    wherever A(Y) != Y. So TSGB-Conv may read the activation's output instead of Y: the
    forward pass then never has to keep Y, and runtimes keep their Conv+Relu / Conv+Clip
    fusions.
    """
    graph = node.graph
    out = node.outputs[0]
    consumers = graph.consumers.get(out, [])
    if (
        len(consumers) == 1
        and consumers[0].op_type in ("Relu", "Clip")
        and consumers[0].inputs[0] == out
        and out not in {o.name for o in graph.model.graph.output}
    ):
        return consumers[0].outputs[0]
    return None


# ops whose output is non-negative when their (data) inputs are
_KEEPS_SIGN = {
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Concat",
    "Identity",
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Transpose",
    "Slice",
    "Split",
    "Dropout",
}


def rectified_by(graph, tensor: str) -> bool:
    """Whether `tensor` is the output of a Relu, or of a Clip whose lower bound is >= 0.

    For such an X, sgn(X) equals the producer's own gradient mask wherever that mask is 1,
    and the mask zeroes every other position; so a signal sgn(X) * S and the signal S give
    the same signal at the producer's input."""
    node = graph.producer.get(tensor)
    if node is None or node.outputs[0] != tensor:
        return False
    if node.op_type == "Relu":
        return True
    if node.op_type == "Clip":
        lo, _ = clip_bounds(node)
        return lo is not None and float(lo) >= 0
    return False


def _pad_keeps_sign(node) -> bool:
    """A Pad that pads no batch or channel axis and fills with a value >= 0 (or copies
    values: edge, reflect, wrap)."""
    shape = node.input_shape(0)
    if shape is None or len(shape) < 2 or (node.opset >= 11 and not node.is_const(1)):
        return False
    rank = len(shape)
    pads = pad_amounts(node, rank)
    if any(pads[a] or pads[a + rank] for a in (0, 1)):
        return False
    if node.attr("mode", "constant") != "constant":
        return True
    value = node.const(2) if node.opset >= 11 else node.attr("value", 0.0)
    if value is None:
        return not node.has_input(2)
    return float(np.asarray(value).ravel()[0]) >= 0


def sign_redundant(graph, tensor: str, reads_signal) -> bool:
    """Whether sgn(tensor) may be left out of a signal S at `tensor`: tensor is rectified
    (`rectified_by`), or a spatial Pad or a MaxPool of a rectified tensor, and the caller
    reads none of the signals on the way (`reads_signal(name)`). Pad and MaxPool route each
    position's signal to a position of the same value, where the rectifier's own mask is 1
    only if that value is > 0, i.e. only where sgn = 1."""
    if reads_signal(tensor):
        return False
    node = graph.producer.get(tensor)
    if (
        node is not None
        and node.outputs[0] == tensor
        and (
            node.op_type == "MaxPool"
            and len(node.outputs) == 1
            or node.op_type == "Pad"
            and _pad_keeps_sign(node)
        )
    ):
        return sign_redundant(graph, node.inputs[0], reads_signal)
    return rectified_by(graph, tensor)


def nonnegative(graph, tensor: str, _depth: int = 0) -> bool:
    """Whether `tensor` is >= 0 for every input, from the ops that produce it (a Relu or
    non-negative Clip, seen through pools, concatenations and reshapes)."""
    if rectified_by(graph, tensor):
        return True
    node = graph.producer.get(tensor)
    if (
        node is None
        or _depth > 64
        or not (node.op_type in _KEEPS_SIGN or node.op_type == "Pad" and _pad_keeps_sign(node))
    ):
        return False
    data = [t for i, t in enumerate(node.inputs) if t and (node.op_type == "Concat" or i == 0)]
    return bool(data) and all(nonnegative(graph, t, _depth + 1) for t in data)


def _feeds_tsgb_conv_only(node) -> bool:
    """Whether this Relu's (or Clip's) input is the output of a Conv whose only consumer it
    is (so that Conv's TSGB rule reads this activation's output: `relu_after`)."""
    producer = node.graph.producer.get(node.inputs[0])
    return (
        producer is not None
        and producer.op_type == "Conv"
        and relu_after(producer) == node.outputs[0]
    )


@register("Relu", reads=("y0",))
def tsgb_relu(ops, node, fwd, grads, opts):
    """Exact gradient; but where the only reader of the signal is TSGB-Conv's Σ relu(Y)·G
    (and the caller does not read it), the mask is redundant: relu(Y) is 0 wherever the
    mask is, so the signal passes through unmasked (and may stay broadcast over channels)."""
    g = grads[0]
    if g is not None and _feeds_tsgb_conv_only(node) and not fwd.exposed(0):
        return [g]
    return [ops.mask(g, ops.greater(fwd.y(0), 0))]


@register("Clip", reads=("y0",))
def tsgb_clip(ops, node, fwd, grads, opts):
    """Exact gradient; but where the only reader of the signal is TSGB-Conv's Σ A·G with
    A this Clip's output and a lower bound of 0 (ReLU6), the lower mask is redundant: A is 0
    wherever it would zero G. Only the upper mask (A < max) is applied then."""
    g = grads[0]
    lo, hi = clip_bounds(node)
    if (
        g is not None
        and (lo is None or lo == 0.0)
        and _feeds_tsgb_conv_only(node)
        and not fwd.exposed(0)
    ):
        return [g if hi is None else ops.mask_below(g, fwd.y(0), hi)]
    return exact_clip(ops, node, fwd, grads, opts)


def _tsgb_conv_reads(node):
    # the weight's shape: recorded only when the weight is computed (e.g. dequantized)
    after = relu_after(node)
    return ("x0", "y0", "x1.shape") if after is None else ("x0", "@" + after, "x1.shape")


@register("Conv", reads=_tsgb_conv_reads)
def tsgb_conv(ops, node, fwd, grads, opts):
    """G[X] = sgn(X) * boxT( sum_n Y G[Y] ⊘ box(sum_m |X|) ), per conv group."""
    after = relu_after(node)
    x, g = fwd.x(0), grads[0]
    y = fwd.y(0) if after is None else fwd.tensor(after)
    w_shape = fwd.x_shape(1)
    groups = 1 if opt(opts, "reference_compat", False) else int(node.attr("group", 1))
    x_shape = ops.shape(x)
    win = window_of(node, x_shape[2:], kernel=w_shape[2:])
    graph, source = node.graph, node.inputs[0]
    return [
        tsgb_conv_step(
            ops,
            x,
            y,
            g,
            win,
            groups,
            nonnegative_x=nonnegative(graph, source),
            sign_from_producer=sign_redundant(graph, source, fwd.caller_reads),
        )
    ]


@composite("tsgb_conv")
def tsgb_conv_step(
    ops, x, y, g, win, groups: int, nonnegative_x: bool = False, sign_from_producer: bool = False
):
    """Eq. 5 per group from primitives (a backend may register a fused "tsgb_conv" kernel;
    it receives the same hints and may ignore them: the plain formula is always exact).

    Shortcuts that give the same map (tested against the plain formula):
    `nonnegative_x`: |X| = X (X comes from a Relu, a non-negative Clip, or pools of them);
    `sign_from_producer`: X is a Relu / non-negative Clip output (or a Pad or MaxPool of
    one) whose signal the caller does not read, so sgn(X) is left to that op's gradient mask
    (see `sign_redundant`); with groups = 1 the signal is then returned as one plane per row,
    [B, 1, *spatial], which the rules that receive it broadcast.
    """
    x_shape, y_shape = ops.shape(x), ops.shape(y)
    b, m, spatial = x_shape[0], x_shape[1], x_shape[2:]
    n, out = y_shape[1], y_shape[2:]
    if ops.shape(g)[1] == 1 and n > 1 and groups == 1:  # a signal that is one plane per row
        relevance = ops.mul(ops.sum(y, axis=1), ops.reshape(g, (b,) + tuple(out)))
        relevance = ops.reshape(relevance, (b, 1) + tuple(out))
    else:
        relevance = _group_sum(ops, ops.mul(y, g), b, groups, n // groups, out)
    mass = _group_sum(ops, x if nonnegative_x else ops.abs(x), b, groups, m // groups, spatial)
    ratio = ops.div_box_sum(relevance, mass, win, out)
    spread = ops.box_sum_transposed(ratio, win, spatial)  # (b, groups, *spatial)
    spread = ops.reshape(spread, (b, groups, 1) + spatial)
    if sign_from_producer:
        if m // groups == 1:  # depthwise: one input channel per group, a reshape
            return ops.reshape(spread, x_shape)
        if groups == 1:  # one plane per row, broadcast over the channels by whoever reads it
            return ops.reshape(spread, (b, 1) + tuple(spatial))
        return ops.reshape(ops.expand_to(spread, (b, groups, m // groups) + spatial), x_shape)
    signs = ops.reshape(ops.sign(x), (b, groups, m // groups) + spatial)
    return ops.reshape(ops.mul(signs, spread), x_shape)


def _group_sum(ops, a, batch: int, groups: int, per_group: int, spatial):
    """Sum channels within each group: [B, G*K, *S] → [B, G, *S] (depthwise: a reshape)."""
    if per_group == 1:
        return ops.reshape(a, (batch, groups) + tuple(spatial))
    return ops.sum(ops.reshape(a, (batch, groups, per_group) + tuple(spatial)), axis=2)


@register(["BatchNormalization", "LRN", "InstanceNormalization"], reads=("x0", "y0"))
def tsgb_normalization(ops, node, fwd, grads, opts):
    """Eq. 6: G[X] = G[Y] * (Y ⊘ X)."""
    return [tsgb_eq6_step(ops, grads[0], fwd.y(0), fwd.x(0))]


@composite("tsgb_eq6")
def tsgb_eq6_step(ops, g, y, x):
    """Eq. 6 from primitives (a backend may register a fused "tsgb_eq6" kernel)."""
    return ops.mul(g, ops.div_stab(y, x))


@register("MaxPool", reads=("x0",))
def tsgb_max_pool(ops, node, fwd, grads, opts):
    """The exact MaxPool rule; a signal that is one plane per row (TSGB-Conv's shortcut, see
    `tsgb_conv_step`) is first broadcast over the channels."""
    g, x_shape = grads[0], fwd.x_shape(0)
    if g is not None and ops.shape(g)[1] != x_shape[1]:
        g = ops.expand_to(g, tuple(x_shape[:2]) + tuple(ops.shape(g)[2:]))
    return exact_max_pool(ops, node, fwd, [g], opts)


@register("AveragePool", reads=("x0", "y0"))
def tsgb_average_pool(ops, node, fwd, grads, opts):
    """Eq. 6 variant for rows whose input holds negatives; exact gradient for the others."""
    x, y, g = fwd.x(0), fwd.y(0), grads[0]
    x_shape = ops.shape(x)
    exact = avgpool_adjoint(ops, node, g, x_shape)
    negative_rows = ops.any_negative(x, range(1, len(x_shape)))
    rescaled = ops.div_stab(avgpool_adjoint(ops, node, ops.mul(g, y), x_shape), x)
    return [ops.where(negative_rows, rescaled, exact)]


def _tsgb_fc(ops, node, fwd, grads, opts):
    """Eq. 1-2 on the final linear layer: W+ and E * W- with E = alpha * P ⊘ N."""
    g = grads[0]
    x = fwd.x(0)
    if node.op_type == "Gemm":
        if node.attr("transA", 0):
            x = ops.swap_last(x)
        gemm_alpha = node.attr("alpha", 1.0)
        if gemm_alpha != 1.0:
            g = ops.mul(g, gemm_alpha)
    w = fwd.x(1)
    if node.op_type == "Gemm" and node.attr("transB", 0):
        w = ops.swap_last(w)
    gx = tsgb_fc_step(
        ops, x, w, g, float(opt(opts, "alpha", 1.0)), bool(opt(opts, "reference_compat", False))
    )
    if node.op_type == "Gemm" and node.attr("transA", 0):
        gx = ops.swap_last(gx)
    return [gx]


@composite("tsgb_fc")
def tsgb_fc_step(ops, x, w, g, alpha: float = 1.0, reference_compat: bool = False):
    """Eq. 1-2 for x [.., K], w [K, N], g [.., N] (a backend may register a fused "tsgb_fc"
    kernel)."""
    w_pos, w_neg = ops.maximum(w, 0.0), ops.minimum(w, 0.0)
    positive = ops.matmul(x, w_pos)
    if reference_compat:
        negative = ops.abs(ops.matmul(x, w_neg))
    else:
        negative = ops.matmul(ops.abs(x), ops.abs(w_neg))
    scale = ops.mul(ops.div_stab(positive, negative, nonnegative=True), alpha)
    return ops.add(
        ops.matmul(g, ops.swap_last(w_pos)), ops.matmul(ops.mul(scale, g), ops.swap_last(w_neg))
    )


_FC_RULES = RuleSet("tsgb")
# the weight is recorded only when it is computed (a dequantized constant of a QDQ model)
_FC_RULES.register(["Gemm", "MatMul"], reads=("x0", "x1"))(_tsgb_fc)


def _constant_weight(node) -> bool:
    """Input 1 is a constant, or the dequantization of one (a QDQ model's weight)."""
    if node.is_const(1):
        return True
    producer = node.graph.producer.get(node.inputs[1])
    return (
        producer is not None
        and producer.op_type == "DequantizeLinear"
        and all(producer.is_const(i) for i in range(len(producer.inputs)) if producer.inputs[i])
    )


def final_linear_node(graph):
    """The Gemm/MatMul with a constant (or dequantized constant) weight that produces the
    logits, or None."""
    tensor = graph.logits_name
    while tensor in graph.producer:
        node = graph.producer[tensor]
        if node.op_type in ("Gemm", "MatMul"):
            return node if _constant_weight(node) and not node.is_const(0) else None
        if node.op_type in _PASS_THROUGH:
            tensor = node.inputs[0]
        elif node.op_type == "Add" and (node.is_const(0) or node.is_const(1)):
            tensor = node.inputs[1] if node.is_const(0) else node.inputs[0]
        else:
            return None
    return None


def choose_final_fc(method, node, graph, options):
    if node.op_type in ("Gemm", "MatMul"):
        final = final_linear_node(graph)
        if final is not None and final.name == node.name:
            return _FC_RULES.lookup(node.op_type)
    return None


def warn_without_final_linear(graph, options) -> None:
    if final_linear_node(graph) is None:
        warnings.warn(
            "tsgb: no linear layer (Gemm/MatMul with constant weights) produces the logits, "
            "so TSGB-FC is not applied; the map uses TSGB-Conv and exact gradients only",
            TsgbWarning,
            stacklevel=4,
        )


def check_options(options: dict) -> None:
    alpha = options["alpha"]
    if not isinstance(alpha, (int, float, np.floating)) or not np.isfinite(alpha) or alpha < 0:
        raise MethodError(f"tsgb: alpha must be a finite number >= 0, got {alpha!r}")

"""The `ebp` and `contrastive_ebp` rule sets: Excitation Backprop (marginal winning
probability), with the contrastive top layer; see docs/methods_baselines.md."""

from __future__ import annotations

import warnings

from tsgb_onnx.errors import MethodError
from tsgb_onnx.ir.geometry import window_of
from tsgb_onnx.rules.gradient import GRADIENT, avgpool_adjoint
from tsgb_onnx.rules.registry import Rule, RuleSet
from tsgb_onnx.rules.relevance import BaselineWarning, exact_reads, rest, unit_rule

_PASS_THROUGH = {"Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Dropout"}


# Marginal winning probability (Zhang et al., "Top-down neural attention by excitation
# backprop"): a layer y = W x passes P[y] to its inputs as P[x_i] = x_i sum_j W+_ij P[y_j] / z_j,
# z = W+ x (bias ignored). Signed inputs (the image, BN outputs) take part by magnitude:
# z = W+ |x| and G[x] = sgn(x) * W+^T (P[y] ⊘ z), so P[x] = |x| * W+^T(...) >= 0 and the mass
# is conserved for any input; on nonnegative inputs this is EBP exactly. Below the top layer
# P[y] = Y * G[y]; at the top layer (the one producing the logits) P[y] = G[y], the seed.
EBP = RuleSet("ebp", parent=GRADIENT)
EBP_TOP = RuleSet("ebp")
CEBP_TOP = RuleSet("contrastive_ebp")


def _probability(ops, fwd, g, top: bool):
    return g if top else ops.mul(fwd.y(0), g)


def _positive_part(ops, w, negate: bool):
    return ops.maximum(ops.neg(w) if negate else w, 0.0)


def _ebp_conv(ops, node, fwd, grads, top: bool, contrast: bool):
    x, w, g = fwd.x(0), fwd.x(1), grads[0]
    x_shape, w_shape = ops.shape(x), ops.shape(w)
    group = int(node.attr("group", 1))
    win = window_of(node, x_shape[2:], kernel=w_shape[2:])
    out = ops.shape(g)[2:]
    p = _probability(ops, fwd, g, top)
    magnitude = ops.abs(x)

    def spread(negate: bool):
        w_pos = _positive_part(ops, w, negate)
        z = ops.conv(magnitude, w_pos, win, group, out)
        return ops.conv_input_grad(ops.div_stab(p, z, nonnegative=True), w_pos, x_shape, win, group)

    gx = spread(False)
    if contrast:
        gx = ops.sub(gx, spread(True))
    return rest(node, ops.mul(ops.sign(x), gx))


def _linear_operands(ops, node, fwd):
    """(x, W) of a Gemm / MatMul as x @ W, and whether x was transposed (Gemm transA)."""
    x, w = fwd.x(0), fwd.x(1)
    trans_a = node.op_type == "Gemm" and bool(node.attr("transA", 0))
    if trans_a:
        x = ops.swap_last(x)
    if node.op_type == "Gemm":
        if node.attr("transB", 0):
            w = ops.swap_last(w)
        if node.attr("alpha", 1.0) != 1.0:
            w = ops.mul(w, float(node.attr("alpha", 1.0)))
    return x, w, trans_a


def _ebp_linear(ops, node, fwd, grads, top: bool, contrast: bool):
    x, w, trans_a = _linear_operands(ops, node, fwd)
    p = _probability(ops, fwd, grads[0], top)
    magnitude = ops.abs(x)

    def spread(negate: bool):
        w_pos = _positive_part(ops, w, negate)
        z = ops.matmul(magnitude, w_pos)
        return ops.matmul(ops.div_stab(p, z, nonnegative=True), ops.swap_last(w_pos))

    gx = spread(False)
    if contrast:
        gx = ops.sub(gx, spread(True))
    gx = ops.mul(ops.sign(x), gx)
    return rest(node, ops.swap_last(gx) if trans_a else gx)


def _ebp_average_pool(ops, node, fwd, grads, top: bool, contrast: bool = False):
    x, g = fwd.x(0), grads[0]
    x_shape = ops.shape(x)
    spatial, out = tuple(x_shape[2:]), ops.shape(g)[2:]
    win = window_of(node, spatial)
    divisor = ops.avgpool_divisor(spatial, out, win, bool(node.attr("count_include_pad", 0)))
    z = ops.div(ops.box_sum(ops.abs(x), win, out), divisor)
    q = ops.div_stab(_probability(ops, fwd, g, top), z, nonnegative=True)
    return [ops.mul(ops.sign(x), avgpool_adjoint(ops, node, q, x_shape))]


def _ebp_global_pool(ops, node, fwd, grads, top: bool, contrast: bool = False):
    """P[x] = |x| / sum|x| * P[y] per channel (the 1/count weights cancel)."""
    x, g = fwd.x(0), grads[0]
    x_shape = ops.shape(x)
    axes = tuple(range(2, len(x_shape)))
    z = ops.sum(ops.abs(x), axis=axes, keepdims=True)
    q = ops.div_stab(_probability(ops, fwd, g, top), z, nonnegative=True)
    return [ops.mul(ops.sign(x), ops.expand_to(q, x_shape))]


def _named(fn, name: str, top: bool, contrast: bool = False):
    def rule(ops, node, fwd, grads, opts):
        return fn(ops, node, fwd, grads, top, contrast)

    rule.__name__ = name
    rule.__doc__ = fn.__doc__
    return rule


def _weights_read(node):
    return () if node.is_const(1) else ("x1",)


def _ebp_reads(node, top: bool):
    own = () if top else ("y0",)
    if node.op_type in ("Conv", "Gemm", "MatMul"):
        return ("x0",) + _weights_read(node) + own
    return ("x0",) + own


def _register_ebp(rule_set: RuleSet, prefix: str, top: bool, contrast: bool) -> None:
    def reads(node):
        return _ebp_reads(node, top)

    rule_set.register("Conv", reads=reads)(_named(_ebp_conv, f"{prefix}_conv", top, contrast))
    rule_set.register(["Gemm", "MatMul"], reads=reads)(
        _named(_ebp_linear, f"{prefix}_linear", top, contrast)
    )
    if not contrast:  # a pooling layer has no weights to negate
        rule_set.register("AveragePool", reads=reads)(
            _named(_ebp_average_pool, f"{prefix}_average_pool", top)
        )
        rule_set.register("GlobalAveragePool", reads=reads)(
            _named(_ebp_global_pool, f"{prefix}_global_average_pool", top)
        )


_register_ebp(EBP, "ebp", top=False, contrast=False)
_register_ebp(EBP_TOP, "ebp_top", top=True, contrast=False)
_register_ebp(CEBP_TOP, "contrastive_ebp_top", top=True, contrast=True)


@EBP.register(["Add", "Sum"], reads=("x*", "x*.shape", "y0"))
def ebp_add(ops, node, fwd, grads, opts):
    """y = sum_k a_k as a layer of unit weights: P[a_k] = |a_k| / sum_k |a_k| * P[y]
    (constant operands, i.e. biases, take no share)."""
    p = ops.mul(fwd.y(0), grads[0])
    live = [i for i in range(len(node.inputs)) if not node.is_const(i)]
    z = None
    for i in live:
        z = ops.abs(fwd.x(i)) if z is None else ops.add(z, ops.abs(fwd.x(i)))
    q = ops.div_stab(p, z, nonnegative=True)
    out = [None] * len(node.inputs)
    for i in live:
        if fwd.wants(i):
            out[i] = ops.mul(ops.sign(fwd.x(i)), ops.sum_to_shape(q, fwd.x_shape(i)))
    return out


EBP.register(
    ["BatchNormalization", "InstanceNormalization", "LRN", "Clip", "LeakyRelu", "PRelu"],
    reads=("x0", "y0"),
)(unit_rule)


def _one_live_operand(node) -> int | None:
    live = [i for i in range(2) if node.has_input(i) and not node.is_const(i)]
    return live[0] if len(live) == 1 else None


def _scaling_reads(node):
    i = _one_live_operand(node)
    if i is None:  # two activations: the exact gradient's reads
        reads = exact_reads(node.op_type)
        return reads(node) if callable(reads) else reads
    return (f"x{i}", f"x{i}.shape", "y0")


@EBP.register(["Sub", "Mul", "Div"], reads=_scaling_reads)
def ebp_scaling(ops, node, fwd, grads, opts):
    """With one constant operand (input scaling, mean subtraction) the op maps each unit to
    itself: P[x] = P[y] (summed over broadcast copies). With two activations: exact."""
    i = _one_live_operand(node)
    if i is None:
        return GRADIENT.lookup(node.op_type).fn(ops, node, fwd, grads, opts)
    x = fwd.x(i)
    p = ops.sum_to_shape(ops.mul(grads[0], fwd.y(0)), fwd.x_shape(i))
    out = [None, None]
    out[i] = ops.div_stab(p, x)
    return out


def has_const_weights(node) -> bool:
    w = node.const(1)
    return w is not None and w.ndim == 2 and not node.is_const(0)


def top_layer(graph):
    """(node, path): the layer that produces the logits, behind pass-through ops and bias
    Adds, and the names of the nodes between it and the logits (node None if not a layer)."""
    path: set[str] = set()
    tensor = graph.logits_name
    while tensor in graph.producer:
        node = graph.producer[tensor]
        if node.op_type in _PASS_THROUGH:
            path.add(node.name)
            tensor = node.inputs[0]
        elif node.op_type == "Add" and (node.is_const(0) or node.is_const(1)):
            path.add(node.name)
            tensor = node.inputs[1] if node.is_const(0) else node.inputs[0]
        elif node.op_type in ("Gemm", "MatMul"):
            return (node if has_const_weights(node) else None), path
        elif node.op_type in ("Conv", "AveragePool", "GlobalAveragePool"):
            return node, path
        else:
            return None, path
    return None, path


def top_layer_chooser(top_rules: RuleSet):
    def choose(method, node, graph, options) -> Rule | None:
        top, path = top_layer(graph)
        if node.name in path:
            return GRADIENT.lookup(node.op_type)
        if top is not None and node.name == top.name:
            return top_rules.lookup(node.op_type)
        if node.op_type in ("Gemm", "MatMul") and not has_const_weights(node):
            return GRADIENT.lookup(node.op_type)  # not a layer (e.g. two activations)
        return None

    return choose


def prepare_ebp(graph, options) -> None:
    if top_layer(graph)[0] is None:
        warnings.warn(
            "ebp: the logits are not produced by a Gemm/MatMul/Conv/pooling layer, so the top "
            "probability is taken as logit x seed instead of the seed itself",
            BaselineWarning,
            stacklevel=4,
        )


def prepare_contrastive_ebp(graph, options) -> None:
    top = top_layer(graph)[0]
    if top is None or top.op_type not in ("Gemm", "MatMul", "Conv"):
        raise MethodError(
            "contrastive_ebp needs the logits to come from a linear layer (Gemm, MatMul or Conv "
            "with constant weights) to build the dual unit; use method 'ebp' for this model"
        )

"""The `gradient` rule set: the exact derivative (vector-Jacobian product) of every op.

Each rule is written against the array namespace `ops` only, so it runs on any backend.
"""

from __future__ import annotations

import math

import numpy as np

from tsgb_onnx.errors import ModelError
from tsgb_onnx.ir.geometry import window_of
from tsgb_onnx.rules.registry import RuleSet

GRADIENT = RuleSet("gradient")
register = GRADIENT.register


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _const_input(node, i: int, what: str):
    value = node.const(i)
    if value is None and node.has_input(i):
        raise ModelError(
            f"node '{node.name}' ({node.op_type}): {what} must be a constant to be "
            "differentiated; fold the graph's constants before explaining"
        )
    return value


def _first(grads):
    return grads[0]


# -- pass-through --------------------------------------------------------------------------
@register(["Identity", "Dropout"])
def identity(ops, node, fwd, grads, opts):
    return [_first(grads)]


@register("Cast")
def cast(ops, node, fwd, grads, opts):
    return [ops.asarray(_first(grads))]  # back to the engine's float32


@register(["Flatten", "Reshape", "Squeeze", "Unsqueeze"], reads=("x0.shape",))
def reshape(ops, node, fwd, grads, opts):
    return [ops.reshape(_first(grads), fwd.x_shape(0))]


@register("Transpose")
def transpose(ops, node, fwd, grads, opts):
    g = _first(grads)
    perm = node.attr("perm") or list(reversed(range(ops.ndim(g))))
    inverse = [0] * len(perm)
    for i, p in enumerate(perm):
        inverse[p] = i
    return [ops.transpose(g, inverse)]


# -- activations -----------------------------------------------------------------------------
@register("Relu", reads=("y0",))
def relu(ops, node, fwd, grads, opts):
    return [ops.mask(_first(grads), ops.greater(fwd.y(0), 0))]


def clip_bounds(node):
    if node.opset < 11:
        return node.attr("min"), node.attr("max")
    lo, hi = node.const(1), node.const(2)
    if (lo is None and node.has_input(1)) or (hi is None and node.has_input(2)):
        raise ModelError(f"node '{node.name}' (Clip): min/max must be constants")
    return (None if lo is None else float(lo)), (None if hi is None else float(hi))


@register("Clip", reads=("y0",))
def clip(ops, node, fwd, grads, opts):
    lo, hi = clip_bounds(node)
    y = fwd.y(0)
    cond = None
    if lo is not None:
        cond = ops.greater(y, lo)
    if hi is not None:
        upper = ops.less(y, hi)
        cond = upper if cond is None else ops.logical_and(cond, upper)
    g = _first(grads)
    return [g if cond is None else ops.mask(g, cond)]


@register("LeakyRelu", reads=("x0",))
def leaky_relu(ops, node, fwd, grads, opts):
    alpha = node.attr("alpha", 0.01)
    g = _first(grads)
    return [ops.where(ops.greater(fwd.x(0), 0), g, ops.mul(g, alpha))]


@register("PRelu", reads=("x0", "x1"))
def prelu(ops, node, fwd, grads, opts):
    g, x, slope = _first(grads), fwd.x(0), fwd.x(1)
    positive = ops.greater(x, 0)
    gx = ops.where(positive, g, ops.mul(g, slope))
    gslope = None
    if fwd.wants(1):
        gslope = ops.sum_to_shape(ops.where(positive, 0, ops.mul(g, x)), fwd.x_shape(1))
    return [gx, gslope]


@register("Sigmoid", reads=("y0",))
def sigmoid(ops, node, fwd, grads, opts):
    y = fwd.y(0)
    return [ops.mul(_first(grads), ops.mul(y, ops.sub(1.0, y)))]


@register("Tanh", reads=("y0",))
def tanh(ops, node, fwd, grads, opts):
    y = fwd.y(0)
    return [ops.mul(_first(grads), ops.sub(1.0, ops.square(y)))]


@register("HardSigmoid", reads=("x0",))
def hard_sigmoid(ops, node, fwd, grads, opts):
    alpha, beta = node.attr("alpha", 0.2), node.attr("beta", 0.5)
    z = ops.add(ops.mul(fwd.x(0), alpha), beta)
    inside = ops.logical_and(ops.greater(z, 0), ops.less(z, 1))
    return [ops.mask(ops.mul(_first(grads), alpha), inside)]


@register("HardSwish", reads=("x0",))
def hard_swish(ops, node, fwd, grads, opts):
    x = fwd.x(0)
    # d/dx [x * clip(x/6 + 1/2, 0, 1)] = 0 (x < -3), x/3 + 1/2 (-3 <= x <= 3), 1 (x > 3)
    slope = ops.where(ops.greater(x, 3.0), 1.0, ops.add(ops.div(x, 3.0), 0.5))
    slope = ops.where(ops.less(x, -3.0), 0.0, slope)
    return [ops.mul(_first(grads), slope)]


@register("Softmax", reads=("y0",))
def softmax(ops, node, fwd, grads, opts):
    g, y = _first(grads), fwd.y(0)
    shape = ops.shape(y)
    if node.opset < 13:  # coerced to 2-D at `axis`
        axis = _axis(node.attr("axis", 1), len(shape))
        flat = (math.prod(shape[:axis]), math.prod(shape[axis:]))
        g2, y2 = ops.reshape(g, flat), ops.reshape(y, flat)
        inner = ops.sum(ops.mul(g2, y2), axis=1, keepdims=True)
        return [ops.reshape(ops.mul(y2, ops.sub(g2, inner)), shape)]
    axis = _axis(node.attr("axis", -1), len(shape))
    inner = ops.sum(ops.mul(g, y), axis=axis, keepdims=True)
    return [ops.mul(y, ops.sub(g, inner))]


@register("LogSoftmax", reads=("y0",))
def log_softmax(ops, node, fwd, grads, opts):
    g, y = _first(grads), fwd.y(0)
    shape = ops.shape(y)
    if node.opset < 13:
        axis = _axis(node.attr("axis", 1), len(shape))
        flat = (math.prod(shape[:axis]), math.prod(shape[axis:]))
        g2, y2 = ops.reshape(g, flat), ops.reshape(y, flat)
        total = ops.sum(g2, axis=1, keepdims=True)
        return [ops.reshape(ops.sub(g2, ops.mul(ops.exp(y2), total)), shape)]
    axis = _axis(node.attr("axis", -1), len(shape))
    total = ops.sum(g, axis=axis, keepdims=True)
    return [ops.sub(g, ops.mul(ops.exp(y), total))]


# -- arithmetic with broadcasting ------------------------------------------------------------
@register(["Add", "Sum"], reads=("x*.shape",))
def add(ops, node, fwd, grads, opts):
    g = _first(grads)
    return [
        ops.sum_to_shape(g, fwd.x_shape(i)) if fwd.wants(i) else None
        for i in range(len(node.inputs))
    ]


@register("Sub", reads=("x*.shape",))
def sub(ops, node, fwd, grads, opts):
    g = _first(grads)
    ga = ops.sum_to_shape(g, fwd.x_shape(0)) if fwd.wants(0) else None
    gb = ops.neg(ops.sum_to_shape(g, fwd.x_shape(1))) if fwd.wants(1) else None
    return [ga, gb]


@register("Neg")
def neg(ops, node, fwd, grads, opts):
    return [ops.neg(_first(grads))]


def _two_operand_reads(node):
    """Mul / MatMul: each operand's signal needs the other operand's value."""
    reads = ["x0.shape", "x1.shape"]
    if not node.is_const(0):
        reads.append("x1")
    if not node.is_const(1):
        reads.append("x0")
    return tuple(reads)


@register("Mul", reads=_two_operand_reads)
def mul(ops, node, fwd, grads, opts):
    g = _first(grads)
    ga = ops.sum_to_shape(ops.mul(g, fwd.x(1)), fwd.x_shape(0)) if fwd.wants(0) else None
    gb = ops.sum_to_shape(ops.mul(g, fwd.x(0)), fwd.x_shape(1)) if fwd.wants(1) else None
    return [ga, gb]


def _div_reads(node):
    reads = ["x0.shape", "x1", "x1.shape"]
    if not node.is_const(1):
        reads.append("y0")
    return tuple(reads)


@register("Div", reads=_div_reads)
def div(ops, node, fwd, grads, opts):
    g, b = _first(grads), fwd.x(1)
    ga = ops.sum_to_shape(ops.div(g, b), fwd.x_shape(0)) if fwd.wants(0) else None
    gb = None
    if fwd.wants(1):  # d(a/b)/db = -y/b
        gb = ops.sum_to_shape(ops.neg(ops.div(ops.mul(g, fwd.y(0)), b)), fwd.x_shape(1))
    return [ga, gb]


# -- linear layers ------------------------------------------------------------------------------
def _gemm_reads(node):
    reads = []
    if not node.is_const(1):
        reads += ["x0", "x1"]
    if node.has_input(2) and not node.is_const(2):
        reads.append("x2.shape")
    return tuple(reads)


@register("Gemm", reads=_gemm_reads)
def gemm(ops, node, fwd, grads, opts):
    g = _first(grads)
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    trans_a, trans_b = node.attr("transA", 0), node.attr("transB", 0)
    g_alpha = g if alpha == 1.0 else ops.mul(g, alpha)
    out = [None] * len(node.inputs)
    if fwd.wants(0):
        b = fwd.x(1)
        if trans_a:  # A = A'^T, dA = (g B'^T)^T = B' g^T
            out[0] = ops.matmul(b if not trans_b else ops.swap_last(b), ops.swap_last(g_alpha))
        else:  # dA' = g B'^T
            out[0] = ops.matmul(g_alpha, b if trans_b else ops.swap_last(b))
    if fwd.wants(1):
        a = fwd.x(0)
        a_t = a if not trans_a else ops.swap_last(a)  # A'
        gb = ops.matmul(ops.swap_last(a_t), g_alpha)  # dB' = A'^T g
        out[1] = ops.swap_last(gb) if trans_b else gb
    if len(node.inputs) > 2 and fwd.wants(2):
        out[2] = ops.sum_to_shape(g if beta == 1.0 else ops.mul(g, beta), fwd.x_shape(2))
    return out


@register("MatMul", reads=_two_operand_reads)
def matmul(ops, node, fwd, grads, opts):
    g = _first(grads)
    a_shape, b_shape = fwd.x_shape(0), fwd.x_shape(1)
    g_shape = ops.shape(g)
    # promote 1-D operands as numpy.matmul does
    if len(b_shape) == 1:
        g_shape = g_shape + (1,)
    if len(a_shape) == 1:
        g_shape = g_shape[:-1] + (1, g_shape[-1])
    g2 = ops.reshape(g, g_shape)
    out = [None, None]
    if fwd.wants(0):
        b = fwd.x(1)
        b2 = ops.reshape(b, (b_shape[0], 1)) if len(b_shape) == 1 else b
        out[0] = ops.sum_to_shape(
            ops.reshape(
                ops.matmul(g2, ops.swap_last(b2)), _mm_shape(g_shape, b_shape, a_shape, "a")
            ),
            a_shape,
        )
    if fwd.wants(1):
        a = fwd.x(0)
        a2 = ops.reshape(a, (1, a_shape[0])) if len(a_shape) == 1 else a
        out[1] = ops.sum_to_shape(
            ops.reshape(
                ops.matmul(ops.swap_last(a2), g2), _mm_shape(g_shape, a_shape, b_shape, "b")
            ),
            b_shape,
        )
    return out


def _mm_shape(g_shape, other_shape, own_shape, which):
    """Shape of a MatMul operand's raw gradient before broadcast reduction."""
    batch = tuple(g_shape[:-2])
    if len(own_shape) == 1:
        return batch + (own_shape[0],) if batch else (own_shape[0],)
    if which == "a":
        return batch + (g_shape[-2], own_shape[-1])
    return batch + (own_shape[-2], g_shape[-1])


def _conv_reads(node):
    return ("x0.shape",) if node.is_const(1) else ("x0.shape", "x1")


@register("Conv", reads=_conv_reads)
def conv(ops, node, fwd, grads, opts):
    x_shape = fwd.x_shape(0)
    w = fwd.x(1)
    win = window_of(node, x_shape[2:], kernel=ops.shape(w)[2:])
    gx = ops.conv_input_grad(_first(grads), w, x_shape, win, node.attr("group", 1))
    return [gx]


# -- normalisation ---------------------------------------------------------------------------------
def _channel_shape(rank: int, channels: int) -> tuple[int, ...]:
    return (1, channels) + (1,) * (rank - 2)


@register("BatchNormalization")
def batch_norm(ops, node, fwd, grads, opts):
    g = _first(grads)
    scale, var = _const_input(node, 1, "scale"), _const_input(node, 4, "var")
    eps = node.attr("epsilon", 1e-5)
    factor = (scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)).astype(np.float32)
    factor = ops.asarray(factor.reshape(_channel_shape(ops.ndim(g), factor.size)))
    return [ops.mul(g, factor)]


@register("InstanceNormalization", reads=("x0",))
def instance_norm(ops, node, fwd, grads, opts):
    g, x = _first(grads), fwd.x(0)
    rank = ops.ndim(x)
    axes = tuple(range(2, rank))
    scale = ops.asarray(_const_input(node, 1, "scale").reshape(_channel_shape(rank, -1)))
    eps = node.attr("epsilon", 1e-5)
    n = _count(ops.shape(x), axes)
    centred = ops.sub(x, ops.div(ops.sum(x, axis=axes, keepdims=True), n))
    var = ops.div(ops.sum(ops.square(centred), axis=axes, keepdims=True), n)
    inv_std = ops.power(ops.add(var, eps), -0.5)
    xhat = ops.mul(centred, inv_std)
    mean_g = ops.div(ops.sum(g, axis=axes, keepdims=True), n)
    mean_gx = ops.div(ops.sum(ops.mul(g, xhat), axis=axes, keepdims=True), n)
    gx = ops.mul(ops.mul(scale, inv_std), ops.sub(ops.sub(g, mean_g), ops.mul(xhat, mean_gx)))
    return [gx]


def _count(shape, axes) -> float:
    return float(math.prod(shape[a] for a in axes))


@register("LRN", reads=("x0",))
def lrn(ops, node, fwd, grads, opts):
    g, x = _first(grads), fwd.x(0)
    size = int(node.attr("size"))
    alpha, beta, bias = node.attr("alpha", 1e-4), node.attr("beta", 0.75), node.attr("bias", 1.0)
    s = ops.add(ops.mul(ops.channel_window_sum(ops.square(x), size), alpha / size), bias)
    direct = ops.mul(g, ops.power(s, -beta))
    inner = ops.channel_window_sum_transposed(ops.mul(ops.mul(g, x), ops.power(s, -beta - 1)), size)
    return [ops.sub(direct, ops.mul(ops.mul(x, inner), 2.0 * alpha * beta / size))]


# -- pooling ---------------------------------------------------------------------------------
@register("MaxPool", reads=("x0",))
def max_pool(ops, node, fwd, grads, opts):
    x, g = fwd.x(0), _first(grads)
    x_shape = ops.shape(x)
    win = window_of(node, x_shape[2:])
    return [ops.maxpool_input_grad(x, g, win)]


@register("AveragePool", reads=("x0.shape",))
def average_pool(ops, node, fwd, grads, opts):
    g, x_shape = _first(grads), fwd.x_shape(0)
    return [avgpool_adjoint(ops, node, g, x_shape)]


def avgpool_adjoint(ops, node, g, x_shape):
    """Exact AveragePool input gradient (shared with methods that rescale `g`)."""
    spatial = tuple(x_shape[2:])
    win = window_of(node, spatial)
    out = ops.shape(g)[2:]
    divisor = ops.avgpool_divisor(spatial, out, win, bool(node.attr("count_include_pad", 0)))
    return ops.box_sum_transposed(ops.div(g, divisor), win, spatial)


@register("GlobalAveragePool", reads=("x0.shape",))
def global_average_pool(ops, node, fwd, grads, opts):
    x_shape = fwd.x_shape(0)
    count = float(math.prod(x_shape[2:]))
    return [ops.expand_to(ops.div(_first(grads), count), x_shape)]


def _reduce_axes(node, rank: int):
    if node.opset >= 18 or (node.op_type == "ReduceSum" and node.opset >= 13):
        axes = node.const(1)
        if axes is None and node.has_input(1):
            raise ModelError(f"node '{node.name}' ({node.op_type}): axes must be constant")
        axes = None if axes is None else [int(a) for a in axes.reshape(-1)]
    else:
        axes = node.attr("axes")
    if not axes:
        if node.attr("noop_with_empty_axes", 0):
            return []
        return list(range(rank))
    return sorted(_axis(int(a), rank) for a in axes)


@register(["ReduceMean", "ReduceSum"], reads=("x0.shape",))
def reduce_mean(ops, node, fwd, grads, opts):
    g, x_shape = _first(grads), fwd.x_shape(0)
    axes = _reduce_axes(node, len(x_shape))
    kept = tuple(1 if i in axes else s for i, s in enumerate(x_shape))
    g = ops.reshape(g, kept)
    if node.op_type == "ReduceMean":
        g = ops.div(g, float(math.prod(x_shape[a] for a in axes)) if axes else 1.0)
    return [ops.expand_to(g, x_shape)]


# -- tensor plumbing -------------------------------------------------------------------------------
@register("Concat", reads=("x*.shape",))
def concat(ops, node, fwd, grads, opts):
    g = _first(grads)
    axis = _axis(node.attr("axis"), ops.ndim(g))
    sizes = [fwd.x_shape(i)[axis] for i in range(len(node.inputs))]
    return ops.split(g, sizes, axis)


def split_sizes(node, dim: int) -> list[int]:
    given = node.const(1) if node.opset >= 13 else None
    if given is None:
        given = node.attr("split")
    if given is not None and len(given) > 0:
        return [int(s) for s in np.asarray(given).reshape(-1)]
    n = len(node.outputs)
    chunk = math.ceil(dim / n)
    return [chunk] * (n - 1) + [dim - chunk * (n - 1)]


@register("Split", reads=("x0.shape",))
def split(ops, node, fwd, grads, opts):
    x_shape = fwd.x_shape(0)
    axis = _axis(node.attr("axis", 0), len(x_shape))
    sizes = split_sizes(node, x_shape[axis])
    parts = []
    for g, size in zip(grads, sizes):
        if g is None:
            shape = list(x_shape)
            shape[axis] = size
            g = ops.zeros(shape)
        parts.append(g)
    return [ops.concat(parts, axis)]


def slice_index(node, x_shape) -> tuple:
    """Python slices equal to an ONNX Slice on a tensor of shape `x_shape`."""
    rank = len(x_shape)
    if node.opset < 10:
        starts, ends = node.attr("starts"), node.attr("ends")
        axes, steps = node.attr("axes"), None
    else:
        starts, ends = _const_input(node, 1, "starts"), _const_input(node, 2, "ends")
        axes, steps = node.const(3), node.const(4)
    starts = [int(s) for s in np.asarray(starts).reshape(-1)]
    ends = [int(e) for e in np.asarray(ends).reshape(-1)]
    axes = (
        list(range(len(starts)))
        if axes is None
        else [_axis(int(a), rank) for a in np.asarray(axes).reshape(-1)]
    )
    steps = [1] * len(starts) if steps is None else [int(s) for s in np.asarray(steps).reshape(-1)]
    index = [slice(None)] * rank
    for start, end, axis, step in zip(starts, ends, axes, steps):
        dim = x_shape[axis]
        start = start + dim if start < 0 else start
        end = end + dim if end < 0 else end
        if step > 0:
            start, end = min(max(start, 0), dim), min(max(end, 0), dim)
            index[axis] = slice(start, end, step)
        else:
            start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
            index[axis] = slice(start, None if end < 0 else end, step)
    return tuple(index)


@register("Slice", reads=("x0.shape",))
def slice_(ops, node, fwd, grads, opts):
    x_shape = fwd.x_shape(0)
    gx = ops.scatter_slices(_first(grads), x_shape, slice_index(node, x_shape))
    return [gx]


def pad_amounts(node, rank: int) -> list[int]:
    if node.opset < 11:
        pads = node.attr("pads")
    else:
        pads = _const_input(node, 1, "pads")
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    axes = node.const(3) if node.opset >= 18 else None
    if axes is None:
        return pads
    axes = [_axis(int(a), rank) for a in axes.reshape(-1)]
    full = [0] * (2 * rank)
    for i, a in enumerate(axes):
        full[a], full[a + rank] = pads[i], pads[i + len(axes)]
    return full


@register("Pad", reads=("x0.shape",))
def pad(ops, node, fwd, grads, opts):
    x_shape = fwd.x_shape(0)
    mode = node.attr("mode", "constant")
    gx = ops.pad_input_grad(_first(grads), x_shape, pad_amounts(node, len(x_shape)), mode)
    return [gx]

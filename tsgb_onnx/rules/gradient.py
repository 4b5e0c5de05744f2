"""The `gradient` rule set: the exact derivative (vector-Jacobian product) of every op.

Each rule is written against the array namespace `ops` only, so it runs on any backend.
"""

from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto

from tsgb_onnx.errors import ModelError
from tsgb_onnx.ir.geometry import Window, window_of
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
            "differentiated, and it is computed at run time (e.g. from an input size the "
            "model leaves dynamic): export the model with a fixed input size"
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


# -- quantization: the straight-through estimator ---------------------------------------------
# The forward is the quantized model's own; the backward treats rounding as the identity inside
# the representable range and as a constant outside it (zero signal), the convention of
# quantization-aware training (PyTorch's fake_quantize). Scales and zero points are constants
# of the rule (static QDQ) or recorded values (dynamic quantization), never differentiated.
_INT_RANGES = {
    TensorProto.INT8: (-128, 127),
    TensorProto.UINT8: (0, 255),
    TensorProto.INT16: (-32768, 32767),
    TensorProto.UINT16: (0, 65535),
    TensorProto.INT4: (-8, 7),
    TensorProto.UINT4: (0, 15),
}


def _along_axis(node, values: np.ndarray, rank: int) -> np.ndarray:
    """A per-tensor (scalar) or per-axis ([C]) quantization parameter, broadcastable."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 0 or values.size == 1:
        return values.reshape(())
    if int(node.attr("block_size", 0)):
        raise ModelError(
            f"node '{node.name}' ({node.op_type}): blocked quantization "
            "(block_size) has no backward rule"
        )
    axis = _axis(int(node.attr("axis", 1)), rank)
    return values.reshape([-1 if a == axis else 1 for a in range(rank)])


def _quant_params(node, rank: int) -> tuple[np.ndarray, np.ndarray]:
    scale = _along_axis(node, _const_input(node, 1, "the scale"), rank)
    zero = node.const(2)
    zero = np.zeros(()) if zero is None else _along_axis(node, zero, rank)
    return scale, zero


def _int_range(node) -> tuple[int, int]:
    """The output range of a QuantizeLinear (its zero point's type; uint8 without one)."""
    name = node.inputs[2] if node.has_input(2) else ""
    dtype = node.graph.dtypes.get(name, TensorProto.UINT8) if name else TensorProto.UINT8
    if int(node.attr("output_dtype", 0)):
        dtype = int(node.attr("output_dtype"))
    if dtype not in _INT_RANGES:
        raise ModelError(
            f"node '{node.name}' (QuantizeLinear): output type "
            f"{TensorProto.DataType.Name(dtype)} has no backward rule "
            "(supported: int8, uint8, int16, uint16, int4, uint4)"
        )
    return _INT_RANGES[dtype]


@register("QuantizeLinear", reads=("x0",))
def quantize_linear(ops, node, fwd, grads, opts):
    """G[x] = G[q] / scale where round(x / scale) + zero point is representable, else 0."""
    x = fwd.x(0)
    scale, zero = _quant_params(node, ops.ndim(x))
    qmin, qmax = _int_range(node)
    low = ((qmin - zero - 0.5) * scale).astype(np.float32)
    high = ((qmax - zero + 0.5) * scale).astype(np.float32)
    inside = ops.logical_and(ops.greater(x, ops.asarray(low)), ops.less(x, ops.asarray(high)))
    return [ops.mask(ops.div(_first(grads), ops.asarray(scale.astype(np.float32))), inside)]


@register("DequantizeLinear", reads=("x0.shape",))
def dequantize_linear(ops, node, fwd, grads, opts):
    """y = (q - zero point) * scale: G[q] = G[y] * scale."""
    scale, _ = _quant_params(node, len(fwd.x_shape(0)))
    return [ops.mul(_first(grads), ops.asarray(scale.astype(np.float32)))]


@register("DynamicQuantizeLinear", reads=("y1",))
def dynamic_quantize_linear(ops, node, fwd, grads, opts):
    """q = round(x / s) + z with s, z from x's own range, so every x is representable:
    G[x] = G[q] / s (s, z taken as constants)."""
    g = _first(grads)
    return [None if g is None else ops.div(g, fwd.y(1))]


def _centred_weight(node) -> np.ndarray:
    """B - b_zero_point of a MatMulInteger / ConvInteger, as float32 (a constant weight)."""
    w = _const_input(node, 1, "the integer weight").astype(np.float32)
    zero = node.const(3)
    if zero is None and node.has_input(3):
        raise ModelError(
            f"node '{node.name}' ({node.op_type}): the weight zero point must "
            "be a constant to be differentiated"
        )
    if zero is not None and zero.size > 1:  # per output channel
        axis = w.ndim - 1 if node.op_type == "MatMulInteger" else 0
        zero = zero.reshape([-1 if a == axis else 1 for a in range(w.ndim)])
    return w - (0 if zero is None else zero.astype(np.float32))


@register("MatMulInteger", reads=("x0.shape",))
def matmul_integer(ops, node, fwd, grads, opts):
    """y = (A - a0) @ (B - b0): G[A] = G[y] @ (B - b0)^T (B constant)."""
    w = _centred_weight(node)
    gx = ops.matmul(ops.asarray(_first(grads)), ops.swap_last(ops.asarray(w)))
    return [ops.sum_to_shape(gx, fwd.x_shape(0))]


@register("ConvInteger", reads=("x0.shape",))
def conv_integer(ops, node, fwd, grads, opts):
    """y = conv(x - x0, w - w0): G[x] = conv_transpose(G[y], w - w0) (w constant)."""
    x_shape = fwd.x_shape(0)
    w = _centred_weight(node)
    win = window_of(node, x_shape[2:], kernel=w.shape[2:])
    g = ops.asarray(_first(grads))
    return [ops.conv_input_grad(g, ops.asarray(w), x_shape, win, node.attr("group", 1))]


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


# exporters write INT_MAX (int32 or int64) for "to the end" / "from the start" of an axis
_WHOLE_AXIS = 2**31 - 1


def _slice_inputs(node) -> tuple:
    """A Slice's starts, ends, axes and steps (None: the default); a ModelError naming the
    node when one is computed at run time."""
    if node.opset < 10:
        return node.attr("starts"), node.attr("ends"), node.attr("axes"), None
    return (
        _const_input(node, 1, "starts"),
        _const_input(node, 2, "ends"),
        _const_input(node, 3, "axes"),
        _const_input(node, 4, "steps"),
    )


def _slice_reads(node) -> tuple[str, ...]:
    """What the Slice rule reads; the planner calls it, so a Slice whose starts/ends are
    computed at run time is refused when the explainer is built, not after a forward pass."""
    _slice_inputs(node)
    return ("x0.shape",)


def _whole_dynamic_axis(node, axis: int, start: int, end: int, step: int) -> slice:
    """The slice of an axis whose size is only known at run time (the batch, `Batch(k)` in
    the ONNX emitter): only the whole axis (start 0 or -INT_MAX, end INT_MAX, step 1), which
    tf2onnx writes for Keras' Cropping2D, can be expressed for every batch size."""
    if step == 1 and (start == 0 or start <= -_WHOLE_AXIS) and end >= _WHOLE_AXIS:
        return slice(None)
    raise ModelError(
        f"node '{node.name}' (Slice) cuts the batch-sized axis {axis} (start {start}, end "
        f"{end}, step {step}): a compiled explainer serves every batch size, so it can only "
        "keep that axis whole (use backend='numpy', or export the model without the slice)"
    )


def slice_index(node, x_shape) -> tuple:
    """Python slices equal to an ONNX Slice on a tensor of shape `x_shape` (whose dimensions
    may be `Batch(k)` sizes in the ONNX emitter: see `_whole_dynamic_axis`)."""
    rank = len(x_shape)
    starts, ends, axes, steps = _slice_inputs(node)
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
        if not isinstance(dim, (int, np.integer)):
            index[axis] = _whole_dynamic_axis(node, axis, start, end, step)
            continue
        start = start + dim if start < 0 else start
        end = end + dim if end < 0 else end
        if step > 0:
            start, end = min(max(start, 0), dim), min(max(end, 0), dim)
            index[axis] = slice(start, end, step)
        else:
            start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
            index[axis] = slice(start, None if end < 0 else end, step)
    return tuple(index)


@register("Slice", reads=_slice_reads)
def slice_(ops, node, fwd, grads, opts):
    x_shape = fwd.x_shape(0)
    gx = ops.scatter_slices(_first(grads), x_shape, slice_index(node, x_shape))
    return [gx]


def _pad_inputs(node) -> tuple:
    """A Pad's pads and axes (None: every axis); a ModelError naming the node when they are
    computed at run time (TF-"SAME" padding of an input of dynamic size)."""
    if node.opset < 11:
        return node.attr("pads"), None
    axes = _const_input(node, 3, "axes") if node.opset >= 18 else None
    return _const_input(node, 1, "pads"), axes


def _pad_reads(node) -> tuple[str, ...]:
    """What the Pad rule reads; the planner calls it, so pads computed at run time are
    refused when the explainer is built, not after a forward pass."""
    _pad_inputs(node)
    return ("x0.shape",)


def pad_amounts(node, rank: int) -> list[int]:
    pads, axes = _pad_inputs(node)
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    if axes is None:
        return pads
    axes = [_axis(int(a), rank) for a in axes.reshape(-1)]
    full = [0] * (2 * rank)
    for i, a in enumerate(axes):
        full[a], full[a + rank] = pads[i], pads[i + len(axes)]
    return full


@register("Pad", reads=_pad_reads)
def pad(ops, node, fwd, grads, opts):
    x_shape = fwd.x_shape(0)
    mode = node.attr("mode", "constant")
    gx = ops.pad_input_grad(_first(grads), x_shape, pad_amounts(node, len(x_shape)), mode)
    return [gx]


# -- element-wise functions ------------------------------------------------------------------
# Derivatives from the forward's own tensors where that is exact and stable (Exp: y, Sqrt:
# 1/(2y), the exponential branches of Elu/Selu/Celu: y + const), else from x.
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@register("Erf", reads=("x0",))
def erf(ops, node, fwd, grads, opts):
    """d erf(x)/dx = 2/sqrt(pi) exp(-x^2)."""
    slope = ops.mul(ops.exp(ops.neg(ops.square(fwd.x(0)))), 2 / math.sqrt(math.pi))
    return [ops.mul(_first(grads), slope)]


@register("Gelu", reads=("x0",))
def gelu(ops, node, fwd, grads, opts):
    """approximate="none": Phi(x) + x phi(x); "tanh": the derivative of
    x/2 (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3)."""
    x, g = fwd.x(0), _first(grads)
    approximate = node.attr("approximate", "none")
    if approximate == "none":
        cdf = ops.mul(ops.add(ops.erf(ops.mul(x, 1 / math.sqrt(2.0))), 1.0), 0.5)
        pdf = ops.mul(ops.exp(ops.mul(ops.square(x), -0.5)), _INV_SQRT_2PI)
        return [ops.mul(g, ops.add(cdf, ops.mul(x, pdf)))]
    if approximate != "tanh":
        raise ModelError(
            f"node '{node.name}' (Gelu): approximate='{approximate}' is not an ONNX mode "
            "('none' or 'tanh')"
        )
    x2 = ops.square(x)
    u = ops.mul(ops.add(ops.mul(x2, 0.044715), 1.0), ops.mul(x, _SQRT_2_OVER_PI))
    t, sech2 = _tanh_and_sech2(ops, u)
    du = ops.add(ops.mul(x2, 3 * 0.044715 * _SQRT_2_OVER_PI), _SQRT_2_OVER_PI)
    slope = ops.add(ops.mul(ops.add(t, 1.0), 0.5), ops.mul(ops.mul(x, 0.5), ops.mul(sech2, du)))
    return [ops.mul(g, slope)]


def _tanh_and_sech2(ops, u):
    """tanh(u) = 1 - 2/(e + 1) and 1 - tanh(u)^2 = 4e/(e + 1)^2 with e = exp(2u), u clamped
    at 20 (where both are 1 and 0 in float32): no overflow, no NaN."""
    e = ops.exp(ops.mul(ops.minimum(u, 20.0), 2.0))
    e1 = ops.add(e, 1.0)
    return ops.sub(1.0, ops.div(2.0, e1)), ops.div(ops.mul(e, 4.0), ops.square(e1))


def _sigmoid(ops, x):
    """1 / (1 + exp(-x)): exp overflows to inf for x < -88, giving exactly 0."""
    return ops.div(1.0, ops.add(ops.exp(ops.neg(x)), 1.0))


@register("Softplus", reads=("x0",))
def softplus(ops, node, fwd, grads, opts):
    """d log(1 + e^x)/dx = sigmoid(x)."""
    return [ops.mul(_first(grads), _sigmoid(ops, fwd.x(0)))]


@register("Mish", reads=("x0",))
def mish(ops, node, fwd, grads, opts):
    """y = x tanh(softplus(x)): dy/dx = t + x (1 - t^2) sigmoid(x), with n = e^x,
    t = a / (a + 2) and 1 - t^2 = 4(a + 1)/(a + 2)^2 for a = n^2 + 2n (x clamped at 20, where
    t = 1 and 1 - t^2 = 0 in float32)."""
    x = fwd.x(0)
    n = ops.exp(ops.minimum(x, 20.0))
    a = ops.mul(n, ops.add(n, 2.0))
    a2 = ops.add(a, 2.0)
    t = ops.div(a, a2)
    sech2 = ops.div(ops.mul(ops.add(a, 1.0), 4.0), ops.square(a2))
    slope = ops.add(t, ops.mul(ops.mul(x, sech2), _sigmoid(ops, x)))
    return [ops.mul(_first(grads), slope)]


@register("Elu", reads=("x0", "y0"))
def elu(ops, node, fwd, grads, opts):
    """1 for x > 0, alpha e^x = y + alpha for x <= 0."""
    alpha = node.attr("alpha", 1.0)
    g = _first(grads)
    return [ops.where(ops.greater(fwd.x(0), 0.0), g, ops.mul(g, ops.add(fwd.y(0), alpha)))]


@register("Selu", reads=("x0", "y0"))
def selu(ops, node, fwd, grads, opts):
    """gamma for x > 0, gamma alpha e^x = y + gamma alpha for x <= 0."""
    alpha = node.attr("alpha", 1.67326319217681884765625)
    gamma = node.attr("gamma", 1.05070102214813232421875)
    g = _first(grads)
    below = ops.mul(g, ops.add(fwd.y(0), alpha * gamma))
    return [ops.where(ops.greater(fwd.x(0), 0.0), ops.mul(g, gamma), below)]


@register("Celu", reads=("x0", "y0"))
def celu(ops, node, fwd, grads, opts):
    """1 for x > 0, e^(x/alpha) = y/alpha + 1 for x <= 0."""
    alpha = node.attr("alpha", 1.0)
    g = _first(grads)
    below = ops.mul(g, ops.add(ops.div(fwd.y(0), alpha), 1.0))
    return [ops.where(ops.greater(fwd.x(0), 0.0), g, below)]


@register("Exp", reads=("y0",))
def exp(ops, node, fwd, grads, opts):
    return [ops.mul(_first(grads), fwd.y(0))]


@register("Log", reads=("x0",))
def log(ops, node, fwd, grads, opts):
    return [ops.div(_first(grads), fwd.x(0))]


@register("Sqrt", reads=("y0",))
def sqrt(ops, node, fwd, grads, opts):
    """1 / (2 sqrt(x)): inf at x = 0, the true derivative."""
    return [ops.div(ops.mul(_first(grads), 0.5), fwd.y(0))]


@register("Reciprocal", reads=("y0",))
def reciprocal(ops, node, fwd, grads, opts):
    """d(1/x)/dx = -y^2."""
    return [ops.neg(ops.mul(_first(grads), ops.square(fwd.y(0))))]


@register("Abs", reads=("x0",))
def abs_(ops, node, fwd, grads, opts):
    """sign(x); 0 at x = 0 (the subgradient PyTorch picks)."""
    return [ops.mul(_first(grads), ops.sign(fwd.x(0)))]


def _pow_reads(node):
    if node.is_const(1):
        return ("x0",)
    return ("y0", "x1.shape")


@register("Pow", reads=_pow_reads)
def pow_(ops, node, fwd, grads, opts):
    """A constant exponent p: p x^(p-1); a constant base a > 0: y ln(a). A per-element
    exponent must be one value; both operands variable is refused."""
    g = _first(grads)
    exponent = node.const(1)
    if exponent is not None:
        p = np.asarray(exponent, dtype=np.float64).reshape(-1)
        if p.size == 0 or not np.all(p == p[0]):
            raise ModelError(
                f"node '{node.name}' (Pow): the exponent must be one value to be "
                "differentiated (a per-element exponent has no rule)"
            )
        p, x = float(p[0]), fwd.x(0)
        if p == 0.0:
            gx = ops.mul(g, 0.0)
        elif p == 1.0:
            gx = g
        elif p == 2.0:
            gx = ops.mul(g, ops.mul(x, 2.0))
        else:
            gx = ops.mul(g, ops.mul(ops.power(x, p - 1.0), p))
        return [ops.sum_to_shape(gx, fwd.x_shape(0))]
    base = node.const(0)
    if base is None:
        raise ModelError(
            f"node '{node.name}' (Pow): base and exponent both vary; the gradient rule needs "
            "a constant exponent (or a constant positive base)"
        )
    base = np.asarray(base, dtype=np.float64)
    if np.any(base <= 0):
        raise ModelError(
            f"node '{node.name}' (Pow): a constant base must be > 0 for d a^x/dx = a^x ln(a)"
        )
    ln_base = ops.asarray(np.log(base).astype(np.float32))
    return [None, ops.sum_to_shape(ops.mul(ops.mul(g, fwd.y(0)), ln_base), fwd.x_shape(1))]


# -- element-wise selection: Max / Min, Where ------------------------------------------------
@register(["Max", "Min"], reads=("x*", "x*.shape", "y0"))
def max_min(ops, node, fwd, grads, opts):
    """The signal goes to the operands equal to the result; a tie splits it evenly between
    them (torch.maximum's convention), constants included. Broadcast operands get the sum
    over the positions they fill."""
    g, y = _first(grads), fwd.y(0)
    beaten = ops.less if node.op_type == "Max" else ops.greater
    hits = [ops.where(beaten(fwd.x(i), y), 0.0, 1.0) for i in range(len(node.inputs))]
    count = hits[0]
    for h in hits[1:]:
        count = ops.add(count, h)
    share = ops.div(g, count) if len(hits) > 1 else g
    return [
        ops.sum_to_shape(ops.mul(share, h), fwd.x_shape(i)) if fwd.wants(i) else None
        for i, h in enumerate(hits)
    ]


@register("Where", reads=("x0", "x1.shape", "x2.shape"))
def where(ops, node, fwd, grads, opts):
    """Where(cond, a, b): a gets the signal where cond holds, b elsewhere; the (boolean)
    condition carries none."""
    g = _first(grads)
    picked = ops.mask(g, fwd.x(0))
    out = [None, None, None]
    if fwd.wants(1):
        out[1] = ops.sum_to_shape(picked, fwd.x_shape(1))
    if fwd.wants(2):
        out[2] = ops.sum_to_shape(ops.sub(g, picked), fwd.x_shape(2))
    return out


# -- normalisation over trailing axes / groups -------------------------------------------------
def _standardize(ops, x, axes: tuple, eps: float):
    """(x - mean) / sqrt(var + eps) over `axes`, 1 / sqrt(var + eps), and the count."""
    n = _count(ops.shape(x), axes)
    centred = ops.sub(x, ops.div(ops.sum(x, axis=axes, keepdims=True), n))
    var = ops.div(ops.sum(ops.square(centred), axis=axes, keepdims=True), n)
    inv_std = ops.power(ops.add(var, eps), -0.5)
    return ops.mul(centred, inv_std), inv_std, n


def _standardized_input_grad(ops, gs, xhat, inv_std, axes: tuple, n: float):
    """G[x] of xhat = standardize(x) given G[xhat] = gs:
    inv_std (gs - mean(gs) - xhat mean(gs xhat))."""
    mean_g = ops.div(ops.sum(gs, axis=axes, keepdims=True), n)
    mean_gx = ops.div(ops.sum(ops.mul(gs, xhat), axis=axes, keepdims=True), n)
    return ops.mul(inv_std, ops.sub(ops.sub(gs, mean_g), ops.mul(xhat, mean_gx)))


def _trailing_axes(node, rank: int) -> tuple:
    return tuple(range(_axis(int(node.attr("axis", -1)), rank), rank))


@register("LayerNormalization", reads=("x0", "x1", "x1.shape", "x2.shape"))
def layer_norm(ops, node, fwd, grads, opts):
    """y = standardize(x over axes axis..) * scale + bias; signals also for the optional
    Mean and InvStdDev outputs, and for a scale / bias that are not constants."""
    x = fwd.x(0)
    axes = _trailing_axes(node, ops.ndim(x))
    xhat, inv_std, n = _standardize(ops, x, axes, node.attr("epsilon", 1e-5))
    g = grads[0]
    out = [None] * len(node.inputs)
    gx = None
    if g is not None:
        gx = _standardized_input_grad(ops, ops.mul(g, fwd.x(1)), xhat, inv_std, axes, n)
        if fwd.wants(1):
            out[1] = ops.sum_to_shape(ops.mul(g, xhat), fwd.x_shape(1))
        if len(node.inputs) > 2 and fwd.wants(2):
            out[2] = ops.sum_to_shape(g, fwd.x_shape(2))
    g_mean = grads[1] if len(grads) > 1 else None
    if g_mean is not None:  # d mean / dx = 1/n
        term = ops.div(g_mean, n)
        gx = term if gx is None else ops.add(gx, term)
    g_inv = grads[2] if len(grads) > 2 else None
    if g_inv is not None:  # d inv_std / dx = -inv_std^3 (x - mean) / n
        term = ops.mul(ops.mul(g_inv, ops.square(inv_std)), ops.div(xhat, -n))
        gx = term if gx is None else ops.add(gx, term)
    out[0] = None if gx is None else ops.expand_to(gx, ops.shape(x))
    return out


@register("GroupNormalization", reads=("x0",))
def group_norm(ops, node, fwd, grads, opts):
    """Standardize each of num_groups channel groups (with its spatial axes), then a
    per-channel affine (opset 21; opset 18's per-group scale is repeated per channel)."""
    x = fwd.x(0)
    shape = ops.shape(x)
    channels, groups = int(shape[1]), int(node.attr("num_groups"))
    scale = np.asarray(_const_input(node, 1, "the scale"), dtype=np.float32).reshape(-1)
    if node.opset < 21 and scale.size == groups:
        scale = np.repeat(scale, channels // groups)
    if scale.size != channels or channels % groups:
        raise ModelError(
            f"node '{node.name}' (GroupNormalization): {channels} channels, num_groups {groups} "
            f"and a scale of {scale.size} values do not fit (opset {node.opset})"
        )
    grouped = (shape[0], groups, channels // groups * math.prod(shape[2:]))
    xhat, inv_std, n = _standardize(ops, ops.reshape(x, grouped), (2,), node.attr("epsilon", 1e-5))
    gs = ops.mul(_first(grads), ops.asarray(scale.reshape(_channel_shape(len(shape), channels))))
    gx = _standardized_input_grad(ops, ops.reshape(gs, grouped), xhat, inv_std, (2,), n)
    return [ops.reshape(gx, shape)]


@register("RMSNormalization", reads=("x0", "x1", "x1.shape"))
def rms_norm(ops, node, fwd, grads, opts):
    """y = x / sqrt(mean(x^2 over axes axis..) + eps) * scale:
    G[x] = inv (gs - xhat mean(gs xhat)) with gs = G[y] scale, xhat = x inv."""
    x, g = fwd.x(0), _first(grads)
    axes = _trailing_axes(node, ops.ndim(x))
    n = _count(ops.shape(x), axes)
    mean_square = ops.div(ops.sum(ops.square(x), axis=axes, keepdims=True), n)
    inv = ops.power(ops.add(mean_square, node.attr("epsilon", 1e-5)), -0.5)
    xhat = ops.mul(x, inv)
    gs = ops.mul(g, fwd.x(1))
    mean_gx = ops.div(ops.sum(ops.mul(gs, xhat), axis=axes, keepdims=True), n)
    gx = ops.mul(inv, ops.sub(gs, ops.mul(xhat, mean_gx)))
    gscale = ops.sum_to_shape(ops.mul(g, xhat), fwd.x_shape(1)) if fwd.wants(1) else None
    return [gx, gscale]


# -- reductions ------------------------------------------------------------------------------
def _kept(ops, node, x_shape, t):
    """`t` (a reduction's output or signal) with the reduced axes kept as size 1."""
    axes = _reduce_axes(node, len(x_shape))
    return ops.reshape(t, tuple(1 if i in axes else s for i, s in enumerate(x_shape))), axes


@register(["ReduceMax", "ReduceMin"], reads=("x0", "y0"))
def reduce_max(ops, node, fwd, grads, opts):
    """The signal goes to the maximum (minimum); ties split it evenly (PyTorch's amax/amin)."""
    x = fwd.x(0)
    x_shape = ops.shape(x)
    g, axes = _kept(ops, node, x_shape, _first(grads))
    y, _ = _kept(ops, node, x_shape, fwd.y(0))
    beaten = ops.less if node.op_type == "ReduceMax" else ops.greater
    hit = ops.where(beaten(x, y), 0.0, 1.0)
    count = ops.sum(hit, axis=tuple(axes), keepdims=True) if axes else 1.0
    return [ops.mul(hit, ops.div(g, count))]


@register("ReduceL2", reads=("x0", "y0"))
def reduce_l2(ops, node, fwd, grads, opts):
    """x / y; 0 where the whole reduced group is 0 (x g / max(y, FLT_MIN))."""
    x = fwd.x(0)
    x_shape = ops.shape(x)
    g, _ = _kept(ops, node, x_shape, _first(grads))
    y, _ = _kept(ops, node, x_shape, fwd.y(0))
    return [ops.div(ops.mul(x, g), ops.maximum(y, float(np.finfo(np.float32).tiny)))]


@register("ReduceLogSumExp", reads=("x0", "y0"))
def reduce_log_sum_exp(ops, node, fwd, grads, opts):
    """exp(x - y): the softmax over the reduced axes."""
    x = fwd.x(0)
    x_shape = ops.shape(x)
    g, _ = _kept(ops, node, x_shape, _first(grads))
    y, _ = _kept(ops, node, x_shape, fwd.y(0))
    return [ops.mul(ops.exp(ops.sub(x, y)), g)]


@register("ReduceSumSquare", reads=("x0",))
def reduce_sum_square(ops, node, fwd, grads, opts):
    x = fwd.x(0)
    g, _ = _kept(ops, node, ops.shape(x), _first(grads))
    return [ops.mul(ops.mul(x, 2.0), g)]


@register("ReduceL1", reads=("x0",))
def reduce_l1(ops, node, fwd, grads, opts):
    """sign(x); 0 at x = 0."""
    x = fwd.x(0)
    g, _ = _kept(ops, node, ops.shape(x), _first(grads))
    return [ops.mul(ops.sign(x), g)]


# -- broadcasting copies: Expand, Tile ------------------------------------------------------
@register("Expand", reads=("x0.shape",))
def expand(ops, node, fwd, grads, opts):
    return [ops.sum_to_shape(_first(grads), fwd.x_shape(0))]


@register("Tile", reads=("x0.shape",))
def tile(ops, node, fwd, grads, opts):
    """Sum the copies: the signal viewed as [r0, d0, r1, d1, ...], summed over the r axes."""
    x_shape = fwd.x_shape(0)
    repeats = [int(r) for r in np.asarray(_const_input(node, 1, "repeats")).reshape(-1)]
    g = _first(grads)
    if all(r == 1 for r in repeats):
        return [g]
    split, copies = [], []
    for r, d in zip(repeats, x_shape):
        if r != 1:
            copies.append(len(split))
            split.append(r)
        split.append(d)
    return [ops.reshape(ops.sum(ops.reshape(g, split), axis=tuple(copies)), x_shape)]


# -- indexing: the adjoint of a gather is a scatter-add --------------------------------------
def _index_reads(node):
    return ("x0.shape",) if node.is_const(1) else ("x0.shape", "x1")


def _indices(node, fwd):
    """The index input: a constant of the rule, or the recorded integer tensor."""
    value = node.const(1)
    return fwd.x(1) if value is None else value


@register("Gather", reads=_index_reads)
def gather(ops, node, fwd, grads, opts):
    x_shape = fwd.x_shape(0)
    axis = _axis(int(node.attr("axis", 0)), len(x_shape))
    return [ops.gather_input_grad(_first(grads), _indices(node, fwd), x_shape, axis)]


@register("GatherElements", reads=_index_reads)
def gather_elements(ops, node, fwd, grads, opts):
    x_shape = fwd.x_shape(0)
    axis = _axis(int(node.attr("axis", 0)), len(x_shape))
    return [ops.gather_elements_input_grad(_first(grads), _indices(node, fwd), x_shape, axis)]


@register("GatherND", reads=_index_reads)
def gather_nd(ops, node, fwd, grads, opts):
    x_shape = fwd.x_shape(0)
    batch_dims = int(node.attr("batch_dims", 0))
    return [ops.gather_nd_input_grad(_first(grads), _indices(node, fwd), x_shape, batch_dims)]


# -- interpolation: Resize / Upsample ----------------------------------------------------------
# Resize is linear in x and separable: y = M_k ... M_1 x with one [out, in] matrix per resized
# axis, built here in NumPy from the geometry with ONNX Runtime's float32 coordinate arithmetic
# (upsamplebase.h: the coordinate transform, nearest rounding, linear clamping, cubic weights
# with edge-clamped neighbours). The signal is G[y] contracted with each matrix.
_F32 = np.float32


def _original_coordinates(ctm: str, n_in: int, n_out: int, scale) -> np.ndarray:
    """Input coordinate of each output index (float32, as ONNX Runtime computes it)."""
    xr = np.arange(n_out, dtype=_F32)
    scale = _F32(scale)
    if ctm == "asymmetric":
        return xr / scale
    if ctm == "half_pixel":
        return (xr + _F32(0.5)) / scale - _F32(0.5)
    if ctm == "pytorch_half_pixel":
        return (xr + _F32(0.5)) / scale - _F32(0.5) if n_out > 1 else np.zeros(n_out, _F32)
    if ctm == "tf_half_pixel_for_nn":
        return (xr + _F32(0.5)) / scale
    if ctm == "align_corners":
        if n_out == 1:
            return np.zeros(1, _F32)
        return xr * _F32(n_in - 1) / _F32(n_out - 1)
    if ctm == "half_pixel_symmetric":
        adjustment = _F32(n_out) / (scale * _F32(n_in))
        offset = _F32(n_in) / _F32(2) * (_F32(1) - adjustment)
        return (float(offset) + (xr.astype(np.float64) + 0.5) / float(scale) - 0.5).astype(_F32)
    raise ValueError(ctm)


def _nearest_index(xo: np.ndarray, mode: str, downsampling: bool) -> np.ndarray:
    x = xo.astype(np.float64)  # float32 values: every step below is exact in float64
    half_away = np.sign(x) * np.floor(np.abs(x) + 0.5)  # std::round
    if mode == "simple":  # Resize-10 / Upsample
        return np.ceil(x) if downsampling else np.trunc(x)
    if mode == "round_prefer_floor":
        return np.where(x == np.trunc(x) + 0.5, np.floor(x), half_away)
    if mode == "round_prefer_ceil":
        return half_away
    if mode == "floor":
        return np.floor(x)
    if mode == "ceil":
        return np.ceil(x)
    raise ValueError(mode)


def _cubic_weights(s: np.ndarray, a: float) -> list[np.ndarray]:
    """Keys' cubic convolution weights of the neighbours at -1, 0, +1, +2 of floor(x)."""
    a = _F32(a)
    one, two = _F32(1), _F32(2)
    s1, r, r1 = s + one, one - s, two - s
    return [
        ((a * s1 - 5 * a) * s1 + 8 * a) * s1 - 4 * a,
        ((a + 2) * s - (a + 3)) * s * s + one,
        ((a + 2) * r - (a + 3)) * r * r + one,
        ((a * r1 - 5 * a) * r1 + 8 * a) * r1 - 4 * a,
    ]


def resize_matrix(
    n_in: int,
    n_out: int,
    scale: float,
    mode: str,
    ctm: str,
    nearest_mode: str = "round_prefer_floor",
    cubic_a: float = -0.75,
    exclude_outside: bool = False,
) -> np.ndarray:
    """The [n_out, n_in] matrix of ONNX Resize along one axis (y = M x)."""
    xo = _original_coordinates(ctm, n_in, n_out, scale)
    matrix = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    if mode == "nearest":
        index = _nearest_index(xo, nearest_mode, float(scale) < 1.0)
        matrix[rows, np.clip(index, 0, n_in - 1).astype(np.int64)] = 1.0
    elif mode == "linear":
        x = np.clip(xo, _F32(0), _F32(n_in - 1))
        low = np.minimum(x.astype(np.int64), n_in - 1)
        high = np.minimum(low + 1, n_in - 1)
        w_low = np.abs(x - high.astype(_F32))
        w_high = np.abs(x - low.astype(_F32))
        same = low == high
        w_low, w_high = np.where(same, 0.5, w_low), np.where(same, 0.5, w_high)
        np.add.at(matrix, (rows, low), w_low)
        np.add.at(matrix, (rows, high), w_high)
    elif mode == "cubic":
        base = np.floor(xo)
        weights = np.stack(_cubic_weights((xo - base).astype(_F32), cubic_a), axis=1)
        index = base.astype(np.int64)[:, None] + np.arange(-1, 3)
        weights = weights.astype(np.float64)
        if exclude_outside:
            weights = np.where((index >= 0) & (index < n_in), weights, 0.0)
            weights /= weights.sum(axis=1, keepdims=True)
        for k in range(4):
            np.add.at(matrix, (rows, np.clip(index[:, k], 0, n_in - 1)), weights[:, k])
    else:
        raise ValueError(mode)
    return matrix.astype(np.float32)


def _resize_scales(node, x_shape, y_shape, ints) -> np.ndarray:
    """The float32 scale of every axis (ONNX Runtime's: the given scales, else out / in from
    sizes, adjusted by keep_aspect_ratio_policy). Sizes need not be constants (exporters
    compute them from shapes): with the stretch policy, out / in is the output's own size."""
    rank = len(x_shape)
    what = f"node '{node.name}' ({node.op_type})"
    if node.op_type == "Upsample" and node.opset < 9:
        given, sizes = node.attr("scales"), None
    elif node.op_type == "Upsample" or node.opset == 10:
        given, sizes = _const_input(node, 1, "scales"), None
    else:
        given = _const_input(node, 2, "scales") if node.has_input(2) else None
        sizes = node.const(3) if node.has_input(3) else None
        if sizes is None and node.has_input(3):  # computed sizes: the output has them
            sizes = [y_shape[a] for a in range(rank)]
    axes = node.attr("axes") if node.opset >= 18 else None
    axes = list(range(rank)) if not axes else [_axis(int(a), rank) for a in axes]
    if node.has_input(3) and node.const(3) is None and len(axes) < rank:
        sizes = [y_shape[a] for a in axes]
    scales = np.ones(rank, dtype=_F32)
    if given is not None and np.asarray(given).size:
        for a, s in zip(axes, np.asarray(given, dtype=_F32).reshape(-1)):
            scales[a] = s
        return scales
    if sizes is None or not len(sizes):
        raise ModelError(f"{what}: neither scales nor sizes given")
    policy = node.attr("keep_aspect_ratio_policy", "stretch")
    if node.const(3) is None and policy != "stretch":
        raise ModelError(
            f"{what}: keep_aspect_ratio_policy '{policy}' needs constant sizes to be "
            "differentiated; fold the graph's constants before explaining"
        )
    for a, s in zip(axes, np.asarray(sizes, dtype=object).reshape(-1)):
        if not (ints(x_shape[a]) and ints(s)):
            if s == x_shape[a]:  # the batch axis, kept
                continue
            raise ModelError(f"{what}: resizes the batch axis")
        scales[a] = _F32(int(s)) / _F32(int(x_shape[a]))
    if policy in ("not_larger", "not_smaller"):
        common = (min if policy == "not_larger" else max)(scales[a] for a in axes)
        scales[axes] = common
    elif policy != "stretch":
        raise ModelError(
            f"node '{node.name}' (Resize): keep_aspect_ratio_policy '{policy}' is not ONNX's"
        )
    return scales


_RESIZE_MODES = ("nearest", "linear", "cubic")
_RESIZE_TRANSFORMS = (
    "half_pixel",
    "half_pixel_symmetric",
    "pytorch_half_pixel",
    "align_corners",
    "asymmetric",
    "tf_half_pixel_for_nn",
)


@register(["Resize", "Upsample"], reads=("x0.shape",))
def resize(ops, node, fwd, grads, opts):
    """The adjoint of Resize: G[y] contracted with each resized axis's interpolation matrix
    (modes nearest, linear, cubic; every coordinate transform but tf_crop_and_resize;
    scales or sizes, axes, keep_aspect_ratio_policy; no antialias)."""
    g, x_shape = _first(grads), fwd.x_shape(0)
    y_shape = ops.shape(g)
    mode = node.attr("mode", "nearest")
    if mode == "bilinear":  # Upsample-7's spelling
        mode = "linear"
    legacy = node.op_type == "Upsample" or node.opset < 11
    ctm = "asymmetric" if legacy else node.attr("coordinate_transformation_mode", "half_pixel")
    what = f"node '{node.name}' ({node.op_type})"
    if mode not in _RESIZE_MODES:
        raise ModelError(f"{what}: mode '{mode}' is not one of {_RESIZE_MODES}")
    if ctm not in _RESIZE_TRANSFORMS:
        raise ModelError(
            f"{what}: coordinate_transformation_mode '{ctm}' has no backward rule "
            f"(supported: {', '.join(_RESIZE_TRANSFORMS)})"
        )
    if node.attr("antialias", 0) and mode != "nearest":
        raise ModelError(f"{what}: antialias=1 has no backward rule; export with antialias=0")
    nearest_mode = "simple" if legacy else node.attr("nearest_mode", "round_prefer_floor")

    def ints(d) -> bool:
        return isinstance(d, (int, np.integer))

    scales = _resize_scales(node, x_shape, y_shape, ints)
    for axis, (n_in, n_out) in enumerate(zip(x_shape, y_shape)):
        if not (ints(n_in) and ints(n_out)):  # the batch axis (symbolic on the emitter)
            if scales[axis] != 1 or n_in != n_out:
                raise ModelError(f"{what}: resizes the batch axis")
            continue
        matrix = resize_matrix(
            int(n_in),
            int(n_out),
            scales[axis],
            mode,
            ctm,
            nearest_mode,
            node.attr("cubic_coeff_a", -0.75),
            bool(node.attr("exclude_outside", 0)),
        )
        if n_in == n_out and np.array_equal(matrix, np.eye(n_in, dtype=np.float32)):
            continue
        g = ops.axis_matmul(g, axis, matrix)
    return [g]


# -- contractions: Einsum, ConvTranspose -----------------------------------------------------
def _einsum_terms(node, ranks: list[int]) -> tuple[list[str], str]:
    """Each operand's subscripts and the output's, ellipses spelled out and every letter
    renamed to a lowercase one (ONNX and NumPy both accept them)."""
    equation = node.attr("equation").replace(" ", "")
    lhs, arrow, out = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise ModelError(f"node '{node.name}' (Einsum): '{equation}' does not fit its inputs")
    letters = sorted({c for c in equation if c.isalpha()})
    ellipsis_rank = max(
        [r - len(t.replace("...", "")) for t, r in zip(terms, ranks) if "..." in t], default=0
    )
    free = [c for c in "abcdefghijklmnopqrstuvwxyz"]
    if len(letters) + ellipsis_rank > len(free):
        raise ModelError(f"node '{node.name}' (Einsum): too many subscripts")
    rename = {c: free[i] for i, c in enumerate(letters)}
    dots = "".join(free[len(letters) : len(letters) + ellipsis_rank])

    def spell(term: str, rank: int | None) -> str:
        head, _, tail = term.partition("...")
        if "..." in term:
            width = (rank - len(head) - len(tail)) if rank is not None else ellipsis_rank
            middle = dots[ellipsis_rank - width :]
        else:
            middle = ""
        return "".join(rename[c] for c in head) + middle + "".join(rename[c] for c in tail)

    spelled = [spell(t, r) for t, r in zip(terms, ranks)]
    if arrow:
        output = spell(out, None)
    else:  # implicit output: the ellipsis, then the letters that appear once, sorted
        joined = "".join(spelled)
        once = (c for c in set(joined) if joined.count(c) == 1 and c not in dots)
        output = dots + "".join(sorted(once))
    for term in spelled:
        if len(set(term)) != len(term):
            raise ModelError(
                f"node '{node.name}' (Einsum): a repeated subscript in one operand "
                f"('{equation}': a diagonal) has no backward rule"
            )
    return spelled, output


def _einsum_reads(node):
    variable = [i for i in range(len(node.inputs)) if not node.is_const(i)]
    reads = [f"x{i}.shape" for i in range(len(node.inputs))]
    for i in range(len(node.inputs)):
        if any(j != i for j in variable):  # another operand's signal reads this one
            reads.append(f"x{i}")
    return tuple(reads)


@register("Einsum", reads=_einsum_reads)
def einsum(ops, node, fwd, grads, opts):
    """G[operand i] = einsum(G[y], the other operands -> operand i's subscripts); subscripts
    only operand i has (summed in the forward) get the signal broadcast along them."""
    g = _first(grads)
    shapes = [tuple(fwd.x_shape(i)) for i in range(len(node.inputs))]
    terms, output = _einsum_terms(node, [len(s) for s in shapes])
    sizes: dict = {}
    for term, shape in zip(terms, shapes):
        for c, d in zip(term, shape):
            if sizes.setdefault(c, d) != d:
                raise ModelError(
                    f"node '{node.name}' (Einsum): subscript sizes {sizes[c]} and {d} "
                    "differ (broadcasting within an einsum has no backward rule)"
                )
    out = []
    for i, term in enumerate(terms):
        if not fwd.wants(i):
            out.append(None)
            continue
        others = [j for j in range(len(terms)) if j != i]
        reached = set(output).union(*(terms[j] for j in others))
        kept = "".join(c for c in term if c in reached)
        equation = ",".join([output] + [terms[j] for j in others]) + "->" + kept
        gi = ops.einsum(equation, [g] + [fwd.x(j) for j in others])
        if kept != term:
            gi = ops.reshape(gi, tuple(d if c in reached else 1 for c, d in zip(term, shapes[i])))
            gi = ops.expand_to(gi, shapes[i])
        out.append(gi)
    return out


def _conv_transpose_reads(node):
    return ("x0.shape",) if node.is_const(1) else ("x0.shape", "x1")


@register("ConvTranspose", reads=_conv_transpose_reads)
def conv_transpose(ops, node, fwd, grads, opts):
    """G[x] is the Conv of G[y] with the same weights ([C_in, C_out/group, *k] is a Conv
    kernel from C_out to C_in channels), strides, dilations and the transpose's begin pads
    (resolved from output_shape / auto_pad with the actual output size)."""
    g, x_shape, w = _first(grads), fwd.x_shape(0), fwd.x(1)
    spatial, out_spatial = [int(s) for s in x_shape[2:]], [int(s) for s in ops.shape(g)[2:]]
    nd = len(spatial)
    kernel = tuple(int(k) for k in (node.attr("kernel_shape") or ops.shape(w)[2:]))
    strides = tuple(node.attr("strides") or (1,) * nd)
    dilations = tuple(node.attr("dilations") or (1,) * nd)
    output_padding = tuple(node.attr("output_padding") or (0,) * nd)
    auto_pad = node.attr("auto_pad", "NOTSET")
    pads = node.attr("pads")
    begins = []
    for i in range(nd):
        extent = (kernel[i] - 1) * dilations[i] + 1
        total = strides[i] * (spatial[i] - 1) + output_padding[i] + extent - out_spatial[i]
        if auto_pad == "SAME_UPPER":
            begins.append(total // 2)
        elif auto_pad == "SAME_LOWER" or (node.attr("output_shape") and auto_pad == "NOTSET"):
            begins.append(total - total // 2)
        elif pads and auto_pad == "NOTSET":
            begins.append(int(pads[i]))
        else:  # VALID, or no pads
            begins.append(0)
    full = [
        strides[i] * (spatial[i] - 1) + output_padding[i] + (kernel[i] - 1) * dilations[i] + 1
        for i in range(nd)
    ]
    ends = [full[i] - out_spatial[i] - begins[i] for i in range(nd)]
    if any(p < 0 for p in begins + ends):
        raise ModelError(
            f"node '{node.name}' (ConvTranspose): negative implicit pads {begins + ends} "
            "have no backward rule"
        )
    win = Window(kernel, strides, dilations, tuple(begins + ends))
    return [ops.conv(g, w, win, int(node.attr("group", 1)), spatial)]

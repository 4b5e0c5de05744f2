"""Every rule of the `gradient` rule set against finite differences, one tiny graph per case.

Each case is a small ONNX graph with input X and output Y. The engine's
``Explainer(model, "gradient").vjp(x, seed)`` must equal the central-difference gradient
of sum(Y * seed), evaluated by ONNX Runtime on a float64 copy of the graph where ORT has
double kernels (eps 1e-6), else on the float32 graph (larger step, Richardson
extrapolation; linear ops use a large step, which is exact for them). Inputs keep away
from kinks (Relu at 0, Clip bounds, MaxPool ties); MaxPool ties are checked against
PyTorch autograd instead.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
from onnx import TensorProto
from onnx.numpy_helper import from_array as tensor
from onnx_builders import evaluate, fd_vjp, make_model, to_float64
from onnx_builders import node as N

from tsgb_onnx import Explainer, UnsupportedOpError

F32 = np.float32
_W = np.random.default_rng(1234)
BIG = np.iinfo(np.int64).max


def w(*shape, scale=0.5):
    """A fixed random float32 constant."""
    return (_W.standard_normal(shape) * scale).astype(F32)


def pos(*shape):
    """A fixed random positive float32 constant (variances, divisors)."""
    return (0.5 + _W.random(shape)).astype(F32)


def i64(*values):
    return np.array(values, dtype=np.int64)


# -- input generators -----------------------------------------------------------------------
def normal(rng, shape):
    return rng.standard_normal(shape).astype(F32)


def away(*kinks, lo=-2.0, hi=2.0, margin=0.05):
    """Uniform inputs in [lo, hi] at least `margin` from every kink."""

    def make(rng, shape):
        x = rng.uniform(lo, hi, shape)
        for k in kinks:
            near = np.abs(x - k) < margin
            side = np.where(x[near] >= k, 1.0, -1.0)
            x[near] = k + side * (margin + rng.uniform(0, margin, near.sum()))
        return x.astype(F32)

    return make


def distinct(rng, shape):
    """All-distinct values (no MaxPool ties), gaps >= 3 / size."""
    n = int(np.prod(shape))
    return ((rng.permutation(n) - n / 2) * (3.0 / n)).reshape(shape).astype(F32)


def far_from_zero(rng, shape):
    return (np.sign(rng.standard_normal(shape)) * rng.uniform(0.5, 2.0, shape)).astype(F32)


def positive(rng, shape):
    return rng.uniform(0.3, 2.0, shape).astype(F32)


# -- cases ------------------------------------------------------------------------------------
@dataclass
class Spec:
    id: str
    nodes: list
    x_shape: tuple
    inits: dict = field(default_factory=dict)
    opset: int = 17
    x: Callable = normal
    op: str | None = None  # op type the case tests (must appear in the program)
    eps32: float = 1e-2  # float32 FD step (ops without a double kernel in ORT)
    y_shape: tuple | None = None  # Y's shape where ONNX's shape inference gives none

    def model(self):
        return make_model(self.nodes, self.x_shape, self.inits, self.opset, y_shape=self.y_shape)


def case(id, nodes, x_shape, inits=None, *, op=None, **kw):
    op = op or nodes[-1].op_type
    return pytest.param(Spec(id, nodes, tuple(x_shape), dict(inits or {}), op=op, **kw), id=id)


def one(id, op, x_shape, consts=(), *, opset=17, x=normal, eps32=1e-2, y_shape=None, **attrs):
    """A single `op` node: Y = op(X, *consts); None in `consts` leaves that input out."""
    names, inits = ["X"], {}
    for i, c in enumerate(consts):
        if c is None:
            names.append("")
        else:
            names.append(f"c{i}")
            inits[f"c{i}"] = c
    return case(
        id,
        [N(op, names, ["Y"], **attrs)],
        x_shape,
        inits,
        opset=opset,
        x=x,
        eps32=eps32,
        y_shape=y_shape,
    )


def then_scale(id, nodes, x_shape, inits=None, **kw):
    """`nodes` end in tensor T; Y = T * K (K a constant of T's shape), so a trailing
    Softmax / Identity is not cut from the graph."""
    inits = dict(inits or {})
    op = kw.pop("op", nodes[-1].op_type)
    y_shape = kw.pop("y_shape", x_shape)
    inits["K"] = w(*y_shape, scale=1.0)
    return case(id, list(nodes) + [N("Mul", ["T", "K"], ["Y"])], x_shape, inits, op=op, **kw)


S4 = (2, 3, 5, 5)
LIN = 0.5  # float32 FD step for linear ops (Conv, pools): the quotient is exact for any step

CONV = [
    one(
        "conv1d_stride_asym_pads",
        "Conv",
        (2, 3, 9),
        [w(4, 3, 3)],
        eps32=LIN,
        strides=[2],
        pads=[1, 2],
    ),
    one(
        "conv1d_group2_dilation",
        "Conv",
        (1, 4, 10),
        [w(4, 2, 3)],
        eps32=LIN,
        group=2,
        dilations=[2],
        pads=[1, 1],
    ),
    one("conv2d_bias", "Conv", S4, [w(4, 3, 3, 3), w(4)], eps32=LIN, pads=[1, 1, 1, 1]),
    one(
        "conv2d_strides_dilations_asym_pads",
        "Conv",
        (1, 3, 7, 6),
        [w(2, 3, 3, 2)],
        eps32=LIN,
        strides=[2, 1],
        dilations=[1, 2],
        pads=[0, 2, 1, 1],
    ),
    one(
        "conv2d_stride_leaves_edge_unused",
        "Conv",
        (1, 2, 6, 6),
        [w(3, 2, 3, 3)],
        eps32=LIN,
        strides=[2, 2],
    ),
    one(
        "conv2d_1x1_stride2_kernel_shape",
        "Conv",
        (1, 3, 5, 5),
        [w(2, 3, 1, 1)],
        eps32=LIN,
        strides=[2, 2],
        kernel_shape=[1, 1],
    ),
    one(
        "conv2d_same_upper",
        "Conv",
        (1, 3, 6, 6),
        [w(2, 3, 3, 3)],
        eps32=LIN,
        strides=[2, 2],
        auto_pad="SAME_UPPER",
    ),
    one(
        "conv2d_same_lower",
        "Conv",
        (1, 3, 6, 6),
        [w(2, 3, 3, 3)],
        eps32=LIN,
        strides=[2, 2],
        auto_pad="SAME_LOWER",
    ),
    one(
        "conv2d_same_upper_k4",
        "Conv",
        (1, 2, 5, 5),
        [w(2, 2, 4, 4)],
        eps32=LIN,
        auto_pad="SAME_UPPER",
    ),
    one(
        "conv2d_same_lower_k4",
        "Conv",
        (1, 2, 5, 5),
        [w(2, 2, 4, 4)],
        eps32=LIN,
        auto_pad="SAME_LOWER",
    ),
    one(
        "conv2d_valid",
        "Conv",
        (1, 3, 6, 7),
        [w(2, 3, 3, 3)],
        eps32=LIN,
        strides=[2, 2],
        auto_pad="VALID",
    ),
    one(
        "conv2d_group2",
        "Conv",
        (1, 4, 5, 5),
        [w(6, 2, 3, 3), w(6)],
        eps32=LIN,
        group=2,
        pads=[1, 1, 1, 1],
    ),
    one(
        "conv2d_depthwise_m1",
        "Conv",
        S4,
        [w(3, 1, 3, 3), w(3)],
        eps32=LIN,
        group=3,
        pads=[1, 1, 1, 1],
    ),
    one(
        "conv2d_depthwise_m2",
        "Conv",
        (1, 3, 5, 5),
        [w(6, 1, 3, 3)],
        eps32=LIN,
        group=3,
        strides=[2, 2],
        pads=[1, 0, 1, 1],
    ),
    # (ONNX Runtime's Conv rejects dilations with auto_pad SAME_*: no such case here)
    one(
        "conv2d_pads_exceed_kernel",
        "Conv",
        (1, 2, 4, 4),
        [w(2, 2, 2, 2)],
        eps32=LIN,
        pads=[2, 3, 3, 2],
        strides=[2, 3],
    ),
    one(
        "conv3d",
        "Conv",
        (1, 2, 4, 5, 5),
        [w(3, 2, 2, 3, 3), w(3)],
        eps32=LIN,
        strides=[1, 2, 1],
        pads=[0, 1, 1, 1, 0, 1],
    ),
    one(
        "conv3d_depthwise_dilated",
        "Conv",
        (1, 2, 4, 5, 5),
        [w(2, 1, 2, 2, 2)],
        eps32=LIN,
        group=2,
        dilations=[1, 2, 2],
    ),
    # strided depthwise: the compiled adjoint spreads the signal onto the stride grid
    one(
        "conv1d_depthwise_strided",
        "Conv",
        (1, 2, 11),
        [w(2, 1, 3)],
        eps32=LIN,
        group=2,
        strides=[3],
        pads=[2, 1],
    ),
    one(
        "conv3d_depthwise_strided",
        "Conv",
        (1, 2, 5, 5, 4),
        [w(4, 1, 2, 3, 2)],
        eps32=LIN,
        group=2,
        strides=[2, 2, 3],
        dilations=[1, 1, 2],
        pads=[1, 0, 1, 0, 1, 1],
    ),
]

MAXPOOL = [
    one("maxpool_k2s2", "MaxPool", (2, 3, 6, 6), x=distinct, kernel_shape=[2, 2], strides=[2, 2]),
    one("maxpool_k3s1_overlap", "MaxPool", S4, x=distinct, kernel_shape=[3, 3]),
    one(
        "maxpool_pads_strides",
        "MaxPool",
        S4,
        x=distinct,
        kernel_shape=[3, 3],
        strides=[2, 2],
        pads=[1, 1, 1, 1],
    ),
    one(
        "maxpool_asym_pads",
        "MaxPool",
        (1, 2, 5, 6),
        x=distinct,
        kernel_shape=[3, 2],
        strides=[2, 2],
        pads=[1, 0, 0, 1],
    ),
    one(
        "maxpool_dilations",
        "MaxPool",
        (1, 2, 7, 7),
        x=distinct,
        kernel_shape=[2, 2],
        dilations=[2, 2],
    ),
    one(
        "maxpool_ceil",
        "MaxPool",
        (1, 2, 6, 6),
        x=distinct,
        kernel_shape=[3, 3],
        strides=[2, 2],
        ceil_mode=1,
    ),
    one(
        "maxpool_ceil_pads",
        "MaxPool",
        (1, 2, 6, 7),
        x=distinct,
        kernel_shape=[3, 3],
        strides=[2, 2],
        pads=[1, 1, 1, 1],
        ceil_mode=1,
    ),
    one(
        "maxpool_same_upper",
        "MaxPool",
        (1, 2, 5, 5),
        x=distinct,
        kernel_shape=[3, 3],
        strides=[2, 2],
        auto_pad="SAME_UPPER",
    ),
    one(
        "maxpool_same_lower",
        "MaxPool",
        (1, 2, 6, 6),
        x=distinct,
        kernel_shape=[2, 2],
        auto_pad="SAME_LOWER",
    ),
    one(
        "maxpool_same_upper_dilated",
        "MaxPool",
        (1, 2, 6, 6),
        x=distinct,
        kernel_shape=[2, 2],
        strides=[2, 2],
        dilations=[2, 2],
        auto_pad="SAME_UPPER",
    ),
    one("maxpool_1d", "MaxPool", (2, 3, 9), x=distinct, kernel_shape=[3], strides=[2], pads=[1, 1]),
    one(
        "maxpool_3d",
        "MaxPool",
        (1, 2, 4, 4, 5),
        x=distinct,
        kernel_shape=[2, 2, 3],
        strides=[2, 2, 2],
        pads=[0, 0, 1, 0, 0, 1],
    ),
    case(
        "maxpool_with_indices_output",
        [N("MaxPool", ["X"], ["Y", "I"], kernel_shape=[2, 2], strides=[2, 2])],
        (1, 2, 4, 4),
        x=distinct,
    ),
]

AVGPOOL = [
    one(
        "avgpool_k2s2", "AveragePool", (2, 3, 6, 6), eps32=LIN, kernel_shape=[2, 2], strides=[2, 2]
    ),
    one(
        "avgpool_pads_cip0",
        "AveragePool",
        S4,
        eps32=LIN,
        kernel_shape=[3, 3],
        strides=[2, 2],
        pads=[1, 1, 1, 1],
        count_include_pad=0,
    ),
    one(
        "avgpool_pads_cip1",
        "AveragePool",
        S4,
        eps32=LIN,
        kernel_shape=[3, 3],
        strides=[2, 2],
        pads=[1, 1, 1, 1],
        count_include_pad=1,
    ),
    one(
        "avgpool_asym_pads_cip0",
        "AveragePool",
        (1, 2, 5, 6),
        eps32=LIN,
        kernel_shape=[3, 3],
        pads=[0, 1, 2, 1],
        count_include_pad=0,
    ),
    one(
        "avgpool_asym_pads_cip1",
        "AveragePool",
        (1, 2, 5, 6),
        eps32=LIN,
        kernel_shape=[3, 3],
        pads=[0, 1, 2, 1],
        count_include_pad=1,
    ),
    one(
        "avgpool_ceil",
        "AveragePool",
        (1, 2, 6, 6),
        eps32=LIN,
        kernel_shape=[3, 3],
        strides=[2, 2],
        ceil_mode=1,
    ),
    one(
        "avgpool_ceil_cip1",
        "AveragePool",
        (1, 2, 6, 6),
        eps32=LIN,
        kernel_shape=[3, 3],
        strides=[2, 2],
        ceil_mode=1,
        count_include_pad=1,
    ),
    one(
        "avgpool_ceil_pads_cip0",
        "AveragePool",
        (1, 2, 6, 7),
        eps32=LIN,
        kernel_shape=[3, 3],
        strides=[2, 2],
        pads=[1, 1, 1, 1],
        ceil_mode=1,
        count_include_pad=0,
    ),
    one(
        "avgpool_ceil_pads_cip1",
        "AveragePool",
        (1, 2, 6, 7),
        eps32=LIN,
        kernel_shape=[3, 3],
        strides=[2, 2],
        pads=[1, 1, 1, 1],
        ceil_mode=1,
        count_include_pad=1,
    ),
    one(
        "avgpool_same_upper",
        "AveragePool",
        (1, 2, 5, 5),
        eps32=LIN,
        kernel_shape=[2, 2],
        strides=[2, 2],
        auto_pad="SAME_UPPER",
    ),
    one(
        "avgpool_same_lower_cip1",
        "AveragePool",
        (1, 2, 5, 6),
        eps32=LIN,
        kernel_shape=[3, 2],
        strides=[2, 2],
        auto_pad="SAME_LOWER",
        count_include_pad=1,
    ),
    one(
        "avgpool_1d",
        "AveragePool",
        (2, 3, 9),
        eps32=LIN,
        kernel_shape=[3],
        strides=[2],
        pads=[1, 1],
        count_include_pad=1,
    ),
    one(
        "avgpool_3d",
        "AveragePool",
        (1, 2, 4, 4, 5),
        eps32=LIN,
        kernel_shape=[2, 2, 3],
        strides=[2, 2, 1],
        pads=[0, 1, 1, 0, 0, 1],
    ),
    one(
        "avgpool_dilations_opset19",
        "AveragePool",
        (1, 2, 7, 7),
        opset=19,
        eps32=LIN,
        kernel_shape=[2, 2],
        dilations=[2, 2],
        strides=[1, 2],
    ),
    one("global_avgpool_2d", "GlobalAveragePool", S4, eps32=LIN),
    one("global_avgpool_3d", "GlobalAveragePool", (1, 2, 3, 3, 4), eps32=LIN),
    one("global_avgpool_1d", "GlobalAveragePool", (2, 3, 7), eps32=LIN),
]

REDUCE = [
    one("reducemean_axes_keepdims1", "ReduceMean", S4, axes=[2, 3], keepdims=1),
    one("reducemean_axis1_keepdims0", "ReduceMean", S4, axes=[1], keepdims=0),
    one("reducemean_neg_axis", "ReduceMean", S4, axes=[-1], keepdims=0),
    one("reducemean_all", "ReduceMean", S4, keepdims=0),
    one("reducemean_opset18_axes_input", "ReduceMean", S4, [i64(1, -1)], opset=18, keepdims=1),
    one(
        "reducemean_opset18_axes_input_keepdims0",
        "ReduceMean",
        S4,
        [i64(0, 2)],
        opset=18,
        keepdims=0,
    ),
    one("reducemean_opset18_empty_axes_input", "ReduceMean", S4, [i64()], opset=18, keepdims=0),
    one("reducemean_opset18_no_axes", "ReduceMean", S4, opset=18, keepdims=1),
    one("reducemean_opset18_noop_empty_axes", "ReduceMean", S4, opset=18, noop_with_empty_axes=1),
    one("reducesum_opset13_axes_input", "ReduceSum", S4, [i64(2)], opset=13, keepdims=0),
    one("reducesum_opset11_attr", "ReduceSum", S4, opset=11, axes=[1, 3]),
]

NORM = [
    one(
        "batchnorm_4d", "BatchNormalization", (2, 3, 4, 4), [w(3), w(3), w(3), pos(3)], epsilon=1e-3
    ),
    one("batchnorm_2d", "BatchNormalization", (4, 3), [w(3), w(3), w(3), pos(3)]),
    one("batchnorm_3d_input", "BatchNormalization", (2, 3, 6), [w(3), w(3), w(3), pos(3)]),
    one("lrn_size3", "LRN", (2, 5, 3, 3), size=3, alpha=0.5, beta=0.75),
    one("lrn_size5_default_alpha", "LRN", (1, 6, 2, 2), size=5),
    one("instancenorm_4d", "InstanceNormalization", (2, 3, 4, 4), [w(3) + 1, w(3)]),
    one("instancenorm_3d", "InstanceNormalization", (2, 3, 6), [w(3) + 1, w(3)], epsilon=1e-3),
]

GEMM = [
    one("gemm_plain", "Gemm", (3, 4), [w(4, 5)]),
    one("gemm_alpha_beta_bias_vec", "Gemm", (3, 4), [w(4, 5), w(5)], alpha=0.7, beta=1.3),
    one("gemm_transB_bias_row", "Gemm", (3, 4), [w(5, 4), w(1, 5)], transB=1),
    one("gemm_transA_bias_col", "Gemm", (4, 3), [w(4, 5), w(3, 1)], transA=1, alpha=1.5),
    one("gemm_transA_transB_scalar_bias", "Gemm", (4, 3), [w(5, 4), w(1)], transA=1, transB=1),
    case(
        "gemm_x_is_B",
        [N("Gemm", ["A", "X", "C"], ["Y"], beta=0.5)],
        (4, 5),
        {"A": w(3, 4), "C": w(5)},
    ),
    case(
        "gemm_x_is_B_transB_alpha",
        [N("Gemm", ["A", "X"], ["Y"], transB=1, alpha=2.0)],
        (5, 4),
        {"A": w(3, 4)},
    ),
    case(
        "gemm_x_is_B_transA_transB",
        [N("Gemm", ["A", "X"], ["Y"], transA=1, transB=1)],
        (5, 4),
        {"A": w(4, 3)},
    ),
    case(
        "gemm_x_is_B_transA",
        [N("Gemm", ["A", "X"], ["Y"], transA=1, alpha=0.5)],
        (4, 5),
        {"A": w(4, 3)},
    ),
    case("gemm_both_operands_x", [N("Gemm", ["X", "X"], ["Y"], transB=1, alpha=0.8)], (3, 4)),
    case(
        "gemm_bias_from_x",
        [
            N("ReduceSum", ["X", "ax"], ["C"], keepdims=1),
            N("Gemm", ["X", "W", "C"], ["Y"], beta=0.5),
        ],
        (3, 4),
        {"ax": i64(1), "W": w(4, 5)},
    ),
]

MATMUL = [
    one("matmul_2d", "MatMul", (3, 4), [w(4, 5)]),
    case("matmul_2d_x_right", [N("MatMul", ["A", "X"], ["Y"])], (3, 4), {"A": w(2, 3)}),
    one("matmul_3d_batched", "MatMul", (2, 3, 4), [w(2, 4, 5)]),
    one("matmul_3d_by_2d", "MatMul", (2, 3, 4), [w(4, 5)]),
    one("matmul_x_broadcast_over_batch", "MatMul", (3, 4), [w(2, 4, 5)]),
    one("matmul_4d_broadcast_both", "MatMul", (2, 1, 3, 4), [w(3, 4, 2)]),
    one("matmul_1d_left", "MatMul", (4,), [w(4, 5)]),
    case("matmul_1d_right", [N("MatMul", ["A", "X"], ["Y"])], (4,), {"A": w(3, 4)}),
    one("matmul_1d_left_batched", "MatMul", (4,), [w(2, 4, 5)]),
    case("matmul_batched_by_1d_right", [N("MatMul", ["A", "X"], ["Y"])], (4,), {"A": w(2, 3, 4)}),
    case("matmul_1d_dot_self", [N("MatMul", ["X", "X"], ["Y"])], (4,)),
    case(
        "matmul_x_by_xT", [N("Transpose", ["X"], ["XT"]), N("MatMul", ["X", "XT"], ["Y"])], (3, 4)
    ),
    case(
        "matmul_batched_both_from_x_broadcast",
        [
            N("Slice", ["X", "s0", "e0", "a0"], ["X0"]),  # [1, 3, 4]
            N("Transpose", ["X0"], ["X0T"], perm=[0, 2, 1]),
            N("MatMul", ["X", "X0T"], ["Y"]),
        ],
        (2, 3, 4),
        {"s0": i64(0), "e0": i64(1), "a0": i64(0)},
    ),
]

ACT = [
    one("relu", "Relu", S4, x=away(0.0)),
    one("clip_min_only", "Clip", S4, [np.array(-0.3, F32)], x=away(-0.3)),
    one("clip_both", "Clip", S4, [np.array(-0.3, F32), np.array(0.4, F32)], x=away(-0.3, 0.4)),
    one("clip_max_only", "Clip", S4, [None, np.array(0.4, F32)], x=away(0.4)),
    one("clip_opset6_attrs_both", "Clip", S4, opset=6, x=away(-0.3, 0.4), min=-0.3, max=0.4),
    one("clip_opset6_attr_min_only", "Clip", S4, opset=6, x=away(-0.3), min=-0.3),
    one("leaky_relu_default", "LeakyRelu", S4, x=away(0.0)),
    one("leaky_relu_alpha", "LeakyRelu", S4, x=away(0.0), alpha=0.3),
    one("prelu_per_channel", "PRelu", S4, [w(3, 1, 1)], x=away(0.0)),
    one("prelu_scalar_slope", "PRelu", S4, [w(1)], x=away(0.0)),
    one("prelu_full_slope", "PRelu", (2, 3, 4), [w(3, 4)], x=away(0.0)),
    case(
        "prelu_slope_from_x",  # the slope receives a signal too
        [N("ReduceMean", ["X"], ["M"], axes=[0, 2, 3], keepdims=1), N("PRelu", ["X", "M"], ["Y"])],
        S4,
        x=away(0.0),
    ),
    one("sigmoid", "Sigmoid", S4),
    one("tanh", "Tanh", S4),
    one("hard_sigmoid_default", "HardSigmoid", S4, x=away(-2.5, 2.5, lo=-4, hi=4)),
    one(
        "hard_sigmoid_alpha_beta",
        "HardSigmoid",
        S4,
        x=away(-1.2, 0.8, lo=-3, hi=3),
        alpha=0.5,
        beta=0.6,
    ),
    one("hard_swish", "HardSwish", S4, x=away(-3.0, 3.0, lo=-5, hi=5)),
    then_scale("softmax_axis1", [N("Softmax", ["X"], ["T"], axis=1)], S4),
    then_scale("softmax_axis_last", [N("Softmax", ["X"], ["T"], axis=-1)], S4),
    then_scale("softmax_opset11_coerced_axis1", [N("Softmax", ["X"], ["T"], axis=1)], S4, opset=11),
    then_scale("softmax_opset11_coerced_axis2", [N("Softmax", ["X"], ["T"], axis=2)], S4, opset=11),
    then_scale("softmax_opset11_default_axis", [N("Softmax", ["X"], ["T"])], S4, opset=11),
    then_scale("logsoftmax_axis1", [N("LogSoftmax", ["X"], ["T"], axis=1)], S4),
    then_scale("logsoftmax_axis_last", [N("LogSoftmax", ["X"], ["T"])], S4),
    then_scale(
        "logsoftmax_opset11_coerced_axis1", [N("LogSoftmax", ["X"], ["T"], axis=1)], S4, opset=11
    ),
    then_scale("logsoftmax_opset11_default_axis", [N("LogSoftmax", ["X"], ["T"])], S4, opset=11),
    then_scale(
        "logsoftmax_opset11_coerced_axis2", [N("LogSoftmax", ["X"], ["T"], axis=2)], S4, opset=11
    ),
]

_SL = {"s0": i64(0), "e0": i64(1), "a0": i64(1)}  # X[:, 0:1]
ARITH = [
    one("add_const_broadcast", "Add", S4, [w(3, 1, 1)]),
    case("add_x_broadcast", [N("Add", ["C", "X"], ["Y"])], (3, 1), {"C": w(2, 3, 4)}),
    case(
        "add_x_and_relu_x", [N("Relu", ["X"], ["R"]), N("Add", ["X", "R"], ["Y"])], S4, x=away(0.0)
    ),
    case(
        "add_slice_broadcast_and_x",
        [N("Slice", ["X", "s0", "e0", "a0"], ["X0"]), N("Add", ["X0", "X"], ["Y"])],
        S4,
        _SL,
    ),
    one("sub_x_minus_const", "Sub", S4, [w(5)]),
    case("sub_const_minus_x_broadcast", [N("Sub", ["C", "X"], ["Y"])], (1, 4), {"C": w(3, 4)}),
    case(
        "sub_x_minus_relu_x",
        [N("Relu", ["X"], ["R"]), N("Sub", ["X", "R"], ["Y"])],
        S4,
        x=away(0.0),
    ),
    case(
        "sub_slice_minus_x_broadcast",
        [N("Slice", ["X", "s0", "e0", "a0"], ["X0"]), N("Sub", ["X0", "X"], ["Y"])],
        S4,
        _SL,
    ),
    one("mul_const_broadcast", "Mul", S4, [w(3, 1, 1)]),
    case("mul_const_by_x_broadcast", [N("Mul", ["C", "X"], ["Y"])], (3, 1), {"C": w(2, 3, 4)}),
    case("mul_x_sigmoid_x", [N("Sigmoid", ["X"], ["G"]), N("Mul", ["X", "G"], ["Y"])], S4),
    case("mul_x_x", [N("Mul", ["X", "X"], ["Y"])], S4),
    case(
        "mul_slice_broadcast_and_x",
        [N("Slice", ["X", "s0", "e0", "a0"], ["X0"]), N("Mul", ["X", "X0"], ["Y"])],
        S4,
        _SL,
    ),
    one("div_x_by_const", "Div", S4, [pos(5)]),
    case(
        "div_const_by_x_broadcast",
        [N("Div", ["C", "X"], ["Y"])],
        (3, 1),
        {"C": w(2, 3, 4)},
        x=far_from_zero,
    ),
    case(
        "div_x_by_sigmoid_of_slice",
        [
            N("Slice", ["X", "s0", "e0", "a0"], ["X0"]),
            N("Sigmoid", ["X0"], ["G"]),
            N("Div", ["X", "G"], ["Y"]),
        ],
        S4,
        _SL,
    ),
    case(
        "div_sigmoid_x_by_x",
        [N("Sigmoid", ["X"], ["G"]), N("Div", ["G", "X"], ["Y"])],
        S4,
        x=far_from_zero,
    ),
    case(
        "sum_three_with_broadcast",
        [N("Relu", ["X"], ["R"]), N("Sum", ["X", "R", "C"], ["Y"])],
        S4,
        {"C": w(3, 1, 1)},
        x=away(0.0),
    ),
    one("sum_single", "Sum", S4),
    case("sum_x_broadcast", [N("Sum", ["C", "X", "X"], ["Y"])], (3, 1), {"C": w(2, 3, 4)}),
    one("neg", "Neg", S4),
]

PLUMB = [
    case(
        "concat_axis1_x_relu",
        [N("Relu", ["X"], ["R"]), N("Concat", ["X", "R"], ["Y"], axis=1)],
        S4,
        x=away(0.0),
    ),
    case(
        "concat_axis_neg1_sigmoid_x",
        [N("Sigmoid", ["X"], ["G"]), N("Concat", ["G", "X"], ["Y"], axis=-1)],
        S4,
    ),
    case("concat_const_and_x", [N("Concat", ["C", "X"], ["Y"], axis=1)], S4, {"C": w(2, 2, 5, 5)}),
    case(
        "concat_three_uneven_axis2",
        [
            N("Slice", ["X", "s0", "e0", "a0"], ["X0"]),
            N("Tanh", ["X"], ["T"]),
            N("Concat", ["X0", "X", "T"], ["Y"], axis=2),
        ],
        S4,
        {"s0": i64(1), "e0": i64(3), "a0": i64(2)},
    ),
    case(
        "split_input_middle_unused",
        [N("Split", ["X", "sp"], ["A", "B", "C"], axis=1), N("Concat", ["A", "C"], ["Y"], axis=1)],
        (2, 5, 3, 3),
        {"sp": i64(1, 2, 2)},
        op="Split",
    ),
    case(
        "split_opset13_input_last_unused_reordered",
        [
            N("Split", ["X", "sp"], ["A", "B", "C"], axis=-1),
            N("Concat", ["B", "A"], ["Y"], axis=-1),
        ],
        (2, 3, 5),
        {"sp": i64(2, 1, 2)},
        opset=13,
        op="Split",
    ),
    case(
        "split_opset11_attr_first_unused",
        [
            N("Split", ["X"], ["A", "B", "C"], axis=0, split=[1, 2, 1]),
            N("Concat", ["C", "B"], ["Y"], axis=0),
        ],
        (4, 3, 2),
        opset=11,
        op="Split",
    ),
    case(
        "split_opset13_even_no_sizes",
        [N("Split", ["X"], ["A", "B", "C"], axis=1), N("Concat", ["A", "C"], ["Y"], axis=1)],
        (2, 6, 2),
        opset=13,
        op="Split",
    ),
    case(
        "split_opset18_num_outputs_uneven",
        [
            N("Split", ["X"], ["A", "B", "C"], axis=2, num_outputs=3),
            N("Concat", ["A", "C"], ["Y"], axis=2),
        ],
        (2, 2, 7),
        opset=18,
        op="Split",
    ),
    one("slice_negative_start", "Slice", S4, [i64(-3), i64(BIG), i64(2)]),
    one("slice_step2_two_axes", "Slice", S4, [i64(0, 1), i64(5, 5), i64(2, 3), i64(2, 2)]),
    one("slice_step_minus1_reverse", "Slice", S4, [i64(-1), i64(-BIG), i64(3), i64(-1)]),
    one("slice_step_minus2_neg_axis", "Slice", S4, [i64(4), i64(0), i64(-1), i64(-2)]),
    one("slice_default_axes", "Slice", S4, [i64(1, 1), i64(2, 3)]),
    one(
        "slice_clamped_mixed",
        "Slice",
        S4,
        [i64(-10, 1, 3), i64(10, -1, 0), i64(1, 2, 3), i64(1, 1, -1)],
    ),
    one("slice_axes_out_of_order", "Slice", S4, [i64(-2, 0), i64(0, 2), i64(3, -3), i64(-1, 1)]),
    one("slice_opset9_attrs", "Slice", S4, opset=9, starts=[1, -4], ends=[3, 100], axes=[1, 3]),
    one("flatten_axis1", "Flatten", S4),
    one("flatten_axis0", "Flatten", S4, axis=0),
    one("flatten_axis_neg1", "Flatten", S4, axis=-1),
    one("flatten_axis_rank", "Flatten", S4, axis=4),
    one("reshape", "Reshape", S4, [i64(0, -1, 5)]),
    one("squeeze_axes_input", "Squeeze", (2, 1, 4, 1), [i64(1)]),
    one("squeeze_all", "Squeeze", (2, 1, 4, 1)),
    one("squeeze_opset11_attr", "Squeeze", (2, 1, 4, 1), opset=11, axes=[-1]),
    one("unsqueeze_axes_input", "Unsqueeze", (2, 3), [i64(0, -1)]),
    one("unsqueeze_opset11_attr", "Unsqueeze", (2, 3), opset=11, axes=[1]),
    one("transpose_perm", "Transpose", S4, perm=[0, 2, 3, 1]),
    one("transpose_default_perm", "Transpose", (2, 3, 4)),
    one("pad_constant_value", "Pad", S4, [i64(0, 0, 1, 2, 0, 0, 2, 1), np.array(0.5, F32)]),
    one("pad_constant_channels", "Pad", S4, [i64(0, 1, 0, 0, 0, 2, 0, 0)]),
    one("pad_reflect", "Pad", S4, [i64(0, 0, 2, 1, 0, 0, 1, 3)], mode="reflect"),
    one("pad_reflect_max", "Pad", S4, [i64(0, 0, 4, 0, 0, 0, 4, 4)], mode="reflect"),
    one("pad_edge", "Pad", S4, [i64(0, 0, 3, 0, 0, 0, 1, 6)], mode="edge"),
    one("pad_wrap_opset19", "Pad", S4, [i64(0, 0, 2, 1, 0, 0, 1, 3)], opset=19, mode="wrap"),
    one("pad_wrap_more_than_dim", "Pad", (2, 3, 4), [i64(0, 0, 6, 0, 0, 9)], opset=19, mode="wrap"),
    one("pad_negative_constant", "Pad", S4, [i64(0, 0, -1, 2, 0, 0, 1, -2)]),
    one("pad_negative_reflect", "Pad", S4, [i64(0, 0, -1, 2, 0, 0, 2, -1)], mode="reflect"),
    one("pad_negative_edge", "Pad", S4, [i64(0, 0, 2, -2, 0, 0, -1, 3)], mode="edge"),
    one(
        "pad_opset18_axes", "Pad", S4, [i64(1, 0, 2, 1), None, i64(2, -1)], opset=18, mode="reflect"
    ),
    one("pad_opset18_axes_constant", "Pad", S4, [i64(1, 2), np.array(-1.0, F32), i64(1)], opset=18),
    one("pad_opset10_attrs", "Pad", S4, opset=10, pads=[0, 0, 1, 2, 0, 0, 2, 1], mode="edge"),
    case("concat_single_input", [N("Concat", ["X"], ["Y"], axis=0)], S4),
    case(
        "constant_nodes_as_inputs",  # Constant nodes (not initializers) feed Clip, Pad, Reshape
        [
            N("Constant", [], ["lo"], value=tensor(np.array(-0.3, F32))),
            N("Constant", [], ["pads"], value=tensor(i64(0, 0, 1, 0, 0, 0, 0, 2))),
            N("Constant", [], ["shape"], value=tensor(i64(2, -1))),
            N("Clip", ["X", "lo"], ["C"]),
            N("Pad", ["C", "pads"], ["P"], mode="reflect"),
            N("Reshape", ["P", "shape"], ["Y"]),
        ],
        S4,
        x=away(-0.3),
        op="Clip",
    ),
    then_scale("identity", [N("Identity", ["X"], ["T"])], S4),
    then_scale("dropout", [N("Dropout", ["X"], ["T"])], S4),
    then_scale(
        "dropout_ratio_and_mask",
        [N("Dropout", ["X", "r"], ["T", "M"])],
        S4,
        {"r": np.array(0.3, F32)},
    ),
    case(
        "cast_double_tanh_cast_float",
        [
            N("Cast", ["X"], ["D"], to=TensorProto.DOUBLE),
            N("Tanh", ["D"], ["T"]),
            N("Cast", ["T"], ["Y"], to=TensorProto.FLOAT),
        ],
        S4,
    ),
    case(
        "integer_side_path_needs_no_rule",  # ArgMax has no rule but carries no signal
        [
            N("ArgMax", ["X"], ["I"], axis=1, keepdims=1),
            N("Cast", ["I"], ["F"], to=TensorProto.FLOAT),
            N("Mul", ["X", "F"], ["Y"]),
        ],
        S4,
        x=distinct,
    ),
    case(
        "split_unused_output_feeds_dead_branch",
        [
            N("Split", ["X", "sp"], ["A", "B", "C"], axis=1),
            N("Relu", ["B"], ["dead"]),
            N("Concat", ["A", "C"], ["Y"], axis=1),
        ],
        (2, 5, 3, 3),
        {"sp": i64(2, 1, 2)},
        op="Split",
    ),
    then_scale("cast_float_to_float", [N("Cast", ["X"], ["T"], to=TensorProto.FLOAT)], S4),
]

# -- element-wise functions, selections, normalisations over trailing axes -------------------
WIDE = away(lo=-30.0, hi=30.0)  # reaches the clamped (overflow-safe) branches
ELEMENTWISE = [
    one("erf", "Erf", S4),
    one("gelu_none", "Gelu", S4, opset=20),
    one("gelu_tanh", "Gelu", S4, opset=20, approximate="tanh"),
    one("gelu_tanh_wide", "Gelu", S4, opset=20, x=away(lo=-12.0, hi=12.0), approximate="tanh"),
    one("softplus", "Softplus", S4),
    one("softplus_wide", "Softplus", S4, x=WIDE),
    one("mish", "Mish", S4, opset=18),
    one("mish_wide", "Mish", S4, opset=18, x=WIDE),
    one("elu", "Elu", S4, x=away(0.0), alpha=0.7),
    one("selu_default", "Selu", S4, x=away(0.0)),
    one("selu_alpha_gamma", "Selu", S4, x=away(0.0), alpha=1.3, gamma=0.8),
    one("celu", "Celu", S4, x=away(0.0), alpha=1.5),
    one("exp", "Exp", S4),
    one("log", "Log", S4, x=positive),
    one("sqrt", "Sqrt", S4, x=positive),
    one("reciprocal", "Reciprocal", S4, x=far_from_zero),
    one("abs", "Abs", S4, x=far_from_zero),
    one("pow_cube", "Pow", S4, [np.array(3.0, F32)]),
    one("pow_square", "Pow", S4, [np.array(2.0, F32)]),
    one("pow_sqrt", "Pow", S4, [np.array(0.5, F32)], x=positive),
    one("pow_int64_exponent", "Pow", S4, [np.array(3, np.int64)]),
    one("pow_broadcast_exponent", "Pow", (3, 5), [np.full((1, 1, 1), -1.5, F32)], x=positive),
    case("pow_const_base", [N("Pow", ["C", "X"], ["Y"])], S4, {"C": np.array(1.7, F32)}),
    case("max_x_const_broadcast", [N("Max", ["X", "C"], ["Y"])], S4, {"C": w(3, 1, 1)}),
    case("max_single_input", [N("Tanh", ["X"], ["T"]), N("Max", ["T"], ["Y"])], S4, op="Max"),
    case(
        "min_three_broadcast",
        [N("Tanh", ["X"], ["T"]), N("Min", ["X", "T", "C"], ["Y"])],
        S4,
        {"C": w(5)},
        x=away(0.0),
    ),
    case(
        "max_x_broadcast_against_sigmoid",
        [N("Sigmoid", ["X"], ["G"]), N("Max", ["S", "G"], ["Y"])],
        S4,
        {"S": w(2, 3, 5, 5)},
    ),
    case(
        "where_condition_from_comparisons",  # bool ops are off the float path: no rule needed
        [
            N("Tanh", ["X"], ["T"]),
            N("Greater", ["X", "hi"], ["above"]),
            N("LessOrEqual", ["X", "lo"], ["below"]),
            N("Or", ["above", "below"], ["outside"]),
            N("Not", ["outside"], ["inside"]),
            N("GreaterOrEqual", ["X", "X"], ["always"]),
            N("Equal", ["X", "X"], ["same"]),
            N("Less", ["X", "hi"], ["under"]),
            N("And", ["always", "same"], ["both"]),
            N("And", ["both", "under"], ["all3"]),
            N("And", ["inside", "all3"], ["cond"]),
            N("Where", ["cond", "X", "T"], ["Y"]),
        ],
        S4,
        {"hi": np.array(0.5, F32), "lo": np.array(-0.4, F32)},
        x=away(0.5, -0.4),
    ),
    case(
        "where_broadcast_const_branch",
        [N("Greater", ["X", "z"], ["M"]), N("Where", ["M", "C", "X"], ["Y"])],
        (3, 1, 5),
        {"z": np.array(0.0, F32), "C": w(2, 3, 4, 5)},
        x=away(0.0),
    ),
    case(
        "where_const_condition",
        [N("Sigmoid", ["X"], ["G"]), N("Where", ["M", "G", "X"], ["Y"])],
        S4,
        {"M": np.random.default_rng(3).random((3, 1, 5)) < 0.5},
    ),
    one("expand_broadcast", "Expand", (3, 1, 5), [i64(2, 3, 4, 5)]),
    one("expand_keeps_larger_dims", "Expand", (2, 3, 4), [i64(3, 1)]),
    one("tile", "Tile", (2, 3, 4), [i64(2, 1, 3)]),
    one("tile_batch_axis", "Tile", (2, 3), [i64(3, 1)]),
    one("layernorm_last_axis", "LayerNormalization", (2, 3, 5), [w(5) + 1, w(5)]),
    one(
        "layernorm_axis1_no_bias",
        "LayerNormalization",
        S4,
        [w(3, 5, 5) + 1],
        axis=1,
        epsilon=1e-3,
    ),
    case(
        "layernorm_mean_and_invstd_outputs",
        [
            N("LayerNormalization", ["X", "s", "b"], ["T", "M", "V"], axis=2),
            N("Mul", ["T", "K"], ["A"]),
            N("Add", ["A", "M"], ["A2"]),
            N("Mul", ["A2", "V"], ["Y"]),
        ],
        (2, 3, 4),
        {"s": w(4) + 1, "b": w(4), "K": w(2, 3, 4)},
        op="LayerNormalization",
    ),
    case(
        "layernorm_scale_and_bias_from_x",
        [
            N("ReduceMean", ["X"], ["S"], axes=[0, 1], keepdims=0),
            N("ReduceMax", ["X"], ["B"], axes=[0, 1], keepdims=0),
            N("LayerNormalization", ["X", "S", "B"], ["Y"]),
        ],
        (2, 3, 5),
        x=distinct,
    ),
    one(
        "groupnorm_opset21",
        "GroupNormalization",
        (2, 4, 3, 3),
        [w(4) + 1, w(4)],
        opset=21,
        num_groups=2,
        stash_type=11,  # the oracle's double copy computes in double (stash_type 1: float)
        y_shape=(2, 4, 3, 3),
    ),
    one(
        "groupnorm_opset21_one_group_3d",
        "GroupNormalization",
        (2, 6, 5),
        [w(6) + 1, w(6)],
        opset=21,
        num_groups=1,
        epsilon=1e-3,
        stash_type=11,
        y_shape=(2, 6, 5),
    ),
    one("rmsnorm_last_axis", "RMSNormalization", (2, 3, 5), [w(5) + 1], opset=23),
    one("rmsnorm_axis_neg2", "RMSNormalization", S4, [w(5, 5) + 1], opset=23, axis=-2),
    case(
        "rmsnorm_scale_from_x",
        [
            N("ReduceMean", ["X", "ax"], ["S"], keepdims=0),
            N("RMSNormalization", ["X", "S"], ["Y"]),
        ],
        (2, 3, 5),
        {"ax": i64(0, 1)},
        opset=23,
    ),
]

REDUCE_MORE = [
    one("reducemax_axes_keepdims1", "ReduceMax", S4, x=distinct, axes=[2, 3]),
    one("reducemax_all", "ReduceMax", S4, x=distinct, keepdims=0),
    one("reducemin_axis1_keepdims0", "ReduceMin", S4, x=distinct, axes=[1], keepdims=0),
    one("reducemin_opset18_axes_input", "ReduceMin", S4, [i64(-1, 1)], opset=18, x=distinct),
    one("reducel2_axis1", "ReduceL2", S4, axes=[1], keepdims=0),
    one("reducel2_opset18_all", "ReduceL2", S4, opset=18, keepdims=1),
    one("reducelogsumexp_last", "ReduceLogSumExp", S4, axes=[-1]),
    one("reducelogsumexp_opset18", "ReduceLogSumExp", S4, [i64(1, 2)], opset=18, keepdims=0),
    one("reducesumsquare", "ReduceSumSquare", S4, axes=[2], keepdims=0),
    one("reducel1", "ReduceL1", S4, x=far_from_zero, axes=[1, 3]),
]

_IDX = i64(0, 2, -1, 2)  # a repeat and a negative index
INDEX = [
    one("gather_const_axis1", "Gather", S4, [_IDX], axis=1),
    one("gather_scalar_index_class_token", "Gather", (2, 5, 4), [np.array(0, np.int64)], axis=1),
    one("gather_2d_indices_neg_axis", "Gather", S4, [np.array([[4, 0], [-2, 4]])], axis=-1),
    one("gather_axis0", "Gather", (5, 3), [i64(1, -1, 1)]),
    case(
        "gather_recorded_index",  # the index is a tensor of the forward pass (ArgMax)
        [
            N("ReduceSum", ["X", "ax"], ["S"], keepdims=0),
            N("ArgMax", ["S"], ["I"], axis=0, keepdims=1),
            N("Gather", ["X", "I"], ["Y"], axis=1),
        ],
        (2, 4, 3),
        {"ax": i64(0, 2)},
        x=distinct,
    ),
    one(
        "gather_elements_axis2",
        "GatherElements",
        S4,
        [np.random.default_rng(5).integers(-5, 5, (2, 3, 3, 5))],
        axis=2,
    ),
    case(
        "gather_elements_recorded_argmax",
        [
            N("ArgMax", ["X"], ["I"], axis=1, keepdims=1),
            N("GatherElements", ["X", "I"], ["Y"], axis=1),
        ],
        S4,
        x=distinct,
    ),
    one("gather_nd", "GatherND", (3, 4, 5), [np.array([[0, 1], [2, -1], [0, 1], [-3, 3]])]),
    one("gather_nd_full_index", "GatherND", (3, 4), [np.array([[0, 1], [2, -1], [0, 1]])]),
    one(
        "gather_nd_batch_dims1",
        "GatherND",
        (2, 4, 5),
        [np.array([[[1], [3], [1]], [[0], [-1], [2]]])],
        batch_dims=1,
    ),
    case(
        "gather_nd_recorded_argmax",
        [
            N("ArgMax", ["X"], ["I"], axis=1, keepdims=1),
            N("GatherND", ["X", "I"], ["Y"], batch_dims=1),
        ],
        (3, 5),
        x=distinct,
    ),
]


def _resize(id, x_shape, *, scales=None, sizes=None, opset=17, **attrs):
    inputs = ["X", "", "sc"] if scales is not None else ["X", "", "", "sz"]
    inits = {"sc": np.array(scales, F32)} if scales is not None else {"sz": i64(*sizes)}
    if opset == 10:
        inputs = ["X", "sc"]
    elif opset < 13:  # roi is a required input before opset 13
        inputs[1], inits["roi"] = "roi", np.zeros(0, F32)
    return case(id, [N("Resize", inputs, ["Y"], **attrs)], x_shape, inits, opset=opset, eps32=LIN)


RESIZE = [
    _resize("resize_nearest_default_x2", S4, scales=[1, 1, 2, 2]),
    _resize(
        "resize_nearest_asymmetric_floor",
        (1, 2, 4, 5),
        scales=[1, 1, 1.5, 2.5],
        coordinate_transformation_mode="asymmetric",
        nearest_mode="floor",
    ),
    _resize(
        "resize_nearest_down_sizes_ceil_mode",
        (1, 2, 7, 6),
        sizes=[1, 2, 4, 3],
        nearest_mode="round_prefer_ceil",
    ),
    _resize(
        "resize_nearest_align_corners_ceil",
        (1, 2, 4, 5),
        sizes=[1, 2, 7, 9],
        coordinate_transformation_mode="align_corners",
        nearest_mode="ceil",
    ),
    _resize("resize_linear_half_pixel_x2", S4, scales=[1, 1, 2, 2], mode="linear"),
    _resize(
        "resize_linear_align_corners_sizes",
        (1, 2, 5, 4),
        sizes=[1, 2, 8, 7],
        mode="linear",
        coordinate_transformation_mode="align_corners",
    ),
    _resize(
        "resize_linear_pytorch_half_pixel_down",
        (1, 2, 6, 7),
        sizes=[1, 2, 4, 1],
        mode="linear",
        coordinate_transformation_mode="pytorch_half_pixel",
    ),
    _resize(
        "resize_linear_asymmetric_fractional",
        (1, 2, 5, 4),
        scales=[1, 1, 1.5, 0.75],
        mode="linear",
        coordinate_transformation_mode="asymmetric",
    ),
    _resize(
        "resize_linear_half_pixel_symmetric",
        (1, 2, 5, 4),
        sizes=[1, 2, 8, 3],
        opset=19,
        mode="linear",
        coordinate_transformation_mode="half_pixel_symmetric",
    ),
    _resize("resize_cubic_half_pixel_x2", (1, 2, 4, 5), scales=[1, 1, 2, 2], mode="cubic"),
    _resize(
        "resize_cubic_align_corners_sizes",
        (1, 2, 5, 4),
        sizes=[1, 2, 9, 6],
        mode="cubic",
        coordinate_transformation_mode="align_corners",
    ),
    _resize(
        "resize_cubic_exclude_outside_a05",
        (1, 2, 5, 6),
        scales=[1, 1, 1.6, 1.5],
        mode="cubic",
        cubic_coeff_a=-0.5,
        exclude_outside=1,
        coordinate_transformation_mode="asymmetric",
    ),
    _resize(
        "resize_opset18_axes_scales", S4, scales=[2, 1.5], opset=18, mode="linear", axes=[2, 3]
    ),
    _resize(
        "resize_opset18_not_larger_sizes",
        (1, 2, 4, 6),
        sizes=[7, 9],
        opset=18,
        mode="linear",
        axes=[2, 3],
        keep_aspect_ratio_policy="not_larger",
    ),
    _resize("resize_opset10_nearest", (1, 2, 3, 4), scales=[1, 1, 2, 3], opset=10),
    _resize(
        "resize_opset11_tf_half_pixel_for_nn",
        (1, 2, 4, 3),
        scales=[1, 1, 2.5, 0.7],
        opset=11,
        coordinate_transformation_mode="tf_half_pixel_for_nn",
    ),
    _resize("resize_3d_input_linear", (2, 3, 5), scales=[1, 1, 1.8], mode="linear"),
    case(
        "upsample_opset9_nearest",
        [N("Upsample", ["X", "sc"], ["Y"])],
        (1, 2, 3, 4),
        {"sc": np.array([1, 1, 2, 2.5], F32)},
        opset=9,
        eps32=LIN,
    ),
]

CONTRACT = [
    case(
        "einsum_attention_scores",
        [N("Einsum", ["X", "K"], ["Y"], equation="bhqd,bhkd->bhqk")],
        (2, 3, 4, 5),
        {"K": w(2, 3, 6, 5)},
    ),
    case(
        "einsum_both_operands_from_x",
        [
            N("ReduceMean", ["X"], ["C"], axes=[2, 3], keepdims=0),
            N("Einsum", ["X", "C"], ["Y"], equation="bchw,bc->bhw"),
        ],
        S4,
    ),
    case(
        "einsum_letter_summed_in_one_operand",
        [N("Einsum", ["X", "W"], ["Y"], equation="bchw, ck -> bkh")],
        S4,
        {"W": w(3, 4)},
    ),
    case(
        "einsum_ellipsis_implicit_output",
        [N("Einsum", ["X", "W"], ["Y"], equation="...ij,jk")],
        (2, 3, 4),
        {"W": w(4, 5)},
    ),
    case("einsum_single_operand", [N("Einsum", ["X"], ["Y"], equation="bchw->bwc")], S4),
    one(
        "convtranspose_stride2_pads_output_padding",
        "ConvTranspose",
        (2, 3, 4, 4),
        [w(3, 2, 3, 3), w(2)],
        eps32=LIN,
        strides=[2, 2],
        pads=[1, 0, 1, 1],
        output_padding=[1, 0],
    ),
    one(
        "convtranspose_group_dilation",
        "ConvTranspose",
        (1, 4, 5, 5),
        [w(4, 3, 2, 2)],
        eps32=LIN,
        group=2,
        dilations=[2, 1],
    ),
    one(
        "convtranspose_same_upper",
        "ConvTranspose",
        (1, 2, 4, 5),
        [w(2, 3, 3, 3)],
        eps32=LIN,
        strides=[2, 2],
        auto_pad="SAME_UPPER",
    ),
    one(
        "convtranspose_same_lower",
        "ConvTranspose",
        (1, 2, 4, 5),
        [w(2, 3, 4, 3)],
        eps32=LIN,
        strides=[2, 2],
        auto_pad="SAME_LOWER",
    ),
    one(
        "convtranspose_output_shape",
        "ConvTranspose",
        (1, 2, 4, 4),
        [w(2, 2, 3, 3)],
        eps32=LIN,
        strides=[2, 2],
        output_shape=[9, 8],
    ),
    one("convtranspose_1d", "ConvTranspose", (2, 3, 6), [w(3, 2, 4)], eps32=LIN, strides=[3]),
]

ALL = (
    CONV
    + MAXPOOL
    + AVGPOOL
    + REDUCE
    + NORM
    + GEMM
    + MATMUL
    + ACT
    + ARITH
    + PLUMB
    + ELEMENTWISE
    + REDUCE_MORE
    + INDEX
    + RESIZE
    + CONTRACT
)


def _rng(spec: Spec):
    return np.random.default_rng(zlib.crc32(spec.id.encode()))


@pytest.mark.parametrize("spec", ALL)
def test_rule_matches_finite_differences(spec: Spec):
    model = spec.model()
    rng = _rng(spec)
    x = spec.x(rng, spec.x_shape)
    y = evaluate(model, x)
    seed = rng.standard_normal(y.shape).astype(F32)

    ex = Explainer(model, method="gradient")
    used = {s.node.op_type for s in ex.program().steps}
    assert spec.op in used, f"the program does not run the {spec.op} rule: {sorted(used)}"
    got = ex.vjp(x, seed)
    fd, in_float64 = fd_vjp(model, x, seed, eps32=spec.eps32)

    assert got.shape == x.shape
    if in_float64:  # the float64 copy computes the same function
        y64 = evaluate(to_float64(model), x.astype(np.float64))
        np.testing.assert_allclose(y64, y, rtol=1e-4, atol=1e-5 * (np.abs(y).max() + 1))
    scale = np.abs(fd).max()
    assert scale > 1e-3, "degenerate case: the gradient is zero"
    if in_float64 or spec.eps32 >= LIN:
        rtol, atol = 1e-5, 1e-7
    else:
        rtol, atol = 1e-3, 1e-5
    err = np.abs(got - fd).max()
    where = np.unravel_index(np.argmax(np.abs(got - fd)), x.shape)
    assert err <= rtol * scale + atol, (
        f"max |vjp - fd| = {err:.3g} at {where} (vjp {got[where]:.6g}, fd {fd[where]:.6g}); "
        f"max |fd| = {scale:.3g}; oracle {'float64' if in_float64 else 'float32'}"
    )


def test_every_gradient_rule_has_a_case():
    from test_quantized import STE_OPS  # piecewise constant: checked against autograd there

    from tsgb_onnx.rules.gradient import GRADIENT

    tested = {p.values[0].op for p in ALL} | STE_OPS
    assert GRADIENT.op_types() <= tested, (
        f"rules without a finite-difference case: {sorted(GRADIENT.op_types() - tested)}"
    )


# -- MaxPool ties: the signal goes to the first maximum in row-major window order --------------
TIES = [
    pytest.param(2, dict(kernel=2, stride=2, pad=0, dil=1, ceil=False), id="2d_k2s2"),
    pytest.param(2, dict(kernel=3, stride=1, pad=1, dil=1, ceil=False), id="2d_k3s1_pad1"),
    pytest.param(2, dict(kernel=3, stride=2, pad=1, dil=1, ceil=True), id="2d_k3s2_pad1_ceil"),
    pytest.param(2, dict(kernel=2, stride=1, pad=0, dil=2, ceil=False), id="2d_k2_dil2"),
    pytest.param(1, dict(kernel=3, stride=2, pad=1, dil=1, ceil=True), id="1d_k3s2_pad1_ceil"),
    pytest.param(3, dict(kernel=2, stride=1, pad=0, dil=1, ceil=False), id="3d_k2s1"),
]


@pytest.mark.parametrize("nd, p", TIES)
def test_maxpool_ties_match_torch(nd, p):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    spatial = {1: (9,), 2: (7, 7), 3: (4, 4, 5)}[nd]
    rng = np.random.default_rng(7 + nd)
    x = rng.integers(0, 3, (2, 2) + spatial).astype(F32)  # many ties
    x[(0, 0) + (slice(0, 3),) * nd] = 5.0  # an all-equal window
    k, s, d = p["kernel"], p["stride"], p["dil"]
    model = make_model(
        [
            N(
                "MaxPool",
                ["X"],
                ["Y"],
                kernel_shape=[k] * nd,
                strides=[s] * nd,
                dilations=[d] * nd,
                pads=[p["pad"]] * (2 * nd),
                ceil_mode=int(p["ceil"]),
            )
        ],
        x.shape,
    )
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
    xt = torch.tensor(x, requires_grad=True)
    yt = pool(xt, k, s, padding=p["pad"], dilation=d, ceil_mode=p["ceil"])
    y = evaluate(model, x)
    np.testing.assert_array_equal(y, yt.detach().numpy())  # same windows as ONNX Runtime
    seed = rng.standard_normal(y.shape).astype(F32)
    yt.backward(torch.tensor(seed))
    got = Explainer(model, method="gradient").vjp(x, seed)
    np.testing.assert_allclose(got, xt.grad.numpy(), rtol=1e-6, atol=1e-6)


# -- LRN with an even size: ONNX Runtime's CPU kernel rejects it, so the rule is checked
#    directly against the spec formula (window c - floor((size-1)/2) .. c + ceil((size-1)/2)).
class _FakeNode:
    def __init__(self, **attrs):
        self.attrs = attrs
        self.name, self.op_type = "lrn", "LRN"

    def attr(self, key, default=None):
        return self.attrs.get(key, default)


class _FakeFwd:
    def __init__(self, x):
        self._x = x

    def x(self, i):
        assert i == 0
        return self._x


def _lrn_spec(x, size, alpha, beta, bias):
    C = x.shape[1]
    lo, hi = (size - 1) // 2, -(-(size - 1) // 2)  # floor, ceil
    sq = np.zeros_like(x)
    for c in range(C):
        sq[:, c] = np.sum(x[:, max(0, c - lo) : min(C - 1, c + hi) + 1] ** 2, axis=1)
    return x / (bias + alpha / size * sq) ** beta


@pytest.mark.parametrize("size", [2, 4, 3])
def test_lrn_rule_matches_spec_formula(size):
    from tsgb_onnx.backends.numpy_ops import NumpyOps
    from tsgb_onnx.rules.gradient import GRADIENT

    rng = np.random.default_rng(size)
    x = rng.standard_normal((2, 6, 2, 3)).astype(F32)
    attrs = dict(size=size, alpha=0.8, beta=0.6, bias=2.0)
    if size == 3:  # ONNX Runtime runs odd sizes: the formula must agree with it
        ort_y = evaluate(make_model([N("LRN", ["X"], ["Y"], **attrs)], x.shape), x)
        np.testing.assert_allclose(_lrn_spec(x.astype(np.float64), **attrs), ort_y, rtol=1e-5)
    seed = rng.standard_normal(x.shape)
    rule = GRADIENT.lookup("LRN").fn
    got = rule(NumpyOps(), _FakeNode(**attrs), _FakeFwd(x), [seed.astype(F32)], {})[0]
    fd = np.zeros(x.shape)
    x64 = x.astype(np.float64)
    for i in np.ndindex(x.shape):
        up, down = x64.copy(), x64.copy()
        up[i] += 1e-6
        down[i] -= 1e-6
        fd[i] = np.sum((_lrn_spec(up, **attrs) - _lrn_spec(down, **attrs)) * seed) / 2e-6
    assert np.abs(got - fd).max() <= 1e-5 * np.abs(fd).max() + 1e-7


# -- an op without a rule on the backward path fails at construction --------------------------
def test_unsupported_op_sin_names_node_and_op():
    model = make_model(
        [N("Sin", ["X"], ["E"], name="my_sin_node"), N("Mul", ["E", "K"], ["Y"])], S4, {"K": w(*S4)}
    )
    with pytest.raises(UnsupportedOpError) as info:
        Explainer(model, method="gradient")
    msg = str(info.value)
    assert "my_sin_node" in msg and "Sin" in msg
    assert ("my_sin_node", "Sin") in info.value.nodes


def test_unsupported_op_topk_names_node_and_op():
    model = make_model(
        [N("Relu", ["X"], ["R"]), N("TopK", ["R", "k"], ["Y", "idx"], name="the_topk", axis=-1)],
        (2, 7),
        {"k": i64(3)},
    )
    with pytest.raises(UnsupportedOpError) as info:
        Explainer(model, method="gradient")
    msg = str(info.value)
    assert "the_topk" in msg and "TopK" in msg


# -- ties of Max / Min and ReduceMax / ReduceMin: the signal is split evenly between the tied
#    operands / positions (PyTorch's maximum / amax convention), on both backends
def _vjp_both_backends(model, x, seed):
    from onnx_builders import session

    from tsgb_onnx.convert import convert_vjp

    engine = Explainer(model, method="gradient", backend="numpy").vjp(x, seed)
    (compiled,) = session(convert_vjp(model, method="gradient")).run(
        ["signal"], {"X": x, "seed": seed}
    )
    return engine, compiled


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_max_min_ties_split_evenly_like_torch(op):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    x = rng.integers(-1, 2, (2, 3, 4)).astype(F32)  # many ties with the constant
    c = rng.integers(-1, 2, (3, 1)).astype(F32)
    model = make_model([N(op, ["X", "C"], ["Y"])], x.shape, {"C": c})
    seed = rng.standard_normal((2, 3, 4)).astype(F32)
    xt = torch.tensor(x, requires_grad=True)
    fn = torch.maximum if op == "Max" else torch.minimum
    fn(xt, torch.tensor(c)).backward(torch.tensor(seed))
    assert (x == np.broadcast_to(c, x.shape)).any()
    for got in _vjp_both_backends(model, x, seed):
        np.testing.assert_allclose(got, xt.grad.numpy(), rtol=1e-6, atol=1e-7)


def test_max_of_three_ties_split_in_thirds():
    rng = np.random.default_rng(12)
    x = rng.integers(0, 2, (2, 5)).astype(F32)
    c1, c2 = np.ones((2, 5), F32), rng.integers(0, 2, (2, 5)).astype(F32)
    model = make_model([N("Max", ["C1", "X", "C2"], ["Y"])], x.shape, {"C1": c1, "C2": c2})
    seed = rng.standard_normal(x.shape).astype(F32)
    y = np.maximum(np.maximum(c1, x), c2)
    ties = (c1 == y).astype(F32) + (x == y) + (c2 == y)
    expected = seed * (x == y) / ties
    assert ((ties == 3) & (x == y)).any() and ((ties == 2) & (x == y)).any()
    for got in _vjp_both_backends(model, x, seed):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
def test_reduce_max_min_ties_split_evenly_like_torch_amax(op):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(13)
    x = rng.integers(-1, 2, (2, 3, 4, 4)).astype(F32)
    model = make_model([N(op, ["X"], ["Y"], axes=[2, 3], keepdims=0)], x.shape)
    seed = rng.standard_normal((2, 3)).astype(F32)
    xt = torch.tensor(x, requires_grad=True)
    fn = torch.amax if op == "ReduceMax" else torch.amin
    fn(xt, dim=(2, 3)).backward(torch.tensor(seed))
    for got in _vjp_both_backends(model, x, seed):
        np.testing.assert_allclose(got, xt.grad.numpy(), rtol=1e-6, atol=1e-7)


# -- Resize: the interpolation matrices against ONNX's reference implementation, on shapes and
#    modes the finite-difference cases do not reach (ONNX Runtime's CPU kernel would run them
#    only in 2-D / 4-D; the reference is N-D and independent of the rule's code)
@pytest.mark.parametrize(
    "mode, ctm, n_in, n_out",
    [
        ("nearest", "half_pixel", 7, 3),
        ("nearest", "asymmetric", 4, 9),
        ("linear", "half_pixel", 9, 4),
        ("linear", "align_corners", 1, 5),
        ("cubic", "pytorch_half_pixel", 6, 11),
        ("cubic", "half_pixel", 8, 5),
        ("linear", "pytorch_half_pixel", 5, 1),
    ],
)
def test_resize_matrix_matches_onnx_reference(mode, ctm, n_in, n_out):
    from onnx.reference import ReferenceEvaluator

    from tsgb_onnx.rules.gradient import resize_matrix

    model = make_model(
        [
            N(
                "Resize",
                ["X", "", "", "sz"],
                ["Y"],
                mode=mode,
                coordinate_transformation_mode=ctm,
            )
        ],
        (n_in, 1),
        {"sz": i64(n_out, 1)},
    )
    basis = np.eye(n_in, dtype=F32).reshape(n_in, n_in, 1).transpose(1, 0, 2)  # [k, n_in, 1]
    ref = ReferenceEvaluator(model)
    columns = [ref.run(None, {"X": basis[k]})[0][:, 0] for k in range(n_in)]
    expected = np.stack(columns, axis=1)  # [n_out, n_in]
    got = resize_matrix(n_in, n_out, np.float32(n_out) / np.float32(n_in), mode, ctm)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


# -- GroupNormalization before opset 21 scales per group (ONNX 1.23's checker refuses those
#    models, so the rule is called directly): the per-group scale is repeated per channel
class _Node18(_FakeNode):
    def __init__(self, scale, **attrs):
        super().__init__(**attrs)
        self.name, self.op_type, self.opset, self._scale = "gn", "GroupNormalization", 18, scale

    def const(self, i):
        return self._scale if i == 1 else None

    def has_input(self, i):
        return i in (0, 1, 2)


def test_groupnorm_opset18_per_group_scale_matches_torch():
    torch = pytest.importorskip("torch")
    from tsgb_onnx.backends.numpy_ops import NumpyOps
    from tsgb_onnx.rules.gradient import GRADIENT

    rng = np.random.default_rng(18)
    x = rng.standard_normal((2, 6, 3, 2)).astype(F32)
    seed = rng.standard_normal(x.shape).astype(F32)
    scale = np.array([0.5, -1.5, 2.0], F32)  # one value per group of 2 channels
    node = _Node18(scale, num_groups=3, epsilon=1e-3)
    rule = GRADIENT.lookup("GroupNormalization").fn
    got = rule(NumpyOps(), node, _FakeFwd(x), [seed], {})[0]
    xt = torch.tensor(x, requires_grad=True)
    weight = torch.tensor(np.repeat(scale, 2))
    torch.nn.functional.group_norm(xt, 3, weight, None, eps=1e-3).backward(torch.tensor(seed))
    np.testing.assert_allclose(got, xt.grad.numpy(), rtol=1e-4, atol=1e-5)


# -- attribute combinations without a rule: a ModelError naming the node and what to do ------
REFUSED = [
    pytest.param(
        [
            N(
                "Resize",
                ["X", "roi", "", "sz"],
                ["Y"],
                name="crop",
                mode="linear",
                coordinate_transformation_mode="tf_crop_and_resize",
            )
        ],
        {"roi": np.array([0, 0, 0.1, 0.2, 1, 1, 0.9, 0.8], F32), "sz": i64(1, 2, 5, 5)},
        18,
        "node 'crop'.*tf_crop_and_resize.*supported:",
        id="resize_tf_crop_and_resize",
    ),
    pytest.param(
        [N("Resize", ["X", "", "sc"], ["Y"], name="aa", mode="linear", antialias=1)],
        {"sc": np.array([1, 1, 0.5, 0.5], F32)},
        18,
        "node 'aa'.*antialias=1.*export with antialias=0",
        id="resize_antialias",
    ),
    pytest.param(
        [N("Relu", ["X"], ["R"]), N("Pow", ["X", "R"], ["Y"], name="pw")],
        {},
        17,
        "node 'pw'.*both vary.*constant exponent",
        id="pow_both_variable",
    ),
    pytest.param(
        [N("Pow", ["X", "P"], ["Y"], name="pe")],
        {"P": np.array([1.0, 2.0, 3.0, 4.0], F32)},
        17,
        "node 'pe'.*one value",
        id="pow_per_element_exponent",
    ),
    pytest.param(
        [N("Einsum", ["X", "W"], ["Y"], name="diag", equation="bcii,ck->bki")],
        {"W": w(2, 3)},
        17,
        "node 'diag'.*repeated subscript",
        id="einsum_diagonal",
    ),
]


@pytest.mark.parametrize("nodes, inits, opset, message", REFUSED)
def test_unsupported_attributes_are_refused_by_name(nodes, inits, opset, message):
    from tsgb_onnx.convert import convert_vjp
    from tsgb_onnx.errors import ModelError

    model = make_model(nodes, (1, 2, 4, 4), inits, opset)
    with pytest.raises(ModelError, match=message):
        convert_vjp(model, method="gradient")
    x = np.random.default_rng(0).uniform(0.5, 1.5, (1, 2, 4, 4)).astype(F32)
    seed = np.ones_like(evaluate(model, x))
    with pytest.raises(ModelError, match=message):
        Explainer(model, method="gradient", backend="numpy").vjp(x, seed)


# -- the new rules together, on graphs the PyTorch exporters write (shape chains that compute
#    Resize sizes, Gather of a token, LayerNorm / GroupNorm / GELU, attention einsums), against
#    autograd, on the NumPy engine and on the compiled explainer with a dynamic batch
def _modern_net():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.up = torch.nn.ConvTranspose2d(8, 6, 3, stride=2, padding=1, output_padding=1)
            self.gn = torch.nn.GroupNorm(2, 6)
            self.ln = torch.nn.LayerNorm(6)
            self.fc = torch.nn.Linear(6, 5)

        def forward(self, x):
            h = self.gn(self.up(F.gelu(self.conv(x))))
            h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
            h = F.interpolate(h, size=(9, 7), mode="nearest")
            h = F.interpolate(h, size=(8, 8), mode="bicubic", align_corners=True)
            t = F.gelu(self.ln(h.flatten(2).transpose(1, 2)), approximate="tanh")  # [B, 64, 6]
            att = torch.einsum("bqd,bkd->bqk", t, t).softmax(-1)
            t = torch.einsum("bqk,bkd->bqd", att, t)
            token = t[:, 0] + t.amax(1) + F.mish(t).mean(1)
            return self.fc(F.elu(token) + torch.sqrt(t.pow(2).mean(1) + 1))

    torch.manual_seed(0)
    return torch, Net().eval()


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_modern_ops_net_matches_autograd_on_both_backends(dynamo):
    torch, net = _modern_net()
    from nets import export_onnx
    from onnx_builders import session

    from tsgb_onnx.convert import convert_vjp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = export_onnx(net, torch.randn(2, 3, 8, 8), dynamo=dynamo)
        vjp_model = convert_vjp(proto, method="gradient")
    x = torch.randn(3, 3, 8, 8)  # another batch size than the export's
    seed = torch.randn(3, 5)
    xt = x.clone().requires_grad_(True)
    net(xt).backward(seed)
    expected = xt.grad.numpy()
    scale = np.abs(expected).max()
    engine = Explainer(proto, method="gradient", backend="numpy").vjp(x.numpy(), seed.numpy())
    (compiled,) = session(vjp_model).run(["signal"], {"input": x.numpy(), "seed": seed.numpy()})
    for got in (engine, compiled):
        assert np.abs(got - expected).max() <= 1e-4 * scale

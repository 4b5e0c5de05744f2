"""DeepLIFT with the rescale rule (Shrikumar et al. 2017) and its `deeplift` method.

The explainer records a second, reference forward pass on the baseline `x0`. On every
nonlinear element-wise op y = f(x) the signal is multiplied by the rescale multiplier
``(f(x) - f(x0)) / (x - x0)``, falling back to the exact derivative where
``|x - x0| <= TOLERANCE``. Linear ops (Conv, Gemm, BatchNormalization, pooling by averages,
Add, reshapes, ...) keep their exact gradients, so with ReLU-type nonlinearities the map
``sum_c G * (X - X0)`` sums to ``logit(x) - logit(x0)`` (summation-to-delta). MaxPool and
products of two signals (Mul in squeeze-excitation / SiLU) keep the gradient: summation to
delta then holds only approximately.
"""

from __future__ import annotations

import numpy as np

from tsgb_onnx.errors import MethodError
from tsgb_onnx.rules.gradient import GRADIENT
from tsgb_onnx.rules.registry import RuleSet

DEEPLIFT = RuleSet("deeplift", parent=GRADIENT)
TOLERANCE = 1e-6
RESCALED = (
    "Relu",
    "Sigmoid",
    "Tanh",
    "Clip",
    "LeakyRelu",
    "HardSigmoid",
    "HardSwish",
    "Elu",
    "Selu",
    "Softplus",
)


def _reads_with_reference(op_type: str):
    exact = GRADIENT.lookup(op_type)

    def reads(node):
        own = exact.reads(node) if callable(exact.reads) else exact.reads
        return tuple(dict.fromkeys(tuple(own) + ("x0", "y0", "rx0", "ry0")))

    return reads


def _make_rescale(op_type: str):
    exact = GRADIENT.lookup(op_type)

    def rescale(ops, node, fwd, grads, opts):
        out = exact.fn(ops, node, fwd, grads, opts)
        g = grads[0]
        if g is None or out[0] is None:
            return out
        dx = ops.sub(fwd.x(0), fwd.rx(0))
        dy = ops.sub(fwd.y(0), fwd.ry(0))
        apart = ops.greater(ops.abs(dx), TOLERANCE)
        safe = ops.where(apart, dx, 1.0)
        out[0] = ops.where(apart, ops.mul(g, ops.div(dy, safe)), out[0])
        return out

    rescale.__name__ = "rescale"
    return rescale


for _op in RESCALED:
    if GRADIENT.lookup(_op) is not None:
        DEEPLIFT.register(_op, reads=_reads_with_reference(_op))(_make_rescale(_op))


def baseline_input(x, options):
    return options["baseline"]


def check_options(options: dict) -> None:
    baseline = options["baseline"]
    try:
        value = np.asarray(baseline, dtype=np.float32)
    except (TypeError, ValueError):
        raise MethodError(
            f"deeplift: baseline must be a number or an array, got {baseline!r}"
        ) from None
    if not np.isfinite(value).all():
        raise MethodError("deeplift: baseline holds NaN or Inf")

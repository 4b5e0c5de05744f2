"""The `lrp_epsilon` rule set: LRP with the epsilon stabiliser on every linear map;
see docs/methods_baselines.md."""

from __future__ import annotations

import numpy as np

from tsgb_onnx.errors import MethodError
from tsgb_onnx.rules.ebp import has_const_weights
from tsgb_onnx.rules.gradient import GRADIENT
from tsgb_onnx.rules.registry import Rule, RuleSet
from tsgb_onnx.rules.relevance import SPEC_EPS, reads_plus, unit_rule

# On a linear map y = f(x) (bias included in y), LRP-ε gives
#   R[x_i] = sum_j x_i df_j/dx_i R[y_j] / (y_j + ε sgn y_j),
# i.e. the exact vector-Jacobian product applied to G[y] * (Y ⊘_ε Y).
LRP = RuleSet("lrp_epsilon", parent=GRADIENT)


def _epsilon(opts) -> float:
    return max(float(opts["epsilon"]), SPEC_EPS)


def _lrp_of(op_type: str):
    exact_fn = GRADIENT.lookup(op_type).fn

    def rule(ops, node, fwd, grads, opts):
        y = fwd.y(0)
        g = ops.mul(grads[0], ops.div_stab(y, y, eps=_epsilon(opts)))
        return exact_fn(ops, node, fwd, [g], opts)

    rule.__name__ = f"lrp_{exact_fn.__name__}"
    rule.__doc__ = f"LRP-ε on {op_type}: the exact VJP of G[y] * (Y ⊘_ε Y)."
    return rule


for _op in (
    "Conv",
    "Gemm",
    "MatMul",
    "BatchNormalization",
    "AveragePool",
    "GlobalAveragePool",
    "ReduceMean",
    "ReduceSum",
    "Add",
    "Sum",
    "Sub",
):
    LRP.register(_op, reads=reads_plus(_op, "y0"))(_lrp_of(_op))
LRP.register("Clip", reads=("x0", "y0"))(unit_rule)


def _feeds_bias_add(node, graph) -> bool:
    """Whether `node`'s only consumer is an Add with a constant operand (its bias)."""
    consumers = graph.consumers.get(node.outputs[0], [])
    outputs = {o.name for o in graph.model.graph.output}
    return (
        len(consumers) == 1
        and consumers[0].op_type == "Add"
        and (consumers[0].is_const(0) or consumers[0].is_const(1))
        and node.outputs[0] not in outputs
    )


def choose_rule(method, node, graph, options) -> Rule | None:
    # a product of two activations is no layer; a MatMul + bias Add is one layer whose ε is
    # applied once, by the Add (z = Wx + b)
    if node.op_type in ("Gemm", "MatMul") and (
        not has_const_weights(node) or (node.op_type == "MatMul" and _feeds_bias_add(node, graph))
    ):
        return GRADIENT.lookup(node.op_type)
    return None


def check_options(options: dict) -> None:
    epsilon = options["epsilon"]
    if (
        isinstance(epsilon, bool)
        or not isinstance(epsilon, (int, float, np.floating))
        or not np.isfinite(epsilon)
        or epsilon < 0
    ):
        raise MethodError(f"lrp_epsilon: epsilon must be a finite number >= 0, got {epsilon!r}")

"""Helpers shared by the relevance-style rule sets (EBP, LRP-epsilon)."""

from __future__ import annotations

from tsgb_onnx.rules.gradient import GRADIENT

SPEC_EPS = 1e-10  # the stabiliser of SPEC's ⊘


class BaselineWarning(UserWarning):
    """Notices of the baseline methods (e.g. EBP's top layer is not a linear layer)."""


def rest(node, first):
    return [first]


def exact_reads(op_type: str):
    return GRADIENT.lookup(op_type).reads


def reads_plus(op_type: str, *extra: str):
    base = exact_reads(op_type)

    def reads(node):
        tokens = base(node) if callable(base) else base
        return tuple(tokens) + tuple(t for t in extra if t not in tokens)

    return reads


def unit_rule(ops, node, fwd, grads, opts):
    """R[X] = R[Y] element-wise: G[X] = G[Y] * (Y ⊘ X)."""
    return rest(node, ops.mul(grads[0], ops.div_stab(fwd.y(0), fwd.x(0))))

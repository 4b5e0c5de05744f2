"""Rule sets of the single-backward-pass baselines.

* ``input_x_gradient``: the gradient rule set under its own name (the saliency map is
  already ``sum_c G * X``).
* ``guided_backprop``: rectifiers pass only positive signals through their forward mask.
* ``deconvnet``: rectifiers rectify the signal and ignore the forward mask.
* ``ebp`` / ``contrastive_ebp`` (module `ebp`): Excitation Backprop's marginal winning
  probability (MWP).
* ``lrp_epsilon`` (module `lrp`): LRP with the epsilon stabiliser on every linear map.

Convention: the relevance (EBP: probability) held by a tensor ``t`` is ``R[t] = X[t] * G[t]``,
so a rule that redistributes relevance returns ``G[x] = R[x] / X[x]`` as a closed form
without dividing by ``X``. Ops without an override keep the exact gradient; for
element-wise ops that pass a unit's relevance on unchanged (Relu, MaxPool's winner,
Reshape, Concat, ...) the exact gradient already conserves ``X * G``.
"""

from __future__ import annotations

from tsgb_onnx.rules import gradient as exact
from tsgb_onnx.rules.gradient import GRADIENT
from tsgb_onnx.rules.registry import RuleSet
from tsgb_onnx.rules.relevance import BaselineWarning

__all__ = ["BaselineWarning", "DECONVNET", "GUIDED"]


def _is_rectifier_clip(node) -> bool:
    """A Clip whose lower bound is 0 (ReLU6 and the like)."""
    lo, _ = exact.clip_bounds(node)
    return lo is not None and lo == 0.0


# == input x gradient ===========================================================================


# == guided backprop and deconvnet ==============================================================
GUIDED = RuleSet("guided_backprop", parent=GRADIENT)


@GUIDED.register("Relu", reads=("y0",))
def guided_relu(ops, node, fwd, grads, opts):
    """G * (X > 0) * (G > 0): the exact mask applied to the positive part of G."""
    return exact.relu(ops, node, fwd, [ops.maximum(grads[0], 0.0)], opts)


@GUIDED.register("Clip", reads=("y0",))
def guided_clip(ops, node, fwd, grads, opts):
    """ReLU6-style Clip (lower bound 0): G * (lo < Y < hi) * (G > 0); other Clips: exact."""
    g = grads[0]
    if _is_rectifier_clip(node):
        g = ops.maximum(g, 0.0)
    return exact.clip(ops, node, fwd, [g], opts)


@GUIDED.register("LeakyRelu", reads=("x0",))
def guided_leaky_relu(ops, node, fwd, grads, opts):
    """The exact derivative (1 or alpha) times the positive part of G."""
    return exact.leaky_relu(ops, node, fwd, [ops.maximum(grads[0], 0.0)], opts)


@GUIDED.register("PRelu", reads=("x0", "x1"))
def guided_prelu(ops, node, fwd, grads, opts):
    """The exact derivative (1 or slope) times the positive part of G."""
    return exact.prelu(ops, node, fwd, [ops.maximum(grads[0], 0.0)], opts)


DECONVNET = RuleSet("deconvnet", parent=GRADIENT)


@DECONVNET.register("Relu")
def deconv_relu(ops, node, fwd, grads, opts):
    """G * (G > 0): the rectifier applied to the signal, forward mask ignored."""
    return [ops.maximum(grads[0], 0.0)]


@DECONVNET.register("Clip", reads=("y0",))
def deconv_clip(ops, node, fwd, grads, opts):
    """ReLU6-style Clip: G * (G > 0) as for Relu; other Clips: exact gradient."""
    if _is_rectifier_clip(node):
        return [ops.maximum(grads[0], 0.0)]
    return exact.clip(ops, node, fwd, grads, opts)


@DECONVNET.register("LeakyRelu")
def deconv_leaky_relu(ops, node, fwd, grads, opts):
    """The layer's own non-linearity applied to the signal: G if G > 0 else alpha * G."""
    g = grads[0]
    return [ops.where(ops.greater(g, 0.0), g, ops.mul(g, node.attr("alpha", 0.01)))]


@DECONVNET.register("PRelu", reads=("x1",))
def deconv_prelu(ops, node, fwd, grads, opts):
    """The layer's own non-linearity applied to the signal: G if G > 0 else slope * G."""
    g = grads[0]
    return [ops.where(ops.greater(g, 0.0), g, ops.mul(g, fwd.x(1)))]

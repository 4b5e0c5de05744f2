"""Meta-saliency (paper 003, sec. 5): one SGD step on the weights, then any method's map.

For each image, the exact gradients of the target's logit with respect to the weights of
every Conv, Gemm, MatMul and BatchNormalization give one step
``θ' = θ + lr · ∇θ logit_target`` (gradient ascent on the target's score, i.e. an SGD step
on the loss ``-logit_target``; ``lr < 0`` gives the paper's "negative" meta-saliency), and
the map of the base method is computed on the updated model. Each image has its own updated
weights, so images are explained one at a time.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from tsgb_onnx.errors import MethodError
from tsgb_onnx.methods.base import ExplainerLike
from tsgb_onnx.methods.result import Explanation
from tsgb_onnx.methods.weight_grads import weight_gradients


def updated_model(
    model: onnx.ModelProto, gradients: dict[str, np.ndarray], lr: float
) -> onnx.ModelProto:
    """A copy of `model` whose initializers `gradients` names are moved by lr · gradient."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for init in copy.graph.initializer:
        grad = gradients.get(init.name)
        if grad is None:
            continue
        value = numpy_helper.to_array(init)
        moved = (value.astype(np.float64) + lr * grad.reshape(value.shape)).astype(value.dtype)
        init.CopyFrom(numpy_helper.from_array(moved, init.name))
    return copy


def meta_explain(explainer: ExplainerLike, x, target, layer, method: str, options: dict, lr: float):
    """`method`'s explanation of each row of `x` on the model after its own SGD step."""
    explainer.method_named(method)  # unknown names fail before any work
    logits = explainer.infer(x)
    targets = explainer.targets(target, logits)
    rows = []
    for row, cls in enumerate(targets):
        grads = weight_gradients(explainer, x[row : row + 1], int(cls))
        model = updated_model(explainer.graph.model, grads, lr)
        stepped = explainer.on_model(model, method, **options)
        rows.append(stepped.explain(x[row : row + 1], int(cls), layer))
    signals = [r.signal for r in rows]
    return Explanation(
        saliency=np.concatenate([r.saliency for r in rows]),
        signal=None if any(s is None for s in signals) else np.concatenate(signals),
        logits=np.asarray(logits),
        target=targets,
        layer=rows[0].layer,
        method=method,
    )


def meta_saliency(explainer, x, target, layer, options):
    base = options["base"]
    inner = {k: v for k, v in options.items() if k not in ("base", "lr")}
    return meta_explain(explainer, x, target, layer, base, inner, float(options["lr"]))


def check_options(options: dict) -> None:
    lr = options["lr"]
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not np.isfinite(lr):
        raise MethodError(f"meta_saliency: lr must be a finite number, got {lr!r}")
    base = options["base"]
    if base == "meta_saliency":
        raise MethodError("meta_saliency: base cannot be meta_saliency itself")

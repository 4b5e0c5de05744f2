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

from .errors import MethodError
from .methods import MapMethod, get_method, register_method
from .weight_grads import weight_gradients


def updated_model(model: onnx.ModelProto, gradients: dict[str, np.ndarray],
                  lr: float) -> onnx.ModelProto:
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


def meta_explain(explainer, x, target, layer, method: str, options: dict, lr: float):
    """`method`'s explanation of each row of `x` on the model after its own SGD step."""
    from .explainer import Explainer, Explanation, resolve_targets

    get_method(method)  # unknown names fail before any work
    logits = explainer.infer(x)
    targets = resolve_targets(target, logits)
    rows = []
    for row, cls in enumerate(targets):
        grads = weight_gradients(explainer, x[row:row + 1], int(cls))
        model = updated_model(explainer.graph.model, grads, lr)
        on_gpu = explainer.device.name == "cuda"
        stepped = Explainer(model, method=method, output=explainer.graph.logits_name,
                            providers=None if on_gpu else explainer.recorder.providers,
                            backend="numpy", threads=explainer.threads,
                            device=explainer.device.name, **options)
        rows.append(stepped.explain(x[row:row + 1], int(cls), layer))
    signals = [r.signal for r in rows]
    return Explanation(
        saliency=np.concatenate([r.saliency for r in rows]),
        signal=None if any(s is None for s in signals) else np.concatenate(signals),
        logits=np.asarray(logits), target=targets, layer=rows[0].layer, method=method)


def _meta(explainer, x, target, layer, options):
    base = options["base"]
    inner = {k: v for k, v in options.items() if k not in ("base", "lr")}
    return meta_explain(explainer, x, target, layer, base, inner, float(options["lr"]))


def _check(options: dict) -> None:
    lr = options["lr"]
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not np.isfinite(lr):
        raise MethodError(f"meta_saliency: lr must be a finite number, got {lr!r}")
    base = options["base"]
    if base == "meta_saliency":
        raise MethodError("meta_saliency: base cannot be meta_saliency itself")


register_method(MapMethod(
    "meta_saliency", _meta, defaults={"base": "gradient", "lr": 1e-3},
    description="meta-saliency: the base method's map after one SGD step on the weights "
                "towards the target (options of the base method pass through)",
    check_options=_check, pass_options=True,
))

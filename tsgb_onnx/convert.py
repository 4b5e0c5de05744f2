"""`tsgb convert`: compile a method's reverse program into a self-contained ONNX explainer.

The program runs on the ONNX emitter backend (`backends.onnx_ops`), so every rule appends
standard ONNX nodes to the (canonicalised) model itself; the explainer runs in any ONNX
runtime with no tsgb_onnx code on the path (`backends.compile` assembles it):

    inputs:  the model input, and optional int64 `target` [B] or [1] (< 0 or not fed: top-1),
             or (seed_input) a float `seed` shaped like the output, e.g. a dense target's
    outputs: the model's own outputs, `saliency` [B, *spatial], and `signal` (keep_signal)
"""

from __future__ import annotations

import onnx

from tsgb_onnx.backends.compile import (
    EXPLAINER_KEY,
    SALIENCY,
    SEED,
    SIGNAL,
    TARGET,
    ConvertWarning,
    compile_model,
)
from tsgb_onnx.errors import MethodError
from tsgb_onnx.ir.graph import ModelLike
from tsgb_onnx.methods.base import Method
from tsgb_onnx.methods.table import get_method

__all__ = [
    "convert",
    "convert_vjp",
    "ConvertWarning",
    "EXPLAINER_KEY",
    "SALIENCY",
    "SEED",
    "SIGNAL",
    "TARGET",
]


def convert(
    model: ModelLike,
    method: str = "tsgb",
    layer: str | None = None,
    keep_signal: bool = False,
    output: str | None = None,
    optional_target: bool = False,
    seed_input: bool = False,
    **options,
) -> onnx.ModelProto:
    """An ONNX model that returns the model's outputs plus `saliency` for `method`.

    `layer` picks the tensor the map is taken at (default: the model input); `output` the
    logits when the model has several outputs; `options` are the method's (e.g. alpha).
    Inputs: the model's, and `target` (int64, [B] one per row or [1] for every row; < 0 means
    the row's top-1). A row whose target is >= the number of classes, and every row of a
    `target` of another length, gets a NaN map. `optional_target=True` gives `target` the
    default [-1], so it may be left unfed (runtimes then list it among the overridable
    initializers, not the inputs).

    `seed_input=True`: instead of `target`, an input `seed` shaped like the output seeds the
    backward (a dense output's channel one-hot x mask, `DenseTarget`'s seed; any seed).
    """
    chosen = _one_pass(method)
    if seed_input and optional_target:
        raise MethodError("convert: seed_input replaces the target input; optional_target has none")
    return compile_model(
        model,
        chosen,
        chosen.resolve_options(options),
        layer,
        output,
        keep_signal,
        seed_input=False,
        optional_target=optional_target,
        dense_seed=seed_input,
    )


def convert_vjp(
    model: ModelLike,
    method: str = "gradient",
    layer: str | None = None,
    output: str | None = None,
    **options,
) -> onnx.ModelProto:
    """An ONNX model with inputs (model input, `seed` shaped like the logits) whose output
    `signal` is the method's backward signal at `layer` for that seed."""
    chosen = _one_pass(method)
    return compile_model(
        model,
        chosen,
        chosen.resolve_options(options),
        layer,
        output,
        keep_signal=True,
        seed_input=True,
    )


def _one_pass(name: str) -> Method:
    method = get_method(name)
    if not isinstance(method, Method):
        raise MethodError(
            f"method '{name}' is not one backward pass, so it has no reverse program "
            "(it runs through Explainer.explain only; not convert or inspect --program)"
        )
    return method

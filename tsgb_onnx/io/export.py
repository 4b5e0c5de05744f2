"""Exporters: framework model → ONNX with a dynamic batch and tsgb metadata.

Every exporter imports its framework lazily (a missing one is a one-line `TsgbError` naming
the extra to install) and stores, when given, the image preprocessing and the class labels in
the model's `metadata_props` (keys `tsgb.preprocess`, a JSON object of `Preprocessing`
settings, and `tsgb.labels`, a JSON list of names), which `tsgb explain` reads.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import onnx

from tsgb_onnx.errors import ModelError, TsgbError, is_out_of_memory, out_of_memory
from tsgb_onnx.io.labels import LABELS_KEY, imagenet_labels
from tsgb_onnx.io.preprocess import PREPROCESS_KEY, Preprocessing, as_settings

PreprocessLike = Preprocessing | str | Mapping[str, Any] | None
LabelsLike = Sequence[str] | str | None


def _need(module: str, framework: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise TsgbError(
            f"exporting a {framework} model needs {module}: pip install 'tsgb-onnx[{extra}]'"
        ) from None


def _torch():
    return _need("torch", "PyTorch", "torch")


@contextlib.contextmanager
def _quiet(*extra_loggers: str):
    """Silence exporter warnings, log records and prints."""
    names = (
        "torch.onnx",
        "torch.export",
        "torch._dynamo",
        "torch.fx",
        "onnxscript",
        "onnx_ir",
        *extra_loggers,
    )
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# -- metadata ------------------------------------------------------------------------------------


def attach_metadata(
    model: onnx.ModelProto,
    preprocess: PreprocessLike = None,
    labels: LabelsLike = None,
    **settings: Any,
) -> onnx.ModelProto:
    """Store preprocessing and class labels in `model.metadata_props` (in place; returned).

    `preprocess`: a preset name ('torchvision', 'caffe', 'tf', 'none'), a dict of
    `Preprocessing` fields or a `Preprocessing`; keyword `settings` (e.g. size=(64, 64),
    layout='nhwc') are added on top. `labels`: a list of class names or 'imagenet'.
    Only the settings given are stored; the rest keep their defaults when read back.
    """
    merged = {**as_settings(preprocess), **{k: v for k, v in settings.items() if v is not None}}
    if merged:
        Preprocessing(**merged)  # validate now, not when the model is explained
        if "size" in merged and not isinstance(merged["size"], int):
            merged["size"] = [int(v) for v in merged["size"]]
        for key in ("mean", "std"):
            if key in merged:
                merged[key] = [float(v) for v in merged[key]]
        _set_prop(model, PREPROCESS_KEY, json.dumps(merged, separators=(",", ":")))
    if labels is not None:
        names = (
            imagenet_labels()
            if isinstance(labels, str) and labels.lower() == "imagenet"
            else [str(v) for v in labels]
        )
        _set_prop(model, LABELS_KEY, json.dumps(names, separators=(",", ":")))
    return model


def read_metadata(model: onnx.ModelProto) -> dict[str, str]:
    """The model's metadata_props as a dict."""
    return {p.key: p.value for p in model.metadata_props}


def _set_prop(model: onnx.ModelProto, key: str, value: str) -> None:
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    model.metadata_props.add(key=key, value=value)


def _finish(proto: onnx.ModelProto, path, preprocess, labels, **settings) -> onnx.ModelProto:
    attach_metadata(proto, preprocess, labels, **settings)
    if path is not None:
        onnx.save(proto, os.fspath(path))
    return proto


def _image_settings(shape: Sequence[int], layout: str) -> dict[str, Any]:
    """size and layout of an example image batch shape (nothing for non-image inputs)."""
    if len(shape) != 4:
        return {}
    hw = tuple(shape[1:3]) if layout == "nhwc" else tuple(shape[2:4])
    if not all(isinstance(v, int) and v > 0 for v in hw):
        return {"layout": layout}
    return {"size": [int(hw[0]), int(hw[1])], "layout": layout}


# -- PyTorch -------------------------------------------------------------------------------------


def from_torch(
    module: Any,
    example: Any,
    path: str | os.PathLike | None = None,
    dynamo: bool = False,
    opset: int | None = None,
    preprocess: PreprocessLike = None,
    labels: LabelsLike = None,
    layout: str | None = None,
) -> onnx.ModelProto:
    """Export a PyTorch module (eval mode) to ONNX: input "input", output "logits", dynamic batch.

    `dynamo=False` uses the TorchScript exporter (opset 17 by default), `dynamo=True` the
    torch.export-based one (opset 18). `preprocess` / `labels` are stored as metadata; so are
    the input size and layout of a 4-D `example` (`layout` None: NHWC when the graph
    transposes its input channels-first, else NCHW). Writes `path` when given; returns the
    ModelProto.
    """
    torch = _torch()
    module = module.eval()
    example = example.detach()
    with tempfile.TemporaryDirectory(prefix="tsgb_export_") as tmp, _quiet(), torch.no_grad():
        target = os.path.join(tmp, "model.onnx")
        if dynamo:
            if example.shape[0] < 2:  # torch.export specialises a batch of 1
                example = example.expand(2, *example.shape[1:]).contiguous()
            batch = torch.export.Dim("batch", min=1, max=4096)
            program = torch.onnx.export(
                module,
                (example,),
                input_names=["input"],
                output_names=["logits"],
                opset_version=opset or 18,
                dynamo=True,
                dynamic_shapes=({0: batch},),
                external_data=False,
                optimize=True,
                verbose=False,
            )
            program.save(target, external_data=False)
        else:
            torch.onnx.export(
                module,
                (example,),
                target,
                input_names=["input"],
                output_names=["logits"],
                opset_version=opset or 17,
                dynamo=False,
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
        proto = onnx.load(target, load_external_data=True)
    image = _image_settings(tuple(example.shape), layout or detect_layout(proto))
    return _finish(proto, path, preprocess, labels, **_defaults_under(preprocess, image))


def detect_layout(proto: onnx.ModelProto) -> str:
    """'nhwc' when every consumer of the (4-D) model input transposes it channels-first."""
    init = {t.name for t in proto.graph.initializer}
    inputs = [i.name for i in proto.graph.input if i.name not in init]
    if len(inputs) != 1:
        return "nchw"
    consumers = [n for n in proto.graph.node if inputs[0] in n.input]
    perms = [
        list(onnx.helper.get_attribute_value(a))
        for n in consumers
        for a in n.attribute
        if n.op_type == "Transpose" and a.name == "perm"
    ]
    return (
        "nhwc"
        if consumers and len(perms) == len(consumers) and all(p == [0, 3, 1, 2] for p in perms)
        else "nchw"
    )


def _defaults_under(preprocess: PreprocessLike, inferred: dict[str, Any]) -> dict[str, Any]:
    """Inferred size/layout, unless the user's preprocessing names them."""
    given = as_settings(preprocess)
    return {k: v for k, v in inferred.items() if k not in given}


# -- Keras / TensorFlow --------------------------------------------------------------------------


def from_keras(
    model: Any,
    path: str | os.PathLike | None = None,
    opset: int = 17,
    input_signature: Any = None,
    preprocess: PreprocessLike = None,
    labels: LabelsLike = None,
) -> onnx.ModelProto:
    """Export a Keras model with tf2onnx: dynamic batch, NHWC input kept (as in Keras).

    `input_signature` defaults to one float32 `tf.TensorSpec` named "input" of the model's
    input shape with a free batch. The NHWC layout and the input size are stored as metadata.
    """
    tf = _need("tensorflow", "Keras", "keras")
    tf2onnx = _need("tf2onnx", "Keras", "keras")
    if input_signature is None:
        shape = tuple(model.inputs[0].shape)
        input_signature = (tf.TensorSpec((None,) + tuple(shape[1:]), tf.float32, name="input"),)
        shape = (None,) + tuple(shape[1:])
    else:
        shape = tuple(input_signature[0].shape)
    layout = "nhwc"
    if getattr(model, "layers", None):
        formats = {getattr(layer, "data_format", None) for layer in model.layers} - {None}
        if formats == {"channels_first"}:
            layout = "nchw"
    name = getattr(model, "name", type(model).__name__)
    with _quiet("tensorflow", "tf2onnx"):
        try:
            proto, _ = tf2onnx.convert.from_keras(
                model, input_signature=input_signature, opset=opset
            )
        except Exception as exc:
            if is_out_of_memory(exc):
                raise out_of_memory(exc, f"exporting the Keras model '{name}'") from exc
            raise ModelError(
                f"tf2onnx cannot export the Keras model '{name}' "
                f"({type(exc).__name__}: {_first_line(exc)}): try another opset= "
                "or export the same network from PyTorch with from_torch"
            ) from exc
    _refuse_unconverted(proto, model, name)
    image = _image_settings(tuple(shape), layout)
    return _finish(proto, path, preprocess, labels, **_defaults_under(preprocess, image))


# TF ops tf2onnx leaves unconverted in Keras 3 models, and why (no opset changes it)
_KNOWN_UNCONVERTED = {
    "StatefulPartitionedCall": "Keras 3 runs a grouped Conv2D (groups > 1) as an "
    "XLA-compiled function, which tf2onnx keeps as a call",
    "Erfc": "tf2onnx has no Erfc (Keras' exact GELU)",
}


def _refuse_unconverted(proto: onnx.ModelProto, model: Any, name: str) -> None:
    """A one-line `ModelError` when tf2onnx left TensorFlow ops in the graph (it logs them
    and returns a model no runtime loads): each op with its first layer, why, and what to
    do."""
    first: dict[str, str] = {}
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
            first.setdefault(node.op_type, node.name)
    if not counts:
        return
    parts = []
    for op, count in counts.items():
        layer = _keras_layer_of(model, first[op])
        where = f"layer '{layer}'" if layer else f"node '{first[op]}'"
        why = _KNOWN_UNCONVERTED.get(op, "tf2onnx has no conversion for it")
        parts.append(f"{op} x{count}, first at {where}: {why}")
    known = all(op in _KNOWN_UNCONVERTED for op in counts)
    advice = (
        "no opset= or SavedModel export avoids this: export the same network from PyTorch "
        "with from_torch (e.g. timm's), or build the Keras model without those layers"
        if known
        else "try another opset=, or export the same network from PyTorch with from_torch"
    )
    raise ModelError(
        f"tf2onnx cannot convert the Keras model '{name}' to ONNX ({'; '.join(parts)}): {advice}"
    )


def _keras_layer_of(model: Any, node_name: str) -> str | None:
    """The model's layer a tf2onnx node name comes from ('model_1/block_conv_1/Op' ->
    'block_conv'), if any."""
    layers = {getattr(layer, "name", None) for layer in getattr(model, "layers", [])}
    for part in node_name.split("/")[1:]:
        if part in layers:
            return part
        stem, _, suffix = part.rpartition("_")
        if suffix.isdigit() and stem in layers:
            return stem
    return None


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


# -- JAX -----------------------------------------------------------------------------------------


def from_jax(
    fn: Callable,
    params: Any,
    example: Any,
    path: str | os.PathLike | None = None,
    opset: int | None = None,
    layout: str | None = None,
    preprocess: PreprocessLike = None,
    labels: LabelsLike = None,
) -> onnx.ModelProto:
    """Export `fn(params, x)` with jax2onnx; the batch axis of `example` becomes dynamic.

    `layout` ('nhwc', the Flax convention, or 'nchw') is stored when given.
    """
    _need("jax", "JAX", "jax")
    jax2onnx = _need("jax2onnx", "JAX", "jax")
    shape = tuple(int(v) for v in example.shape)

    def call(x):
        return fn(params, x)

    kwargs = {"opset": opset} if opset else {}
    with _quiet("jax2onnx"):
        result = jax2onnx.to_onnx(call, [("B",) + shape[1:]], **kwargs)
    proto = result if isinstance(result, onnx.ModelProto) else _to_proto(result)
    image = _image_settings(shape, layout) if layout else {}
    return _finish(proto, path, preprocess, labels, **_defaults_under(preprocess, image))


def _to_proto(model: Any) -> onnx.ModelProto:
    """An onnx_ir model (newer jax2onnx) → ModelProto."""
    try:
        import onnx_ir

        return onnx_ir.serde.serialize_model(model)
    except Exception as exc:  # pragma: no cover - depends on the converter's version
        raise TsgbError(
            f"the JAX converter returned {type(model).__name__}, not an ONNX model: {exc}"
        ) from None


# -- Paddle --------------------------------------------------------------------------------------


def from_paddle(
    layer: Any,
    example: Any,
    path: str | os.PathLike | None = None,
    opset: int = 17,
    preprocess: PreprocessLike = None,
    labels: LabelsLike = None,
) -> onnx.ModelProto:
    """Export a Paddle `nn.Layer` with paddle2onnx (input "input", dynamic batch, NCHW)."""
    paddle = _need("paddle", "Paddle", "paddle")
    _need("paddle2onnx", "Paddle", "paddle")
    shape = [int(v) for v in example.shape]
    spec = [paddle.static.InputSpec(shape=[None] + shape[1:], dtype="float32", name="input")]
    layer.eval()
    with tempfile.TemporaryDirectory(prefix="tsgb_export_") as tmp, _quiet("paddle2onnx"):
        prefix = os.path.join(tmp, "model")
        paddle.onnx.export(layer, prefix, input_spec=spec, opset_version=opset)
        proto = onnx.load(prefix + ".onnx", load_external_data=True)
    image = _image_settings(tuple(shape), "nchw")
    return _finish(proto, path, preprocess, labels, **_defaults_under(preprocess, image))

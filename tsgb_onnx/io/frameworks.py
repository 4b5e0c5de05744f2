"""Framework models handed to the `Explainer` directly: a PyTorch `nn.Module` or a Keras model
is exported in memory (`io.export`) and its module / layer names are mapped to the ONNX tensors
they produce, so ``layer="layer4"`` (PyTorch) or ``layer="block5_conv3"`` (Keras) names a
tensor of the exported graph.

The map reads the exporters' node names: the TorchScript exporter names every node after the
scopes of the modules that ran it (``/layer4/layer4.1/relu_1/Relu``), tf2onnx after the Keras
layer (``functional_1/block5_conv3_1/Relu``). A module's output is the tensor its scope hands
to a node outside it; for PyTorch the module's output shape, recorded with forward hooks on the
example, decides between candidates.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import onnx

from tsgb_onnx.errors import InputError, ModelError

__all__ = ["ExportedModel", "framework_of", "export_framework_model"]


@dataclass
class ExportedModel:
    """An in-memory export: the ONNX model and what the framework's names resolve to."""

    proto: onnx.ModelProto
    framework: str  # "torch" | "keras"
    layers: dict[str, str] = field(default_factory=dict)  # module / layer name -> ONNX tensor
    refused: dict[str, str] = field(default_factory=dict)  # name -> why it maps to no tensor

    def tensor_for(self, name: str) -> str:
        """The ONNX tensor that module / layer `name` outputs (ModelError when none)."""
        if name in self.layers:
            return self.layers[name]
        if name in self.refused:
            raise ModelError(f"layer '{name}': {self.refused[name]}")
        what = "module" if self.framework == "torch" else "layer"
        near = [n for n in self.layers if name in n or n in name][:6] or list(self.layers)[-6:]
        raise ModelError(
            f"layer '{name}' is neither a tensor of the exported graph nor a {what} name of "
            f"the model; {what}s near it: {', '.join(near) or 'none'}"
        )


def framework_of(model: Any) -> str | None:
    """'torch' for an `nn.Module`, 'keras' for a Keras model, else None (no framework is
    imported to decide)."""
    roots = {c.__module__.split(".")[0] for c in type(model).__mro__}
    if "torch" in roots and hasattr(model, "named_modules"):
        return "torch"
    if roots & {"keras", "tf_keras"} or ("tensorflow" in roots and hasattr(model, "layers")):
        return "keras"
    return None


def export_framework_model(model: Any, example: Any = None) -> ExportedModel:
    """Export `model` (`nn.Module` with `example`, or Keras) and map its layer names."""
    from tsgb_onnx.io.export import from_keras, from_torch

    framework = framework_of(model)
    if framework == "torch":
        if example is None:
            raise InputError(
                "a PyTorch module is exported on an example input: give example=x "
                "(a tensor of the input's shape, e.g. torch.zeros(1, 3, 224, 224))"
            )
        import torch

        if not isinstance(example, torch.Tensor):
            example = torch.as_tensor(example, dtype=torch.float32)
        calls = _module_calls(model, example)
        proto = from_torch(model, example)
        layers, refused = _map_scopes(proto, calls, _torch_components, anywhere=False)
        _follow_folded_norms(calls, layers, refused)
        return ExportedModel(proto, "torch", layers, refused)
    if framework == "keras":
        proto = from_keras(model)
        calls = {layer.name: _Call((layer.name,), 1, None) for layer in _keras_layers(model)}
        layers, refused = _map_scopes(proto, calls, _keras_components, anywhere=True)
        return ExportedModel(proto, "keras", layers, refused)
    raise InputError(f"cannot explain a {type(model).__name__}: give an ONNX model or its path")


@dataclass
class _Call:
    """How a module ran on the example: its chain of called ancestors, count and shape."""

    chain: tuple[str, ...]  # qualified names from the outermost called module to this one
    count: int
    shape: tuple[int, ...] | None  # the output's shape, when a single tensor
    kind: str = ""  # the module's class name
    order: int = 0  # when it returned, among all calls


def _module_calls(module: Any, example: Any) -> dict[str, _Call]:
    """Run `module` once on `example` with forward hooks: every called module's ancestors,
    call count and output shape."""
    import torch

    names = {id(m): name for name, m in module.named_modules() if name}
    stack: list[str] = []
    calls: dict[str, _Call] = {}
    handles = []

    def pre(mod, _inputs):
        name = names.get(id(mod))
        if name is not None:
            stack.append(name)

    def post(mod, _inputs, output):
        name = names.get(id(mod))
        if name is None:
            return
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else None
        seen = calls.get(name)
        count = (seen.count if seen else 0) + 1
        calls[name] = _Call(tuple(stack), count, shape, _kind(mod), len(calls))
        stack.pop()

    for _, mod in module.named_modules():
        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(post))
    try:
        with torch.no_grad():
            module.eval()(example)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _kind(module: Any) -> str:
    """The class name, prefixed "Conv:" / "BatchNorm:" for a subclass of torch's convolutions
    or batch norms (e.g. a TF-"same"-padding Conv2d)."""
    import torch

    name = type(module).__name__
    if isinstance(module, torch.nn.modules.conv._ConvNd) and not name.startswith("Conv"):
        return "Conv:" + name
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not name.startswith("Batch"):
        return "BatchNorm:" + name
    return name


def _follow_folded_norms(calls: dict[str, _Call], layers: dict, refused: dict) -> None:
    """The exporter folds an eval-mode BatchNorm into the Conv that feeds it: the Conv node's
    output is the BatchNorm's. Map the norm to it, and say so for the conv."""
    ordered = sorted(calls, key=lambda n: calls[n].order)
    for before, name in zip(ordered, ordered[1:]):
        folded = calls[name].kind.startswith("BatchNorm") and name in refused
        if folded and calls[before].kind.startswith("Conv") and before in layers:
            layers[name] = layers.pop(before)
            del refused[name]
            refused[before] = (
                f"the exporter folded the BatchNorm '{name}' into this convolution, so its "
                f"output is the BatchNorm's: name '{name}'"
            )


def _keras_layers(model: Any) -> Iterable[Any]:
    for layer in getattr(model, "layers", ()):
        if getattr(layer, "layers", None):  # a nested model: its own layers too
            yield from _keras_layers(layer)
        yield layer


def _torch_components(chain: tuple[str, ...]) -> list[set[str]]:
    """Scope names the TorchScript exporter may give each module of `chain`: the attribute
    name, or the qualified name (children of Sequential / ModuleList)."""
    parts = []
    parent = ""
    for name in chain:
        local = name[len(parent) + 1 :] if parent and name.startswith(parent + ".") else name
        parts.append({name, local, name.rsplit(".", 1)[-1]})
        parent = name
    return parts


def _keras_components(chain: tuple[str, ...]) -> list[set[str]]:
    return [{chain[-1]}]


def _matches(component: str, allowed: set[str]) -> bool:
    base = re.sub(r"_\d+$", "", component)  # a second call, or Keras' "_1" suffix
    return component in allowed or base in allowed


def _map_scopes(
    proto: onnx.ModelProto,
    calls: dict[str, _Call],
    components: Callable[[tuple[str, ...]], list[set[str]]],
    anywhere: bool,
) -> tuple[dict[str, str], dict[str, str]]:
    nodes = list(proto.graph.node)
    scopes = [[c for c in n.name.split("/")[:-1] if c] for n in nodes]
    consumers: dict[str, set[int]] = {}
    for i, node in enumerate(nodes):
        for t in node.input:
            consumers.setdefault(t, set()).add(i)
    outputs = {o.name for o in proto.graph.output}
    shapes = _static_shapes(proto)
    layers: dict[str, str] = {}
    refused: dict[str, str] = {}
    for name, call in calls.items():
        if call.count > 1:
            refused[name] = (
                f"the module runs {call.count} times in one forward pass, so it has no single "
                "output: name a module that runs once (e.g. the block around it)"
            )
            continue
        allowed = components(call.chain)
        inside = {i for i, scope in enumerate(scopes) if _in_scope(scope, allowed, anywhere)}
        handed = [
            t
            for i in sorted(inside)
            for t in nodes[i].output
            if t in outputs or consumers.get(t, set()) - inside
        ]
        if call.shape is not None and len(handed) > 1:
            fits = [t for t in handed if _fits(shapes.get(t), call.shape)]
            handed = fits or handed
        if not handed:
            refused[name] = (
                "it adds no node to the exported graph (an identity in eval mode, or fused "
                "into a neighbour by the exporter): name the layer before or after it"
            )
            continue
        layers[name] = handed[-1]
    return layers, refused


def _in_scope(scope: list[str], allowed: list[set[str]], anywhere: bool) -> bool:
    """Whether a node's scope path lies inside the module whose path matches `allowed`
    (Keras: a single component anywhere below the model's own scope)."""
    if anywhere:
        return any(_matches(c, allowed[0]) for c in scope)
    if len(scope) < len(allowed):
        return False
    return all(_matches(c, a) for c, a in zip(scope, allowed))


def _fits(shape, want: tuple[int, ...]) -> bool:
    if shape is None or len(shape) != len(want):
        return False
    return all(not isinstance(s, int) or s <= 0 or s == w for s, w in zip(shape[1:], want[1:]))


def _static_shapes(proto: onnx.ModelProto) -> dict[str, tuple]:
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # shapes only break ties; a model ONNX cannot infer still maps
        return {}
    shapes = {}
    for info in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    return shapes

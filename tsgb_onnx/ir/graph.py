"""Graph front end: load, check and canonicalise an ONNX model into a `Graph` view.

Canonical means: the file passed `onnx.checker`, shapes are inferred, constant
sub-graphs are folded into initializers (onnx-graphsurgeon), ceil_mode pools are written as
ceil_mode=0 pools with ONNX Runtime's output sizes, every node has a unique name, and the
model input and the logits tensor (before any final Softmax) are known.
"""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from tsgb_onnx.errors import (
    InputError,
    ModelError,
    NonFiniteError,
    RuntimeUnavailableError,
    is_out_of_memory,
    out_of_memory,
)

ModelLike = str | os.PathLike | bytes | onnx.ModelProto

FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
}
_SOFTMAX_OPS = {"Softmax", "LogSoftmax"}


class MetadataWarning(UserWarning):
    """The model's tsgb metadata cannot be read; it is ignored (said once per model)."""


@dataclass
class Node:
    """One ONNX node with decoded attributes and access to constant inputs."""

    name: str
    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]
    domain: str
    graph: Graph = field(repr=False)

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def is_const(self, i: int) -> bool:
        return i < len(self.inputs) and self.inputs[i] in self.graph.constants

    def const(self, i: int) -> np.ndarray | None:
        """Value of input `i` if it is a constant (initializer), else None."""
        if i >= len(self.inputs) or not self.inputs[i]:
            return None
        return self.graph.constants.get(self.inputs[i])

    def has_input(self, i: int) -> bool:
        return i < len(self.inputs) and bool(self.inputs[i])

    def input_shape(self, i: int) -> tuple | None:
        return self.graph.shapes.get(self.inputs[i])

    @property
    def opset(self) -> int:
        return self.graph.opset


class Graph:
    """A canonical, read-only view of an ONNX classifier graph."""

    def __init__(self, model: onnx.ModelProto, input_name: str, logits_name: str):
        self.model = model
        g = model.graph
        self.opset = next(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13
        )
        self.constants: dict[str, np.ndarray] = {
            t.name: numpy_helper.to_array(t) for t in g.initializer
        }
        self.dtypes: dict[str, int] = {}
        self.shapes: dict[str, tuple | None] = {}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            tt = vi.type.tensor_type
            self.dtypes[vi.name] = tt.elem_type
            if tt.HasField("shape"):
                self.shapes[vi.name] = tuple(
                    d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                    for d in tt.shape.dim
                )
            else:
                self.shapes[vi.name] = None
        for name, value in self.constants.items():
            self.dtypes[name] = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
            self.shapes[name] = tuple(value.shape)
        self.nodes: list[Node] = []
        seen: set[str] = set()
        for i, n in enumerate(g.node):
            name = n.name or f"{n.op_type}_{i}"
            while name in seen:
                name = f"{name}_{i}"
            seen.add(name)
            attrs = {a.name: _attr_value(a) for a in n.attribute}
            self.nodes.append(
                Node(name, n.op_type, list(n.input), list(n.output), attrs, n.domain, self)
            )
        self.producer: dict[str, Node] = {o: n for n in self.nodes for o in n.outputs if o}
        self.consumers: dict[str, list[Node]] = {}
        for n in self.nodes:
            for t in n.inputs:
                if t:
                    self.consumers.setdefault(t, []).append(n)
        self.input_name = input_name
        self.logits_name = logits_name
        self._noted_metadata = False
        self._input_layout: str | None = None
        self._last: set[str] | None = None  # channels-last tensors (`_channels_last`)

    # -- queries -----------------------------------------------------------------
    def is_float(self, tensor: str) -> bool:
        """True when `tensor` can carry a backward signal (floating, not constant)."""
        if tensor in self.constants or not tensor:
            return False
        return self.dtypes.get(tensor, onnx.TensorProto.FLOAT) in FLOAT_TYPES

    def has_tensor(self, tensor: str) -> bool:
        return tensor == self.input_name or tensor in self.producer

    @property
    def input_shape(self) -> tuple | None:
        return self.shapes.get(self.input_name)

    @property
    def num_classes(self) -> int | None:
        shape = self.shapes.get(self.logits_name)
        if shape and len(shape) == 2 and isinstance(shape[1], int) and shape[1] > 0:
            return shape[1]
        return None

    def channel_axis(self, tensor: str) -> int:
        """Channel axis of `tensor`: -1 when it is channels-last (every consumer transposes
        it to channels-first, as at the NHWC inputs of TensorFlow/Keras exports; or it is a
        Transpose's channels-first to channels-last, or what element-wise ops of the same
        shape make of one), else 1. The model input's is `input_layout`'s."""
        shape = self.shapes.get(tensor)
        consumers = self.consumers.get(tensor, [])
        if tensor == self.input_name and shape and len(shape) >= 3:
            return -1 if self.input_layout() == "nhwc" else 1
        if not shape or len(shape) < 3:
            return 1
        rank = len(shape)
        if tensor in self._channels_last():
            return -1
        to_first = [0, rank - 1] + list(range(1, rank - 1))
        if consumers and all(
            n.op_type == "Transpose" and list(n.attr("perm") or []) == to_first for n in consumers
        ):
            return -1
        return 1

    def _channels_last(self) -> set[str]:
        """The tensors a Transpose makes channels-last, and the outputs of element-wise ops
        (`_LAYOUT_FOLLOWING`) of the same shape as a channels-last input, in topological
        order: a layer read after a Transpose and an activation is still channels-last."""
        if self._last is None:
            last: set[str] = set()
            for node in self.nodes:
                out = node.outputs[0] if node.outputs else ""
                shape = self.shapes.get(out)
                if not out or not shape or len(shape) < 3:
                    continue
                rank = len(shape)
                if node.op_type == "Transpose":
                    perm = list(node.attr("perm") or [])
                    if perm == [0] + list(range(2, rank)) + [1]:
                        last.add(out)
                elif node.op_type in _LAYOUT_FOLLOWING and any(
                    t in last and (self.shapes.get(t) or ())[1:] == shape[1:] for t in node.inputs
                ):
                    last.add(out)
            self._last = last
        return self._last

    def input_layout(self) -> str:
        """The model input's layout, 'nchw' or 'nhwc': the exporters' metadata
        (`declared_layout`), else what the graph does with the input (`graph_layout`),
        else its shape (`shape_layout`: RGB/gray channels on one side only); an
        `InputError` saying how to state it when none of them decides."""
        if self._input_layout is None:
            layout = self.declared_layout() or self.graph_layout() or self.shape_layout()
            if layout is None:
                raise InputError(
                    f"the layout of the model input '{self.input_name}' (shape "
                    f"{_shown(self.input_shape)}) cannot be read from the graph: store it "
                    "in the model, tsgb_onnx.export.attach_metadata(model, layout='nhwc' "
                    "or 'nchw'), and explain that model"
                )
            self._input_layout = layout
        return self._input_layout

    def graph_layout(self) -> str | None:
        """'nhwc' when the input reaches the network, through element-wise steps
        (Keras' Rescaling / Normalization), only as a Transpose to channels-first or a
        Reshape that moves its trailing size-1 channel axis to axis 1 (what tf2onnx writes
        for one channel); 'nchw' when it reaches only ops that read axis 1 as channels
        (Conv, pools, normalisations); None otherwise."""
        verdicts = set()
        stack, seen = [self.input_name], set()
        while stack and len(seen) < 64:
            tensor = stack.pop()
            if tensor in seen:
                continue
            seen.add(tensor)
            rank = len(self.shapes.get(tensor) or ())
            for node in self.consumers.get(tensor, []):
                if node.op_type in _LAYOUT_KEEPING and _same_rank(self, node, rank):
                    stack.extend(o for o in node.outputs if o)
                else:
                    verdicts.add(_layout_at(self, node, tensor))
        verdicts.discard(None)  # (a Shape or a Flatten of the input says nothing)
        return verdicts.pop() if len(verdicts) == 1 else None

    def shape_layout(self) -> str | None:
        """'nhwc' when only the input's last size is a channel count (1, 3 or 4), 'nchw'
        when only its axis-1 size is, else None."""
        shape = self.input_shape or ()
        if len(shape) < 3:
            return None
        first, last = shape[1] in _CHANNEL_COUNTS, shape[-1] in _CHANNEL_COUNTS
        if first == last:
            return None
        return "nhwc" if last else "nchw"

    def declared_layout(self) -> str | None:
        """The input layout ('nchw' / 'nhwc') stored by the exporters in the model metadata
        (`tsgb.preprocess`), if any: it decides for channels-last models without a Transpose.
        Unreadable metadata is ignored with one `MetadataWarning` per graph."""
        for prop in self.model.metadata_props:
            if prop.key == "tsgb.preprocess":
                try:
                    layout = json.loads(prop.value).get("layout")
                except (ValueError, AttributeError) as exc:
                    if not self._noted_metadata:
                        self._noted_metadata = True
                        warnings.warn(
                            "the model's 'tsgb.preprocess' metadata is not a JSON object "
                            f"({_first_line(exc)}): its input layout is ignored and the "
                            "channel axis is read from the graph",
                            MetadataWarning,
                            stacklevel=3,
                        )
                    return None
                return layout if layout in ("nchw", "nhwc") else None
        return None

    def op_types(self) -> list[str]:
        return sorted({n.op_type for n in self.nodes})

    def path_nodes(self) -> list[Node]:
        """The nodes the logits depend on (through any tensor), in topological order."""
        needed: set[str] = set()
        stack = [self.logits_name]
        while stack:
            node = self.producer.get(stack.pop())
            if node is not None and node.name not in needed:
                needed.add(node.name)
                stack.extend(t for t in node.inputs if t)
        return [n for n in self.nodes if n.name in needed]


# -- the input's layout ----------------------------------------------------------------------
_CHANNEL_COUNTS = (1, 3, 4)  # grey, RGB, RGBA
# element-wise ops that keep the layout of their input (preprocessing folded into the model)
_LAYOUT_KEEPING = frozenset(
    [
        "Identity",
        "Cast",
        "Mul",
        "Add",
        "Sub",
        "Div",
        "Neg",
        "Abs",
        "Sqrt",
        "Relu",
        "Clip",
        "Max",
        "Min",
        "Dropout",
        "QuantizeLinear",
        "DequantizeLinear",
    ]
)
# element-wise ops whose output is laid out as their same-shaped input (`_channels_last`)
_LAYOUT_FOLLOWING = _LAYOUT_KEEPING | {
    "Sigmoid",
    "Tanh",
    "HardSigmoid",
    "HardSwish",
    "LeakyRelu",
    "PRelu",
    "Elu",
    "Selu",
    "Celu",
    "Softplus",
    "Gelu",
    "Erf",
    "Exp",
    "Log",
    "Pow",
    "Mish",
}
# ops whose input 0 is channels-first by the ONNX spec
_CHANNELS_FIRST = frozenset(
    [
        "Conv",
        "ConvTranspose",
        "ConvInteger",
        "QLinearConv",
        "MaxPool",
        "AveragePool",
        "LpPool",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "GlobalLpPool",
        "BatchNormalization",
        "InstanceNormalization",
        "LRN",
        "DepthToSpace",
        "SpaceToDepth",
    ]
)


def _same_rank(graph: Graph, node: Node, rank: int) -> bool:
    """Whether `node`'s output keeps its input's rank (unknown shapes: assumed so)."""
    out = graph.shapes.get(node.outputs[0]) if node.outputs else None
    return out is None or not rank or len(out) == rank


def _layout_at(graph: Graph, node: Node, tensor: str) -> str | None:
    """What `node`, reading `tensor` (the input after element-wise steps), says of the
    input's layout: 'nhwc', 'nchw' or None (nothing)."""
    shape = graph.shapes.get(tensor) or ()
    rank = len(shape)
    if rank < 3 or not node.inputs or node.inputs[0] != tensor:
        return None
    if node.op_type in _CHANNELS_FIRST:
        return "nchw"
    if node.op_type == "Transpose":
        perm = list(node.attr("perm") or [])
        return "nhwc" if perm == [0, rank - 1] + list(range(1, rank - 1)) else None
    if node.op_type == "Reshape":
        out = graph.shapes.get(node.outputs[0]) or ()
        moved = (1,) + tuple(shape[1:-1])
        if shape[-1] == 1 and len(out) == rank and tuple(out[1:]) == moved:
            return "nhwc" if all(isinstance(d, int) for d in moved) else None
    return None


def _shown(shape: tuple | None) -> str:
    return "unknown" if shape is None else "[" + ", ".join(str(d) for d in shape) + "]"


# constant inputs where +-Inf is a meaningful bound, not a broken weight (NaN never is)
_BOUND_INPUTS = {"Clip": (1, 2), "Pad": (2,), "Where": (1, 2), "Max": None, "Min": None}


def _is_bound(node: Node, i: int) -> bool:
    if node.op_type not in _BOUND_INPUTS:
        return False
    allowed = _BOUND_INPUTS[node.op_type]
    return allowed is None or i in allowed


def check_finite_constants(graph: Graph) -> None:
    """NonFiniteError naming the first constant on the path to the logits that holds NaN
    (or Inf, where it is not a bound such as Clip's max), and the node that reads it.

    Cheap (one `isfinite` per float initializer the logits depend on), so it runs whenever
    an explainer is built or a model converted: such a model can only give NaN maps."""
    checked: set[str] = set()
    for node in graph.path_nodes():
        for i, name in enumerate(node.inputs):
            value = graph.constants.get(name)
            if value is None or name in checked or value.dtype.kind != "f":
                continue
            checked.add(name)
            bad = np.isnan(value) if _is_bound(node, i) else ~np.isfinite(value)
            if bad.any():
                raise NonFiniteError(_bad_constant_message(name, node, i, value, bad))


def _bad_constant_message(name: str, node: Node, i: int, value: np.ndarray, bad) -> str:
    where = tuple(int(k) for k in np.argwhere(bad)[0]) if value.ndim else ()
    kind = "NaN" if np.isnan(value).any() else "Inf"
    return (
        f"the model's constant '{name}' (input {i} of node '{node.name}' ({node.op_type})) "
        f"holds {kind} ({int(bad.sum())} of {value.size} values, first at index {where}), so "
        "every map and logit it reaches is NaN/Inf: re-export the model from finite weights"
    )


def _attr_value(a: onnx.AttributeProto) -> Any:
    value = onnx.helper.get_attribute_value(a)
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode() for v in value]
    return value


def _describe(model: ModelLike) -> str:
    if isinstance(model, (str, os.PathLike)):
        return f"'{os.fspath(model)}'"
    if isinstance(model, bytes):
        return "the model bytes"
    return "the model"


def load_model(model: ModelLike) -> onnx.ModelProto:
    """Read a path, bytes or ModelProto and run the ONNX checker; one clear error if bad."""
    what = _describe(model)
    if isinstance(model, onnx.ModelProto):
        proto = model
    elif isinstance(model, (bytes, bytearray)):
        proto = _parse(bytes(model), what)
    elif isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise ModelError(f"model file {what} does not exist")
        proto = _parse(path.read_bytes(), what, base_dir=path.parent)
    else:
        raise ModelError(
            f"expected a path, bytes or onnx.ModelProto for the model, got {type(model).__name__}"
        )
    if len(proto.graph.node) == 0:
        raise ModelError(f"{what} holds no ONNX graph (no nodes): is it an ONNX model file?")
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:  # onnx raises several types here
        if is_out_of_memory(exc):
            raise out_of_memory(exc, f"checking {what}") from exc
        raise ModelError(f"{what} failed the ONNX checker: {_first_line(exc)}") from exc
    return proto


def _parse(data: bytes, what: str, base_dir: Path | None = None) -> onnx.ModelProto:
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as exc:
        if is_out_of_memory(exc):
            raise out_of_memory(exc, f"reading {what}") from exc
        raise ModelError(
            f"{what} is not a readable ONNX file (truncated or not a protobuf): {exc}"
        ) from exc
    if base_dir is not None and any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer
    ):
        try:
            onnx.external_data_helper.load_external_data_for_model(proto, str(base_dir))
        except Exception as exc:
            if is_out_of_memory(exc):
                raise out_of_memory(exc, f"loading the external data of {what}") from exc
            raise ModelError(f"{what}: cannot load its external data: {exc}") from exc
    return proto


def _zero_pad_amounts(node: onnx.NodeProto, constants: dict) -> list[int] | None:
    """The spatial pads [begin..., end...] of a constant-zero Pad that pads no batch or
    channel axis and crops nothing, else None."""
    attrs = {a.name: _attr_value(a) for a in node.attribute}
    if attrs.get("mode", "constant") != "constant":
        return None
    if len(node.input) > 1 and node.input[1]:
        pads = constants.get(node.input[1])
        if len(node.input) > 2 and node.input[2]:
            value = constants.get(node.input[2])
            if value is None or value.size != 1 or float(value.ravel()[0]) != 0.0:
                return None
        if len(node.input) > 3 and node.input[3]:
            return None  # axes input: not worth the generality here
    else:
        pads, value = attrs.get("pads"), attrs.get("value", 0.0)
        if float(value) != 0.0:
            return None
    if pads is None:
        return None
    pads = [int(v) for v in np.asarray(pads).ravel()]
    rank = len(pads) // 2
    if rank < 3 or min(pads) < 0 or any(pads[a] or pads[a + rank] for a in (0, 1)):
        return None
    return pads[2:rank] + pads[rank + 2 :]


def _explicit_conv_pads(conv: onnx.NodeProto, spatial: int) -> list[int] | None:
    """A Conv's pads [begin..., end...] over `spatial` axes; None with auto_pad or another
    length."""
    attrs = {a.name: _attr_value(a) for a in conv.attribute}
    if attrs.get("auto_pad", "NOTSET") != "NOTSET":
        return None
    pads = [int(p) for p in attrs.get("pads", [0] * (2 * spatial))]
    return pads if len(pads) == 2 * spatial else None


def fold_pads_into_convs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold constant-zero spatial Pads whose output only feeds Convs (as their data input,
    with explicit pads) into those Convs' pads. The function is the same, the padded copy is
    never made (ONNX Runtime does not fuse such Pads itself: EfficientNet-Lite0's plain
    inference gets ~20% faster), and backward rules read the unpadded input."""
    graph = model.graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    removed = []
    for node in graph.node:
        if node.op_type != "Pad" or node.domain not in ("", "ai.onnx") or node.output[0] in outputs:
            continue
        amounts = _zero_pad_amounts(node, constants)
        users = consumers.get(node.output[0], [])
        if (
            amounts is None
            or not users
            or any(
                u.op_type != "Conv"
                or list(u.input).count(node.output[0]) != 1
                or u.input[0] != node.output[0]
                for u in users
            )
        ):
            continue
        current = [_explicit_conv_pads(u, len(amounts) // 2) for u in users]
        if any(pads is None for pads in current):
            continue
        for user, pads in zip(users, current):
            for attr in [a for a in user.attribute if a.name in ("pads", "auto_pad")]:
                user.attribute.remove(attr)
            user.attribute.append(
                onnx.helper.make_attribute("pads", [p + q for p, q in zip(pads, amounts)])
            )
            user.input[0] = node.input[0]
        removed.append(node)
    for node in removed:
        graph.node.remove(node)
    gone = {n.output[0] for n in removed}
    used = {name for n in graph.node for name in n.input}
    unused = {name for n in removed for name in n.input[1:]} - used
    for info in [v for v in graph.value_info if v.name in gone]:
        graph.value_info.remove(info)
    for init in [t for t in graph.initializer if t.name in unused]:
        graph.initializer.remove(init)
    return model


def canonicalize(proto: onnx.ModelProto, fold: bool = True) -> onnx.ModelProto:
    """Infer shapes, fold constant sub-graphs and zero Pads into the Convs they feed, write
    ceil_mode pools as ceil_mode=0 pools (`resolve_ceil_pools`), and fold the shape chains
    that read static sizes (`fold_shape_chains`) (returns a new model)."""
    model = proto
    if fold:
        model = fold_pads_into_convs(fold_constants(proto))
    model = resolve_ceil_pools(_infer_shapes(model))
    return fold_shape_chains(model) if fold else model


def fold_shape_chains(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold, until nothing changes, every read of a static size (`fold_static_shape_reads`)
    and what it computes: exporters compute TF-"SAME" pads, crops and reshapes from
    `Shape` of tensors whose size is fixed once the input's spatial size is, and each fold
    can make the next tensor's shape static (timm's `tf_*` models pad before every strided
    conv). The batch size stays dynamic: an entry of axis 0 is never folded."""
    for _ in range(len(model.graph.node) + 1):
        if not fold_static_shape_reads(model):
            break
        model = resolve_ceil_pools(_infer_shapes(fold_pads_into_convs(fold_constants(model))))
    return model


def fold_static_shape_reads(model: onnx.ModelProto) -> int:
    """Replace by int64 initializers (in place) the `Shape` nodes, and the `Gather` / `Slice`
    nodes reading a `Shape`, whose values are static sizes by the model's inferred shapes
    (`resolve_ceil_pools` has made them ONNX Runtime's); entries of axis 0 (the batch) never
    are. Returns how many nodes were replaced."""
    graph = model.graph
    dims = {
        vi.name: _dims(vi.type.tensor_type)
        for vi in list(graph.input) + list(graph.value_info) + list(graph.output)
        if vi.type.tensor_type.HasField("shape")
    }
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    folded: dict[int, np.ndarray] = {}  # id(node) -> the value of its output
    for node in graph.node:
        if node.op_type != "Shape" or node.domain not in ("", "ai.onnx"):
            continue
        entries = _shape_entries(node, dims.get(node.input[0]))
        if entries is None or node.output[0] in outputs:
            continue
        if all(e is not None for e in entries):
            folded[id(node)] = np.array(entries, dtype=np.int64)
            continue
        for user in consumers.get(node.output[0], []):
            if user.input[0] != node.output[0] or user.output[0] in outputs:
                continue
            value = _static_read(user, entries, constants)
            if value is not None:
                folded[id(user)] = value
    if not folded:
        return 0
    kept = []
    for node in graph.node:
        if id(node) in folded:
            graph.initializer.append(numpy_helper.from_array(folded[id(node)], node.output[0]))
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    return len(folded)


def _shape_entries(node: onnx.NodeProto, dims: list | None) -> list | None:
    """A Shape node's output as a list of static sizes, None where an entry is dynamic or
    of axis 0 (the batch); None when the input's rank is unknown."""
    if not dims:
        return None
    entries: list = [None] + [d if isinstance(d, int) and d > 0 else None for d in dims[1:]]
    attrs = {a.name: _attr_value(a) for a in node.attribute}
    start, end = int(attrs.get("start", 0)), attrs.get("end")
    return entries[start : None if end is None else int(end)]  # ONNX clamps like Python


def _static_read(node: onnx.NodeProto, entries: list, constants: dict) -> np.ndarray | None:
    """The value of a Gather / Slice (axis 0, constant indices) of a shape (its input 0)
    whose `entries` are known where not None, if every entry it reads is known."""
    picked = None
    if node.op_type == "Gather":
        attrs = {a.name: _attr_value(a) for a in node.attribute}
        index = constants.get(node.input[1])
        if int(attrs.get("axis", 0)) != 0 or index is None:
            return None
        rank = len(entries)
        flat = [int(i) for i in index.reshape(-1)]
        if not all(-rank <= i < rank for i in flat):
            return None
        picked = [entries[i] for i in flat]
        shape = index.shape
    elif node.op_type == "Slice" and len(node.input) >= 3:
        given = [constants.get(n) if n else None for n in list(node.input[1:5])]
        if any(v is None for v in given[:2]) or any(
            n and v is None for n, v in zip(node.input[3:5], given[2:])
        ):
            return None
        axes, steps = (given + [None, None])[2:4]
        if axes is not None and [int(a) for a in axes.reshape(-1)] not in ([0], [-1]):
            return None
        step = 1 if steps is None else int(steps.reshape(-1)[0])
        if step == 0:
            return None
        picked = entries[int(given[0].reshape(-1)[0]) : int(given[1].reshape(-1)[0]) : step]
        shape = (len(picked),)
    if picked is None or any(e is None for e in picked):
        return None
    return np.array(picked, dtype=np.int64).reshape(shape)


def _infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:
        if is_out_of_memory(exc):
            raise out_of_memory(exc, "inferring the model's shapes") from exc
        raise ModelError(f"shape inference failed on the model: {exc}") from exc


# -- ceil_mode pools --------------------------------------------------------------------------
_CEIL_POOLS = {"MaxPool", "AveragePool", "LpPool"}
# MaxPool's explicit end padding: the lowest finite value, which ONNX Runtime's MaxPool
# starts each window's maximum from (so even a window of padding alone gives the same)
_LOWEST = {
    onnx.TensorProto.FLOAT: float(np.finfo(np.float32).min),
    onnx.TensorProto.DOUBLE: float(np.finfo(np.float64).min),
    onnx.TensorProto.FLOAT16: float(np.finfo(np.float16).min),
}


def pool_output_size(
    size: int, kernel: int, stride: int, dilation: int, begin: int, end: int, ceil: bool
) -> int:
    """A pool's output length on one axis as ONNX Runtime (and PyTorch) compute it: in
    ceil_mode a last window that would start in the end padding is dropped (ONNX's shape
    inference, following the spec's formula, keeps it)."""
    span = size + begin + end - (kernel - 1) * dilation - 1
    if not ceil:
        return span // stride + 1
    out = -(-span // stride) + 1
    if (out - 1) * stride >= size + begin:
        out -= 1
    return out


def resolve_ceil_pools(model: onnx.ModelProto) -> onnx.ModelProto:
    """Write every MaxPool / AveragePool / LpPool with ceil_mode=1 and a static spatial input
    shape as a ceil_mode=0 pool with the end pads that give ONNX Runtime's output size, so
    that the shapes ONNX infers (for this graph and for the explainer graphs built on it)
    are the ones ONNX Runtime computes, and so that the pools' backward rules see plain
    windows. The outputs stay exactly ONNX Runtime's:

    * a window's part in the added end padding is ignored by MaxPool and LpPool (zeros
      add nothing to a p-norm), and by AveragePool without count_include_pad;
    * an AveragePool with count_include_pad that needs more end padding gets its own pads
      as an explicit zero Pad and stops counting the pool's (added) pads, so each window's
      divisor still counts its original padding and not the overhang;
    * ONNX Runtime refuses pads >= kernel (a dilated pool can need them): MaxPool and
      LpPool pad those axes' ends with an explicit Pad (MaxPool with the lowest finite
      value); an AveragePool that would need one is left as it is.

    The shapes are inferred again after a rewrite; a pool whose input shape was inferred
    through a pool whose output size ONNX's formula got wrong waits for the next pass.
    `model` (shapes inferred) is edited in place; the result may be a re-inferred copy."""
    for _ in range(len(model.graph.node) + 1):
        reinfer, deferred = _resolve_ceil_pass(model)
        if reinfer:
            model = _infer_shapes(model)
        if not deferred:
            break
    return model


def _resolve_ceil_pass(model: onnx.ModelProto) -> tuple[bool, bool]:
    """One pass of `resolve_ceil_pools` (in place): (shapes to infer again, a pool
    deferred). A rewrite that only changes attributes keeps every inferred shape."""
    graph = model.graph
    if not any(_is_ceil_pool(n) for n in graph.node):
        return False, False
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    types = {
        vi.name: vi.type.tensor_type
        for vi in list(graph.input) + list(graph.value_info) + list(graph.output)
    }
    taken = {t.name for t in graph.initializer} | set(types)
    taken |= {name for n in graph.node for name in (n.name, *n.input, *n.output)}
    stale: set[str] = set()  # tensors whose inferred shape may hold ONNX's wrong size
    changed = reinfer = deferred = False
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if _is_ceil_pool(node) and node.input[0] in stale:
            deferred = True
        elif _is_ceil_pool(node):
            rewrite = _ceil_rewrite(node, types.get(node.input[0]), opset, taken)
            if rewrite is not None:
                extra, initializers, out = rewrite
                nodes.extend(extra)
                graph.initializer.extend(initializers)
                changed = True
                reinfer = reinfer or bool(extra)
                declared = types.get(node.output[0])
                if declared is not None and _dims(declared)[2:] != out:
                    stale.add(node.output[0])
        if any(name in stale for name in node.input):
            stale.update(name for name in node.output if name)
        nodes.append(node)
    if changed:
        del graph.node[:]
        graph.node.extend(nodes)
        for info in [v for v in graph.value_info if v.name in stale]:
            graph.value_info.remove(info)
        for info in [v for v in graph.output if v.name in stale]:
            for dim in info.type.tensor_type.shape.dim:  # inference fills them again
                if dim.HasField("dim_value"):
                    dim.Clear()
    return reinfer or bool(stale), deferred


def _is_ceil_pool(node: onnx.NodeProto) -> bool:
    if node.op_type not in _CEIL_POOLS or node.domain not in ("", "ai.onnx"):
        return False
    attrs = {a.name: _attr_value(a) for a in node.attribute}
    return bool(attrs.get("ceil_mode", 0)) and attrs.get("auto_pad", "NOTSET") == "NOTSET"


def _dims(tensor_type) -> list:
    if not tensor_type.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]


def _fresh(taken: set[str], hint: str) -> str:
    name, k = hint, 0
    while name in taken:
        k += 1
        name = f"{hint}_{k}"
    taken.add(name)
    return name


def _ceil_rewrite(node: onnx.NodeProto, x_type, opset: int, taken: set[str]):
    """Rewrite the ceil_mode pool `node` in place as ceil_mode=0: (nodes to insert before
    it, initializers, its output spatial size), or None (left as it is)."""
    attrs = {a.name: _attr_value(a) for a in node.attribute}
    kernel = [int(k) for k in attrs.get("kernel_shape") or ()]
    nd = len(kernel)
    spatial = _dims(x_type)[2:] if x_type is not None else []
    if not nd or len(spatial) != nd or not all(isinstance(d, int) and d > 0 for d in spatial):
        return None
    strides = [int(s) for s in attrs.get("strides") or [1] * nd]
    dilations = [int(d) for d in attrs.get("dilations") or [1] * nd]
    pads = [int(p) for p in attrs.get("pads") or [0] * (2 * nd)]
    if len(strides) != nd or len(dilations) != nd or len(pads) != 2 * nd or min(pads) < 0:
        return None
    begins, ends = pads[:nd], pads[nd:]
    out, needed = [], []  # output size, end pad that gives it with ceil_mode=0
    for i in range(nd):
        extent = (kernel[i] - 1) * dilations[i] + 1
        if spatial[i] + begins[i] + ends[i] < extent:
            return None
        size = pool_output_size(
            spatial[i], kernel[i], strides[i], dilations[i], begins[i], ends[i], True
        )
        out.append(size)
        needed.append(max((size - 1) * strides[i] + extent - spatial[i] - begins[i], 0))
    count_pad = node.op_type == "AveragePool" and bool(attrs.get("count_include_pad", 0))
    node_begins, node_ends = list(begins), list(needed)
    explicit_begins, explicit_ends, value = [0] * nd, [0] * nd, 0.0
    if count_pad and any(needed[i] > ends[i] for i in range(nd)):
        # the overhang must not count: the pool's own pads become a zero Pad, counted as data
        explicit_begins = list(begins)
        explicit_ends = [min(ends[i], needed[i]) for i in range(nd)]  # (no window reads more)
        node_begins, node_ends = [0] * nd, [needed[i] - explicit_ends[i] for i in range(nd)]
        count_pad = False
        if any(node_ends[i] >= kernel[i] for i in range(nd)):
            return None
    elif any(needed[i] >= kernel[i] for i in range(nd)):
        if node.op_type == "AveragePool":
            return None  # explicit padding would be counted (ONNX Runtime wants pads < kernel)
        if node.op_type == "MaxPool":
            if len(node.output) > 1 and node.output[1]:
                return None  # its indices would index the padded tensor
            if x_type.elem_type not in _LOWEST:
                return None
            value = _LOWEST[x_type.elem_type]
        for i in range(nd):
            if needed[i] >= kernel[i]:
                explicit_ends[i], node_ends[i] = needed[i], 0
    extra, initializers = [], []
    if any(explicit_begins) or any(explicit_ends):
        full = [0, 0] + explicit_begins + [0, 0] + explicit_ends
        padded = _fresh(taken, f"{node.output[0]}_ceil_pad")
        name = _fresh(taken, f"{node.name or node.op_type}_ceil_pad")
        if opset >= 11:
            inputs = [node.input[0], _fresh(taken, f"{padded}_pads")]
            initializers.append(numpy_helper.from_array(np.array(full, np.int64), inputs[1]))
            if value:
                inputs.append(_fresh(taken, f"{padded}_value"))
                initializers.append(
                    onnx.helper.make_tensor(inputs[2], x_type.elem_type, [], [value])
                )
            extra.append(onnx.helper.make_node("Pad", inputs, [padded], name=name))
        else:
            extra.append(
                onnx.helper.make_node(
                    "Pad", [node.input[0]], [padded], name=name, pads=full, value=value
                )
            )
        node.input[0] = padded
    keep = [a for a in node.attribute if a.name not in ("pads", "ceil_mode", "count_include_pad")]
    del node.attribute[:]
    node.attribute.extend(keep)
    node.attribute.append(onnx.helper.make_attribute("pads", node_begins + node_ends))
    if node.op_type == "AveragePool":
        node.attribute.append(onnx.helper.make_attribute("count_include_pad", int(count_pad)))
    return extra, initializers, out


def fold_constants(proto: onnx.ModelProto) -> onnx.ModelProto:
    """onnx-graphsurgeon's constant folding (a new model), its failures raised.

    With `error_ok=True` graphsurgeon logs a failed ONNX Runtime call (out of memory, say)
    and returns the graph unfolded, which then fails much later with a misleading error
    (a Clip whose bounds are not constants); here the real cause is the error."""
    import onnx_graphsurgeon as gs
    from onnx_graphsurgeon.logger import G_LOGGER

    if importlib.util.find_spec("onnxruntime") is None:
        raise RuntimeUnavailableError(
            "ONNX Runtime is not installed (constant folding and every explanation need it): "
            "pip install 'tsgb-onnx[cpu]' (or 'tsgb-onnx[gpu]' for CUDA)"
        )
    with G_LOGGER.suppress():  # it prints to stdout; its failures are raised instead
        try:
            g = gs.import_onnx(proto)
            g.fold_constants(error_ok=False).cleanup(remove_unused_graph_inputs=False)
            g.toposort()
            folded = gs.export_onnx(g, do_type_check=False)
        except Exception as exc:
            if is_out_of_memory(exc):
                raise out_of_memory(exc, "folding the model's constants in ONNX Runtime") from exc
            raise ModelError(
                f"folding the model's constants failed (onnx-graphsurgeon with ONNX Runtime): "
                f"{_first_line(exc)}: check that the model runs in ONNX Runtime"
            ) from exc
    folded.ir_version = proto.ir_version
    del folded.opset_import[:]
    folded.opset_import.extend(proto.opset_import)
    folded.metadata_props.extend(proto.metadata_props)
    return folded


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def build_graph(model: ModelLike, output: str | None = None, fold: bool = True) -> Graph:
    """Load, check and canonicalise `model`; pick its input and its logits tensor."""
    proto = canonicalize(load_model(model), fold=fold)
    g = proto.graph
    init = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in init]
    float_inputs = [i for i in inputs if i.type.tensor_type.elem_type in FLOAT_TYPES]
    if len(float_inputs) != 1:
        names = ", ".join(i.name for i in inputs) or "none"
        raise ModelError(f"expected exactly one floating-point model input, found: {names}")
    input_name = float_inputs[0].name
    outputs = [o.name for o in g.output]
    if output is None:
        if len(outputs) != 1:
            raise ModelError(
                f"the model has {len(outputs)} outputs ({', '.join(outputs)}): "
                "choose the logits with output=NAME (CLI: --output NAME)"
            )
        logits = outputs[0]
    else:
        if output not in outputs:
            producers = {o for n in g.node for o in n.output}
            if output not in producers:
                raise ModelError(
                    f"output '{output}' is not a tensor of the model; outputs are: "
                    + ", ".join(outputs)
                )
        logits = output
    # Cut a trailing Softmax / LogSoftmax: the backward starts at its input.
    producers = {o: n for n in g.node for o in n.output}
    while logits in producers and producers[logits].op_type in _SOFTMAX_OPS | {"Identity"}:
        logits = producers[logits].input[0]
    graph = Graph(proto, input_name, logits)
    if not graph.is_float(logits):
        raise ModelError(f"the logits tensor '{logits}' is not floating-point")
    return graph

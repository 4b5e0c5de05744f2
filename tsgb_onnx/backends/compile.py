"""The compiler behind `tsgb convert`: a method's reverse program as a self-contained ONNX
explainer (the public entry points are `tsgb_onnx.convert.convert` / `convert_vjp`).

The reverse program is data, so the array executor can run it with the ONNX namespace
(`backends.onnx_ops.OnnxOps`): every rule appends standard ONNX nodes instead of computing.
The nodes are appended to the (canonicalised) model itself, so the explainer runs in any
ONNX runtime with no tsgb_onnx code on the path:

    inputs:  the model input, and optional int64 `target` [B] or [1] (< 0 or not fed: top-1)
             (a dense-target explainer: float32 `seed` of the output's shape instead)
    outputs: the model's own outputs, `saliency` [B, *spatial], and `signal` (keep_signal)
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from tsgb_onnx.backends.onnx_ops import Batch, GraphBuilder, OnnxOps, Sym
from tsgb_onnx.engine.executor import run_program
from tsgb_onnx.engine.program import REFERENCE, Program, plan
from tsgb_onnx.engine.record import ForwardRecorder
from tsgb_onnx.engine.rule import RuleSource
from tsgb_onnx.errors import ModelError, TsgbError, is_out_of_memory, out_of_memory
from tsgb_onnx.ir.graph import Graph, ModelLike, build_graph, check_finite_constants, load_model

EXPLAINER_KEY = "tsgb_onnx.explainer"
TARGET, SALIENCY, SIGNAL, SEED = "target", "saliency", "signal", "seed"
ACTIVATION = "activation"  # the layer's value, float32 (the Explainer's attribution)
# the Explainer's taps (several layers from one backward): signal and value of tap i
TAP_SIGNAL, TAP_VALUE = "signal::tap{}", "activation::tap{}"
MIN_OPSET = 13  # the emitter writes opset-13 forms (ReduceSum/Split/Unsqueeze axes as inputs)


class ConvertWarning(UserWarning):
    """Notices from `convert` (e.g. the model's opset was upgraded)."""


def compile_explainer(
    graph: Graph,
    method: RuleSource,
    options: dict,
    layer: str | None,
    taps: tuple[str, ...] = (),
    dense: bool = False,
) -> onnx.ModelProto:
    """The explainer model `Explainer` runs: outputs `saliency`, `signal`, `activation` and
    the logits, plus the signal and value of every tap (`TAP_SIGNAL` / `TAP_VALUE`). A method
    with a constant reference input (DeepLIFT's baseline) gets the reference forward pass
    as a renamed copy of the model's nodes. `dense`: the backward's seed is the input `seed`
    (a dense output's channel one-hot x mask, any output shape) instead of one_hot(target)."""
    return compile_model(
        graph,
        method,
        options,
        layer,
        graph.logits_name,
        keep_signal=True,
        seed_input=False,
        expose_logits=True,
        taps=tuple(taps),
        dense_seed=dense,
    )


@dataclass
class _Emitted:
    builder: GraphBuilder
    outputs: list[tuple[Sym, str]]  # (handle, output name)
    program: Program
    logits_shape: tuple  # with Batch(k) dimensions


def compile_model(
    model: ModelLike | Graph,
    method: RuleSource,
    options: dict,
    layer: str | None,
    output: str | None,
    keep_signal: bool,
    seed_input: bool,
    expose_logits: bool = False,
    optional_target: bool = False,
    taps: tuple[str, ...] = (),
    dense_seed: bool = False,
) -> onnx.ModelProto:
    """Emit `method`'s reverse program (options already resolved) into the model.
    `optional_target`: `target` gets the default [-1] (top-1), so it may be left unfed.
    `dense_seed`: every output of an explainer, but seeded from the input `seed`."""
    if isinstance(model, Graph):  # already loaded and canonicalised (Explainer)
        graph, proto = model, model.model
    else:
        proto = load_model(model)
        _refuse_explainer(proto)
        graph = build_graph(proto, output=output)
        check_finite_constants(graph)  # (the Explainer checked its graph when it was built)
    original_opset = graph.opset
    needed = max(graph.opset, MIN_OPSET)
    while True:
        if needed > graph.opset:
            graph = _upgraded(proto, needed, output, original_opset)
        emitted = _emit_checked(
            graph, method, options, layer, keep_signal, seed_input, expose_logits, taps, dense_seed
        )
        if emitted.builder.required_opset <= graph.opset:
            break
        needed = emitted.builder.required_opset
    if graph.opset != original_opset:
        warnings.warn(
            f"convert: the model was upgraded from opset {original_opset} to {graph.opset}, "
            "the lowest that expresses its backward in standard ONNX ops "
            "(MaxPool's backward needs ScatterElements with reduction='add', opset 16)",
            ConvertWarning,
            stacklevel=3,
        )
    return _assemble(
        graph,
        emitted,
        method,
        options,
        seed_input,
        original_opset,
        expose_logits,
        optional_target,
        dense_seed,
    )


def _emit_checked(graph: Graph, method: RuleSource, *args) -> _Emitted:
    """`_emit`, with any failure that is not already a typed error (a rule meeting a shape
    the emitter cannot express, say) as a one-line `ModelError` naming the node being
    emitted: `backend="auto"` then explains with the engine and says why, once."""
    try:
        return _emit(graph, method, *args)
    except (TsgbError, MemoryError):
        raise
    except Exception as exc:
        if is_out_of_memory(exc):
            raise out_of_memory(exc, "building the compiled explainer") from exc
        detail = str(exc).strip().splitlines()
        said = f": {detail[0]}" if detail else ""
        raise ModelError(
            f"building the compiled explainer failed{_failing_node(exc)} "
            f"({type(exc).__name__}{said})"
        ) from exc


def _failing_node(exc: BaseException) -> str:
    """' at node NAME (OP)' for the program step that was running when `exc` was raised
    (read from the executor's frame in the traceback), else ''."""
    tb = exc.__traceback__
    found = ""
    while tb is not None:
        if tb.tb_frame.f_code is run_program.__code__:
            step = tb.tb_frame.f_locals.get("step")
            node = getattr(step, "node", None)
            if node is not None:
                found = f" at node '{node.name}' ({node.op_type})"
        tb = tb.tb_next
    return found


def _refuse_explainer(proto: onnx.ModelProto) -> None:
    for prop in proto.metadata_props:
        if prop.key == EXPLAINER_KEY:
            raise ModelError(
                f"this model is already an explainer (made by tsgb convert, method "
                f"'{prop.value}'): convert the original model instead"
            )


def _upgraded(proto, opset: int, output, original: int) -> Graph:
    try:
        upgraded = onnx.version_converter.convert_version(proto, opset)
    except Exception as exc:
        if is_out_of_memory(exc):
            raise out_of_memory(exc, f"upgrading the model to opset {opset}") from exc
        raise ModelError(
            f"the explainer needs opset {opset} but the model is opset {original} and ONNX's "
            f"version converter failed ({str(exc).splitlines()[0] if str(exc) else exc}): "
            f"re-export the model with opset >= {opset}"
        ) from None
    return build_graph(upgraded, output=output)


# -- shapes ---------------------------------------------------------------------------------
def runtime_shapes(graph: Graph, tensors) -> dict[str, tuple]:
    """Shapes of `tensors`, with dimensions proportional to the batch as `Batch(k)`.

    Read from ONNX Runtime at two batch sizes (1 and 2) when the batch is dynamic: a
    dimension that doubles is k × B, one that stays is static.
    """
    shape = graph.input_shape
    if shape is None:
        raise ModelError(f"the model input '{graph.input_name}' has no declared shape")
    for axis, d in enumerate(shape[1:], start=1):
        if not (isinstance(d, int) and d > 0):
            raise ModelError(
                f"the model input '{graph.input_name}' has a dynamic size on axis {axis} "
                f"({d!r}); an explainer model needs fixed sizes except the batch: "
                "export the model with a fixed input size"
            )
    dynamic = not (isinstance(shape[0], int) and shape[0] > 0)
    batches = (1, 2) if dynamic else (shape[0],)
    names = tuple(dict.fromkeys(tensors))
    # graph optimisations off: ONNX Runtime would fold Shape nodes from the inferred shapes,
    # which can differ from what its kernels return (e.g. MaxPool SAME_UPPER with dilations)
    recorder = ForwardRecorder(graph, optimize=False)
    seen = [
        recorder.run(np.zeros((b,) + tuple(shape[1:]), dtype=np.float32), (), names)[2]
        for b in batches
    ]
    if not dynamic:
        return seen[0]
    out = {}
    for name in names:
        one, two = seen[0][name], seen[1][name]
        dims = []
        for a, b in zip(one, two):
            if a == b:
                dims.append(int(a))
            elif b == 2 * a:
                dims.append(Batch(int(a)))
            else:
                raise ModelError(
                    f"tensor '{name}' changes shape with the batch size in a way "
                    f"the explainer cannot express ({one} at batch 1, {two} at 2)"
                )
        out[name] = tuple(dims)
    return out


# -- emission ---------------------------------------------------------------------------------
class _ConstantHandles(dict):
    """The model's initializers as constant handles that keep their names (no copies)."""

    def __init__(self, graph: Graph, ops: OnnxOps):
        super().__init__()
        self._graph, self._ops = graph, ops

    def __contains__(self, name) -> bool:
        return dict.__contains__(self, name) or name in self._graph.constants

    def __missing__(self, name):
        value = self._graph.constants[name]
        handle = self._ops.const(value, value.dtype, name=name)
        if value.dtype.kind == "f" and value.dtype != np.float32:
            handle = self._ops.asarray(handle)  # float16/float64 weights: the backward's float32
        self[name] = handle
        return handle


def _taken_names(model: onnx.ModelProto) -> set[str]:
    g = model.graph
    names = {t.name for t in g.initializer} | {i.name for i in g.input} | {o.name for o in g.output}
    for n in g.node:
        names.update(n.input)
        names.update(n.output)
        names.add(n.name)
    return names


def _emit(
    graph: Graph,
    method: RuleSource,
    options: dict,
    layer,
    keep_signal,
    seed_input,
    keep_activation: bool = False,
    taps: tuple[str, ...] = (),
    dense_seed: bool = False,
) -> _Emitted:
    program = plan(graph, method, options, layer, taps)
    plain = (graph.logits_name, program.layer) + program.record + program.record_shapes + taps
    shapes = runtime_shapes(graph, [t.removeprefix(REFERENCE) for t in plain])
    shapes.update({t: shapes[t.removeprefix(REFERENCE)] for t in plain})
    taken = _taken_names(graph.model)
    wanted = [SEED] if seed_input else [SEED if dense_seed else TARGET, SALIENCY]
    wanted += [SIGNAL] if keep_signal and not seed_input else []
    wanted += [ACTIVATION] if keep_activation else []
    wanted += [f.format(i) for i in range(len(taps)) for f in (TAP_SIGNAL, TAP_VALUE)]
    clash = [n for n in wanted if n in taken]
    if clash:
        raise ModelError(
            f"the model already has a tensor named '{clash[0]}': is it an explainer made by "
            "tsgb convert? Convert the original model"
        )
    builder = GraphBuilder(graph.opset, taken | set(wanted))
    ops = OnnxOps(builder, batch_source=graph.input_name)
    if method.needs_reference:
        _emit_reference_pass(graph, method, options, builder)

    def forward(name: str) -> Sym:
        handle = Sym(name, shapes[name], _np_dtype(graph, name.removeprefix(REFERENCE)))
        return ops.asarray(handle)  # a Cast when the model computes in another float type

    values = {t: forward(t) for t in program.record}
    shape_reads = {t: shapes[t] for t in program.record_shapes}
    logits = forward(graph.logits_name)
    if not seed_input and not dense_seed and len(logits.shape) != 2:
        raise ModelError(
            f"the logits '{graph.logits_name}' have shape {logits.shape}, not [batch, classes]: "
            "choose the classifier output with output=NAME (CLI: --output NAME)"
        )
    if dense_seed:
        _check_seed_shape(graph, logits.shape)
    if seed_input or dense_seed:
        seed = Sym(SEED, logits.shape, np.float32)
        valid = None
    else:
        seed, valid = _target_seed(ops, builder, logits)
    activation = values.get(program.layer) or forward(program.layer)
    if program.reference:  # the saliency is sum_c signal * (value - reference value)
        activation = ops.sub(activation, values.get(REFERENCE + program.layer))
    tap_values = {t: values.get(t) or forward(t) for t in taps}
    tapped: dict | None = {} if taps else None
    consts = _ConstantHandles(graph, ops)
    signal = run_program(program, ops, values, shape_reads, seed, consts, tapped)
    if seed_input:
        return _Emitted(builder, [(_materialize(ops, signal), SIGNAL)], program, logits.shape)
    rank = len(activation.shape)
    product = ops.mul(signal, activation)
    saliency = ops.sum(product, axis=graph.channel_axis(program.layer)) if rank > 1 else product
    saliency = _materialize(ops, saliency)
    if valid is not None:  # a target seed: rows with a bad target get a NaN map
        mask = ops.reshape(valid, (valid.shape[0],) + (1,) * (len(saliency.shape) - 1))
        saliency = ops.where(mask, saliency, float("nan"))
    outputs = [(saliency, SALIENCY)]
    if keep_signal:
        outputs.append((_materialize(ops, signal), SIGNAL))
    if keep_activation:
        outputs.append((_materialize(ops, activation), ACTIVATION))
    for i, t in enumerate(taps):
        outputs.append((_materialize(ops, tapped[t]), TAP_SIGNAL.format(i)))
        outputs.append((_materialize(ops, tap_values[t]), TAP_VALUE.format(i)))
    return _Emitted(builder, outputs, program, logits.shape)


def _check_seed_shape(graph: Graph, shape: tuple) -> None:
    """A fed seed needs the output's shape as an input: the batch first (or fixed), every
    other dimension fixed (ModelError otherwise: the engine explains such a model)."""
    batch_ok = bool(shape) and (
        isinstance(shape[0], int) or (isinstance(shape[0], Batch) and shape[0].k == 1)
    )
    if not batch_ok or any(not isinstance(d, int) for d in shape[1:]):
        raise ModelError(
            f"the output '{graph.logits_name}' has shape {shape}, which a fed seed cannot "
            "match for every batch size"
        )


def _emit_reference_pass(
    graph: Graph, method: RuleSource, options: dict, builder: GraphBuilder
) -> None:
    """The reference forward pass: every node of the model again, its tensors renamed
    `REFERENCE + name`, on the method's reference input broadcast to the input's shape. Only a
    reference that does not depend on the input (a constant baseline) can be held."""
    rank = len(graph.input_shape or ())
    probe = [np.full((1,) + tuple(graph.input_shape[1:]), v, np.float32) for v in (0.0, 1.0)]
    try:
        refs = [np.asarray(method.reference(p, options), dtype=np.float32) for p in probe]
    except (TypeError, ValueError):
        refs = [None, None]
    if refs[0] is None or refs[0].shape != refs[1].shape or not np.array_equal(*refs):
        raise ModelError(
            f"method '{method.name}': its reference input depends on the input, and a "
            "compiled explainer holds a constant reference only"
        )
    baseline = refs[0]
    if baseline.ndim == rank and baseline.shape[0] != 1:
        raise ModelError(
            f"method '{method.name}': a reference with one row per image (shape "
            f"{baseline.shape}) cannot be compiled for any batch size"
        )
    for node in graph.model.graph.node:
        if any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
            for a in node.attribute
        ):
            raise ModelError(
                f"node '{node.name}' ({node.op_type}) holds a subgraph, which the compiled "
                "reference pass does not copy"
            )
    dtype = _np_dtype(graph, graph.input_name)
    const = builder.initializer(baseline.astype(dtype), "reference_input")
    (shape,) = builder.node("Shape", [graph.input_name])
    builder.node("Expand", [const, shape], [REFERENCE + graph.input_name])
    dynamic = {graph.input_name} | {o for n in graph.model.graph.node for o in n.output}
    for node in graph.model.graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = REFERENCE + node.name if node.name else ""
        copy.ClearField("input")
        copy.ClearField("output")
        copy.input.extend(REFERENCE + t if t in dynamic else t for t in node.input)
        copy.output.extend(REFERENCE + t if t else t for t in node.output)
        builder.nodes.append(copy)


def _json_option(value):
    """An option value JSON cannot hold: a small array as a list, a large one described."""
    if isinstance(value, np.ndarray | np.generic):
        if value.size <= 16:
            return value.tolist()
        return {"array": list(value.shape), "dtype": str(value.dtype)}
    return repr(value)


def _np_dtype(graph: Graph, name: str):
    return helper.tensor_dtype_to_np_dtype(graph.dtypes.get(name, TensorProto.FLOAT))


def _materialize(ops: OnnxOps, handle: Sym) -> Sym:
    """A constant result (e.g. no path to the layer) as a batch-sized tensor."""
    if not handle.is_const:
        return handle
    return ops.add(ops.zeros(handle.shape), handle)


def _target_seed(ops: OnnxOps, builder: GraphBuilder, logits: Sym):
    """One-hot seed from the `target` input: [B] (one per row) or [1] (every row); < 0 is the
    row's top-1 class. A row whose target is >= the class count, and every row of a target of
    another length, is marked invalid (its map is NaN): no runtime error from inside."""
    batch, classes = logits.shape[0], int(logits.shape[1])

    def const(value) -> str:
        return ops._in(ops.const(np.asarray(value, dtype=np.int64)))

    (top1,) = builder.node("ArgMax", [logits.name], axis=1, keepdims=0)
    (logits_shape,) = builder.node("Shape", [logits.name])
    (rows,) = builder.node("Gather", [logits_shape, const(0)], axis=0)  # scalar B
    (target_shape,) = builder.node("Shape", [TARGET])
    (given,) = builder.node("Gather", [target_shape, const(0)], axis=0)  # scalar length
    (row_index,) = builder.node("Range", [const(0), rows, const(1)])
    (divisor,) = builder.node("Max", [given, const(1)])
    (index,) = builder.node("Mod", [row_index, divisor])
    (padded,) = builder.node("Concat", [TARGET, const([-1])], axis=0)  # an empty target: -1
    (per_row,) = builder.node("Gather", [padded, index], axis=0)
    (same,) = builder.node("Equal", [given, rows])
    (single,) = builder.node("Equal", [given, const(1)])
    (length_ok,) = builder.node("Or", [same, single])
    target = Sym(per_row, (batch,), np.int64)
    chosen = ops._emit(
        "Where",
        [ops.less(target, ops.const(np.int64(0))), Sym(top1, (batch,), np.int64), target],
        (batch,),
        np.int64,
    )
    seed = ops.one_hot(chosen, classes)  # an all-zero row for a target >= classes
    in_range = ops.less(chosen, ops.const(np.int64(classes)))
    valid = ops.logical_and(in_range, Sym(length_ok, (), np.bool_))
    return seed, valid


def _dim(d, batch_name):
    if isinstance(d, Batch):
        return batch_name if d.k == 1 else None
    return int(d)


def _assemble(
    graph: Graph,
    emitted: _Emitted,
    method: RuleSource,
    options: dict,
    seed_input: bool,
    original_opset: int,
    expose_logits: bool = False,
    optional_target: bool = False,
    dense_seed: bool = False,
) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.CopyFrom(graph.model)
    g = model.graph
    builder = emitted.builder
    for handle, name in emitted.outputs:
        builder.node("Identity", [handle.name], [name])
    g.node.extend(builder.nodes)
    g.initializer.extend(builder.initializers)
    batch = graph.input_shape[0]
    batch_name = batch if isinstance(batch, str) else None
    logits_shape = [_dim(d, batch_name) for d in emitted.logits_shape]
    if seed_input or dense_seed:
        g.input.append(helper.make_tensor_value_info(SEED, TensorProto.FLOAT, logits_shape))
    else:
        # a graph input every runtime lists (serving stacks build their feeds from it); the
        # optional form is an initializer with the input's name: [-1] = top-1 for all rows
        g.input.append(helper.make_tensor_value_info(TARGET, TensorProto.INT64, ["targets"]))
        if optional_target:
            g.initializer.append(onnx.numpy_helper.from_array(np.array([-1], np.int64), TARGET))
    for handle, name in emitted.outputs:
        g.output.append(
            helper.make_tensor_value_info(
                name, TensorProto.FLOAT, [_dim(d, batch_name) for d in handle.shape]
            )
        )
    if expose_logits and graph.logits_name not in {o.name for o in g.output}:
        g.output.append(
            helper.make_tensor_value_info(
                graph.logits_name,
                graph.dtypes.get(graph.logits_name, TensorProto.FLOAT),
                logits_shape,
            )
        )
    if graph.opset != original_opset:
        _set_opset(model, graph.opset)
    if not seed_input:
        meta = {
            EXPLAINER_KEY: method.name,
            "tsgb_onnx.layer": emitted.program.layer,
            "tsgb_onnx.options": json.dumps(options, sort_keys=True, default=_json_option),
        }
        if graph.opset != original_opset:
            meta["tsgb_onnx.opset_upgraded_from"] = str(original_opset)
        for key, value in meta.items():
            model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        if is_out_of_memory(exc):
            raise out_of_memory(exc, "checking the emitted explainer") from exc
        raise TsgbError(
            f"the emitted explainer fails the ONNX checker: {str(exc).strip().splitlines()[0]}"
        ) from exc
    return model


def _set_opset(model: onnx.ModelProto, opset: int) -> None:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = opset
    needed = helper.find_min_ir_version_for(list(model.opset_import))
    model.ir_version = max(model.ir_version, needed)

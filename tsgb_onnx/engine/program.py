"""Reverse program: the ordered backward steps from the logits to a chosen tensor.

The program is plain data. `plan()` builds it once per (graph, method, layer); any
executor (NumPy, CuPy) runs it, and `str(program)` prints it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from tsgb_onnx.engine.rule import Rule, RuleSource
from tsgb_onnx.errors import ModelError, UnsupportedOpError
from tsgb_onnx.ir.graph import Graph, Node

# recorded values of the reference forward pass (e.g. DeepLIFT's baseline) are keyed
# REFERENCE + tensor name; rules read them with the tokens "rx<i>" / "ry<i>"
REFERENCE = "ref::"


@dataclass(frozen=True)
class Step:
    """One backward step: apply `rule` to `node`."""

    node: Node
    rule: Rule
    reads: tuple[str, ...]  # forward tensors whose values the rule reads
    shape_reads: tuple[str, ...]  # forward tensors whose shapes only it reads
    consumes: tuple[str, ...]  # node outputs that carry a signal
    produces: tuple[str, ...]  # node inputs that receive a signal
    release: tuple[str, ...] = ()  # forward tensors not read by any later step
    exposed: tuple[str, ...] = ()  # signals the caller reads (the layer, taps)

    def __str__(self) -> str:
        reads = ", ".join(self.reads + tuple(f"shape({t})" for t in self.shape_reads)) or "-"
        return (
            f"{self.node.op_type:<20} {self.rule.label:<34} "
            f"{','.join(self.consumes)} -> {','.join(self.produces)}  reads: {reads}  "
            f"[{self.node.name}]"
        )


@dataclass
class Program:
    """Backward steps in reverse topological order, plus what the forward must record."""

    method: str
    logits: str
    layer: str
    steps: list[Step]
    record: tuple[str, ...]  # tensors the forward pass must return (values)
    record_shapes: tuple[str, ...]  # tensors whose shapes the forward pass must return
    options: dict = field(default_factory=dict)
    batch_major: bool = False  # every recorded tensor has the input's batch axis first
    taps: tuple[str, ...] = ()  # tensors whose complete signal the executor also returns

    @property
    def reference(self) -> bool:
        """Whether the program reads a reference forward pass (`REFERENCE` keys)."""
        return any(t.startswith(REFERENCE) for t in self.record)

    def __len__(self) -> int:
        return len(self.steps)

    def __str__(self) -> str:
        head = (
            f"program '{self.method}': {len(self.steps)} steps, {self.logits} -> {self.layer}; "
            f"records {len(self.record)} tensors and {len(self.record_shapes)} shapes"
        )
        return "\n".join([head] + [f"{i:4d}  {s}" for i, s in enumerate(self.steps)])


# integer outputs that carry a signal: the quantized values of a QDQ or dynamically quantized
# graph, differentiated with the straight-through estimator (rules/gradient.py)
QUANTIZED_CARRIERS = {"QuantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"}


def carries_signal(graph: Graph, tensor: str) -> bool:
    """Whether `tensor` can carry a backward signal: a non-constant float tensor, or the
    quantized output of one of `QUANTIZED_CARRIERS`."""
    if graph.is_float(tensor):
        return True
    node = graph.producer.get(tensor)
    return node is not None and node.op_type in QUANTIZED_CARRIERS and node.outputs[0] == tensor


def _reaching(graph: Graph, start: str, forward: bool, any_dtype: bool = False) -> set[str]:
    """Signal-carrying tensors (`any_dtype`: all tensors) reachable from `start` along data
    flow (forward or backward)."""
    seen = {start}
    stack = [start]
    while stack:
        t = stack.pop()
        nodes = (
            graph.consumers.get(t, [])
            if forward
            else ([graph.producer[t]] if t in graph.producer else [])
        )
        for n in nodes:
            for nxt in n.outputs if forward else n.inputs:
                if nxt and nxt not in seen and (any_dtype or carries_signal(graph, nxt)):
                    seen.add(nxt)
                    stack.append(nxt)
    return seen


def _expand_reads(rule: Rule, node: Node) -> tuple[list[str], list[str]]:
    tokens = rule.reads(node) if callable(rule.reads) else rule.reads
    values, shapes = [], []
    for token in tokens:
        if token.startswith("@"):  # another node's tensor, by name
            values.append(token[1:])
            continue
        kind, _, what = token.partition(".")
        prefix = ""
        if kind[0] == "r":  # the reference pass's value of the same tensor
            prefix, kind = REFERENCE, kind[1:]
        side = node.inputs if kind[0] == "x" else node.outputs
        idx = range(len(side)) if kind[1:] == "*" else [int(kind[1:])]
        for i in idx:
            if i >= len(side) or not side[i] or side[i] in node.graph.constants:
                continue
            if what == "shape":
                shapes.append(side[i])
            else:
                values.append(prefix + side[i])
    return values, shapes


def live_tensors(graph: Graph, layer: str | None = None) -> set[str]:
    """Float tensors on a path from `layer` (default: the input) to the logits."""
    layer = layer or graph.input_name
    return _reaching(graph, layer, forward=True) & _reaching(
        graph, graph.logits_name, forward=False
    )


def _refuse_cut_path(graph: Graph, method: RuleSource, layer: str, carried: set[str]) -> None:
    """The logits depend on `layer` through tensors that carry no signal (integer tensors of
    an operator-format quantized model, e.g. QLinearConv): name the nodes that cut the path."""
    structural = _reaching(graph, layer, forward=True, any_dtype=True) & _reaching(
        graph, graph.logits_name, forward=False, any_dtype=True
    )
    if graph.logits_name not in structural:
        return
    cut = [
        (n.name, n.op_type)
        for n in graph.nodes
        if any(i in carried for i in n.inputs)
        and not any(o in carried for o in n.outputs)
        and any(o in structural for o in n.outputs)
    ]
    if cut:
        raise UnsupportedOpError(method.name, cut, _output_dtypes(graph, cut))


def _output_dtypes(graph: Graph, nodes: list[tuple[str, str]]) -> dict[str, str]:
    """The element type of each node's first output, by node name (for error messages)."""
    by_name = {n.name: n for n in graph.nodes}
    shown = {}
    for name, _ in nodes:
        node = by_name.get(name)
        elem = graph.dtypes.get(node.outputs[0]) if node is not None and node.outputs else None
        if elem:
            shown[name] = onnx.TensorProto.DataType.Name(elem).lower()
    return shown


def _check_tensor(graph: Graph, name: str) -> None:
    if not graph.has_tensor(name):
        raise ModelError(f"layer '{name}' is not a tensor of the model")
    if not graph.is_float(name):
        raise ModelError(f"layer '{name}' is not a floating-point tensor")


def plan(
    graph: Graph,
    method: RuleSource,
    options: dict,
    layer: str | None = None,
    taps: tuple[str, ...] = (),
) -> Program:
    """Build the reverse program of `method` from the logits back to `layer`.

    `taps` are further tensors whose complete signals the same backward pass returns
    (the program then covers every path from each tap to the logits).
    """
    layer = layer or graph.input_name
    taps = tuple(dict.fromkeys(taps))
    upstream = _reaching(graph, graph.logits_name, forward=False)
    live: set[str] = set()
    for t in (layer,) + taps:
        _check_tensor(graph, t)
        reach = _reaching(graph, t, forward=True) & upstream
        if graph.logits_name not in reach:
            _refuse_cut_path(graph, method, t, _reaching(graph, t, forward=True))
            raise ModelError(f"the logits '{graph.logits_name}' do not depend on layer '{t}'")
        live |= reach

    method.before_plan(graph, options)
    active = [
        n
        for n in graph.nodes
        if any(o in live for o in n.outputs) and any(i in live for i in n.inputs)
    ]
    rules: list[tuple[Node, Rule]] = []
    missing: list[tuple[str, str]] = []
    for node in active:
        rule = method.rule_for(node, graph, options)
        if rule is None:
            missing.append((node.name, node.op_type))
        rules.append((node, rule))
    if missing:
        raise UnsupportedOpError(method.name, missing, _output_dtypes(graph, missing))

    raw: list[tuple[Node, Rule, list[str], list[str]]] = []
    for node, rule in reversed(rules):
        values, shapes = _expand_reads(rule, node)
        raw.append((node, rule, values, shapes))
    kept = {layer, *taps} | {REFERENCE + t for t in (layer, *taps)}
    last_use: dict[str, int] = {}
    for i, (_, _, values, _) in enumerate(raw):
        for t in values:
            last_use[t] = i
    steps = []
    for i, (node, rule, values, shapes) in enumerate(raw):
        shapes = [t for t in dict.fromkeys(shapes) if t not in values]
        steps.append(
            Step(
                node=node,
                rule=rule,
                reads=tuple(dict.fromkeys(values)),
                shape_reads=tuple(shapes),
                consumes=tuple(o for o in node.outputs if o in live),
                produces=tuple(dict.fromkeys(t for t in node.inputs if t in live)),
                release=tuple(
                    t for t in dict.fromkeys(values) if last_use[t] == i and t not in kept
                ),
                exposed=(layer, *taps),
            )
        )
    # the layer's and the taps' values are kept to the end: the saliency is
    # sum_c signal * value (a reference method: signal * (value - reference value))
    kept_values = [layer, *taps]
    if method.needs_reference:
        kept_values += [REFERENCE + t for t in (layer, *taps)]
    record = tuple(dict.fromkeys(kept_values + [t for s in steps for t in s.reads]))
    record_shapes = tuple(dict.fromkeys(t for s in steps for t in s.shape_reads if t not in record))
    batch = (graph.input_shape or (None,))[0]
    batch_major = isinstance(batch, str) and all(
        (graph.shapes.get(t.removeprefix(REFERENCE)) or (None,))[0] == batch
        for t in (graph.logits_name,) + record + record_shapes
    )
    return Program(
        method.name,
        graph.logits_name,
        layer,
        steps,
        record,
        record_shapes,
        options,
        batch_major,
        taps,
    )

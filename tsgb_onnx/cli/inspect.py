"""`tsgb inspect`: the model's input, logits, op coverage, the ops without a rule on the
backward path (and which methods need them), tensors and reverse program."""

from __future__ import annotations

import argparse
import warnings

from tsgb_onnx.cli.args import add_method_flags, method_options
from tsgb_onnx.engine.program import Program, live_tensors, plan
from tsgb_onnx.errors import InputError, TsgbError, UnsupportedOpError
from tsgb_onnx.ir.graph import Graph, build_graph
from tsgb_onnx.methods.base import MapMethod, Method
from tsgb_onnx.methods.cam import default_cam_layer
from tsgb_onnx.methods.table import get_method


def cmd_inspect(args: argparse.Namespace) -> int:
    graph = build_graph(args.model, output=args.output)
    method = get_method(args.method)
    rules = method.rules
    print(f"model:   {args.model}  (opset {graph.opset})")
    print(f"input:   {graph.input_name} {list(graph.input_shape or [])}")
    outputs = ", ".join(
        f"{o.name} {list(graph.shapes.get(o.name) or [])}" for o in graph.model.graph.output
    )
    print(f"outputs: {outputs}")
    print(f"logits:  {graph.logits_name} {list(graph.shapes.get(graph.logits_name) or [])}")
    ops = graph.op_types()
    with_rule = [o for o in ops if rules.lookup(o)]
    without = [o for o in ops if not rules.lookup(o)]
    print(f"ops with a '{method.name}' rule:    {', '.join(with_rule) or '-'}")
    print(f"ops without one (need none if off the backward path): {', '.join(without) or '-'}")
    options = method.resolve_options(method_options(args))
    _print_backward_path(graph, method, options)
    refusal = _print_verdict(graph, method, options, args.layer)
    if args.tensors:
        rule_method = method if isinstance(method, Method) else get_method(method.backward)
        _print_tensors(graph, rule_method)
    _print_program(graph, method, options, args, refusal)
    return 0


def _print_program(
    graph: Graph,
    method: Method | MapMethod,
    options: dict,
    args: argparse.Namespace,
    refusal: UnsupportedOpError | None,
) -> None:
    """The reverse program's size (every step with --program); none for a map method or a
    refused method (--program then fails with its error)."""
    if not method.single_pass:
        print(
            f"program: none ('{method.name}' is a map method: it reads signals of the "
            f"'{method.backward}' rules at the tensors it needs)"
        )
        if args.program:
            raise InputError(
                f"--program: '{method.name}' has no reverse program; inspect "
                f"--method {method.backward} shows the backward it reads"
            )
        return
    if refusal is not None:
        print(f"program: none ('{method.name}' is refused: see above)")
        if args.program:
            raise refusal
        return
    program = _quiet_plan(graph, method, options, [args.layer or graph.input_name])
    print(
        f"program: {len(program)} steps, records {len(program.record)} tensors "
        f"and {len(program.record_shapes)} shapes"
    )
    if args.program:
        print(program)


# -- which ops without a rule matter: the backward paths of the chosen method and each kind ---
Read = tuple[Method, dict, list[str]]  # a rule method, its options, the tensors read at


def _quiet_plan(graph: Graph, method: Method, options: dict, layers: list[str]) -> Program:
    """The reverse program of `method` down to `layers` (its warnings are not inspect's)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return plan(graph, method, options, layers[0], tuple(layers[1:]))


def _refusal(
    graph: Graph, method: Method, options: dict, layers: list[str]
) -> UnsupportedOpError | None:
    """The UnsupportedOpError planning `method` down to `layers` raises, or None."""
    try:
        _quiet_plan(graph, method, options, layers)
    except UnsupportedOpError as exc:
        return exc
    return None


def _reads(
    graph: Graph, method: Method | MapMethod, options: dict, layer: str | None
) -> list[Read]:
    """The backward passes `method` runs with `options` (at `layer`, when given)."""
    if isinstance(method, Method):
        return [(method, options, [layer or graph.input_name])]
    own = method.needed_layers(graph, options)
    base = method.base_method(options)
    if layer and base is None and {"layer", "layers"} & set(method.defaults):
        own = [layer]
    reads = []
    if own:
        backward = get_method(method.backward)
        reads.append((backward, backward.resolve_options({}), own))
    inner = get_method(base[0]) if base is not None else None
    if inner is not None and not getattr(inner, "pass_options", False):
        reads += _reads(graph, inner, inner.resolve_options(base[1]), layer)
    return reads


def _shown(nodes: list[tuple[str, str]]) -> str:
    listed = ", ".join(f"node '{name}' ({op})" for name, op in nodes[:8])
    return listed + (f" and {len(nodes) - 8} more" if len(nodes) > 8 else "")


def _print_backward_path(graph: Graph, method: Method | MapMethod, options: dict) -> None:
    """Each node on the way from the logits to the input without a rule, and for each kind
    of method whether it needs one: those reading the input's gradient, the CAM methods."""
    rule_method = method if isinstance(method, Method) else get_method(method.backward)
    rule_options = options if rule_method is method else rule_method.resolve_options({})
    to_input = _refusal(graph, rule_method, rule_options, [graph.input_name])
    if to_input is None:
        print(
            f"backward path: every op from the logits to the input has a '{rule_method.name}' rule"
        )
        return
    try:
        cam = default_cam_layer(graph)
    except TsgbError:
        cam = None
    gradient = get_method("gradient")
    to_cam = _refusal(graph, gradient, {}, [cam]) if cam is not None else None
    above_cam = set(to_cam.nodes) if to_cam is not None else set()
    print(f"backward path: ops without a '{rule_method.name}' rule on it:")
    for name, op in to_input.nodes:
        print(f"  node '{name}' ({op}): {_kinds(graph, (name, op), cam, above_cam)}")


def _kinds(graph: Graph, node: tuple[str, str], cam: str | None, above_cam: set) -> str:
    """Plain words: which kinds of method need a rule for `node` (on the input's path)."""
    needs_input = (
        f"on the backward path to the input '{graph.input_name}', so methods that read the "
        "input's gradient (one-pass methods such as gradient and tsgb, fullgrad, smoothgrad, "
        "integrated_gradients, meta_saliency) cannot explain this model"
    )
    if cam is None:
        return needs_input + "; there is no default Grad-CAM layer (choose one with --layer)"
    op = graph.producer[cam].op_type
    if node in above_cam:
        return (
            f"{needs_input}; it is also between the default Grad-CAM layer '{cam}' ({op}) and "
            "the logits, so gradcam, groupcam and normgrad need it there too: choose a layer "
            "above it with --layer"
        )
    return (
        f"{needs_input}; it is below the default Grad-CAM layer '{cam}' ({op}), so gradcam, "
        "groupcam and normgrad at that layer do not need it"
    )


def _print_verdict(
    graph: Graph, method: Method | MapMethod, options: dict, layer: str | None
) -> UnsupportedOpError | None:
    """Whether the chosen method can explain the model (at `layer`), in one line; the
    UnsupportedOpError it would raise, or None."""
    reads = _reads(graph, method, options, layer)
    if not reads:
        print(f"method '{method.name}': no default layer on this model: give one with --layer")
        return None
    for rule_method, rule_options, layers in reads:
        refusal = _refusal(graph, rule_method, rule_options, layers)
        if refusal is not None:
            print(
                f"method '{method.name}': refused: {_shown(refusal.nodes)} on its backward "
                f"path (the '{rule_method.name}' backward from the logits down to "
                f"{_layers(graph, layers)}) {'has' if len(refusal.nodes) == 1 else 'have'} "
                "no rule"
            )
            return refusal
    print(
        f"method '{method.name}': every op on its backward path (from the logits down to "
        f"{_layers(graph, reads[0][2])}) has a rule"
    )
    return None


def _layers(graph: Graph, layers: list[str]) -> str:
    if graph.input_name in layers:
        return f"the input '{graph.input_name}'"
    shown = ", ".join(f"'{t}'" for t in layers[:3]) + (" ..." if len(layers) > 3 else "")
    return ("layer " if len(layers) == 1 else "layers ") + shown


def _print_tensors(graph: Graph, rule_method: Method) -> None:
    """Every float tensor on the path to the logits (what --layer accepts), with its shape;
    marked when an op without a `rule_method` rule lies between it and the logits."""
    live = live_tensors(graph)
    blocked = _below_missing_rules(graph, rule_method, live)
    try:
        cam = default_cam_layer(graph)
    except TsgbError:
        cam = None
    print(
        "tensors on the path to the logits (--layer NAME; * = default Grad-CAM layer"
        + (f"; ! = below an op without a '{rule_method.name}' rule: refused" if blocked else "")
        + "):"
    )
    for node in graph.nodes:
        for out in node.outputs:
            if out in live:
                shape = list(graph.shapes.get(out) or [])
                mark = "!" if out in blocked else "*" if out == cam else " "
                print(f" {mark} {out}  {node.op_type} {shape}")


def _below_missing_rules(graph: Graph, rule_method: Method, live: set[str]) -> set[str]:
    """The `live` tensors with an op lacking a `rule_method` rule on a path to the logits
    (a backward to them is refused), found in one pass against topological order."""
    rules = rule_method.rules
    blocked: set[str] = set()
    for node in reversed(graph.nodes):
        outputs = [o for o in node.outputs if o in live]
        if not outputs:
            continue
        if not rules.lookup(node.op_type) or any(o in blocked for o in outputs):
            blocked.update(t for t in node.inputs if t in live)
    return blocked


def register(sub) -> None:
    """Add `tsgb inspect` to the subparsers `sub`."""
    i = sub.add_parser("inspect", help="show the model's input, logits, ops and program")
    i.add_argument("model", help="ONNX model file")
    add_method_flags(i)
    i.add_argument("--program", action="store_true", help="print every step")
    i.add_argument(
        "--tensors", action="store_true", help="list the tensors --layer accepts, with their shapes"
    )
    i.set_defaults(func=cmd_inspect)

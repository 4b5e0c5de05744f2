"""`tsgb inspect`: the model's input, logits, op coverage, tensors and reverse program."""

from __future__ import annotations

import argparse
import warnings

from tsgb_onnx.cli.args import add_method_flags, method_options
from tsgb_onnx.engine.program import live_tensors, plan
from tsgb_onnx.errors import InputError, TsgbError
from tsgb_onnx.ir.graph import build_graph
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
    if args.tensors:
        _print_tensors(graph)
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
        return 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = plan(graph, method, options, args.layer)
    print(
        f"program: {len(program)} steps, records {len(program.record)} tensors "
        f"and {len(program.record_shapes)} shapes"
    )
    if args.program:
        print(program)
    return 0


def _print_tensors(graph) -> None:
    """Every float tensor on the path to the logits (what --layer accepts), with its shape."""
    live = live_tensors(graph)
    try:
        cam = default_cam_layer(graph)
    except TsgbError:
        cam = None
    print("tensors on the path to the logits (--layer NAME; * = default Grad-CAM layer):")
    for node in graph.nodes:
        for out in node.outputs:
            if out in live:
                shape = list(graph.shapes.get(out) or [])
                mark = "*" if out == cam else " "
                print(f" {mark} {out}  {node.op_type} {shape}")


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

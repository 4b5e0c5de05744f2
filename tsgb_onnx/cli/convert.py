"""`tsgb convert`: write a self-contained ONNX explainer model."""

from __future__ import annotations

import argparse
from pathlib import Path

from tsgb_onnx.cli.args import add_method_flags, method_options
from tsgb_onnx.convert import convert
from tsgb_onnx.errors import InputError
from tsgb_onnx.io.atomic import write_bytes_atomic


def cmd_convert(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix.lower() != ".onnx":
        raise InputError(f"-o/--out must end in .onnx, got '{args.out}'")
    if not out.parent.exists():
        raise InputError(f"-o/--out folder '{out.parent}' does not exist")
    if out.exists() and Path(args.model).exists() and out.resolve() == Path(args.model).resolve():
        raise InputError("-o/--out names the input model: write the explainer to a new file")
    model = convert(  # its warnings print as `tsgb: note:` lines (cli.main)
        args.model,
        method=args.method,
        layer=args.layer,
        keep_signal=args.keep_signal,
        output=args.output,
        optional_target=args.optional_target,
        seed_input=args.seed_input,
        **method_options(args),
    )
    write_bytes_atomic(out, model.SerializeToString())
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    outputs = ", ".join(o.name for o in model.graph.output)
    inputs = ", ".join(i.name for i in model.graph.input)
    print(
        f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, opset {opset}); "
        f"inputs: {inputs}; outputs: {outputs}"
    )
    return 0


def register(sub) -> None:
    """Add `tsgb convert` to the subparsers `sub`."""
    c = sub.add_parser("convert", help="write a self-contained ONNX explainer model")
    c.add_argument("model", help="ONNX model file")
    c.add_argument("-o", "--out", required=True, help="explainer model to write (.onnx)")
    add_method_flags(c)
    c.add_argument(
        "--keep-signal", action="store_true", help="also output the backward signal at --layer"
    )
    c.add_argument(
        "--optional-target",
        action="store_true",
        help="give the `target` input the default [-1] (top-1) so it may be left unfed; it is "
        "then an overridable initializer, not listed among the runtime's inputs",
    )
    c.add_argument(
        "--seed-input",
        action="store_true",
        help="an input `seed` shaped like the output seeds the backward instead of `target`: "
        "for a dense output (segmentation map), feed channel one-hot x mask",
    )
    c.set_defaults(func=cmd_convert)

"""Command line: `tsgb explain`, `tsgb convert`, `tsgb inspect`, `tsgb demo`."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Sequence

from .errors import InputError, TsgbError
from .methods import available_methods, get_method


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return value


def _size(text: str) -> int | tuple[int, int]:
    """--size: one positive integer, or HEIGHT,WIDTH."""
    values = [_positive_int(v) for v in text.split(",")]
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return (values[0], values[1])
    raise argparse.ArgumentTypeError(f"expected SIZE or HEIGHT,WIDTH, got '{text}'")


def _formats(text: str) -> tuple[str, ...]:
    from .explain_files import FORMATS

    names = tuple(v.strip().lower() for v in text.split(",") if v.strip())
    bad = [v for v in names if v not in FORMATS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"--format takes a comma list of {', '.join(FORMATS)}, got '{text}'")
    return names


def _check_out(out: str | None) -> Path | None:
    """Validate --out before any work is done."""
    if out is None:
        return None
    path = Path(out)
    if path.suffix.lower() not in (".npy", ".png"):
        raise InputError(f"--out must end in .npy or .png, got '{out}'")
    if not path.parent.exists():
        raise InputError(f"--out folder '{path.parent}' does not exist")
    return path


def _option_value(text: str):
    """`--opt` values: int, float, true/false, none, or a string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _method_options(args) -> dict:
    options = {}
    for item in getattr(args, "opt", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--opt expects KEY=VALUE, got '{item}'")
        options[key.strip().replace("-", "_")] = _option_value(value.strip())
    if args.alpha is not None:
        options["alpha"] = args.alpha
    if args.reference_compat:
        options["reference_compat"] = True
    return options


def _explain_settings(args):
    """The explain command's flags as `Settings` (checked before any work)."""
    from .explain_files import Settings

    out = _check_out(args.out)
    formats = tuple(dict.fromkeys(f for group in args.format for f in group))
    out_dir = Path(args.out_dir) if args.out_dir else None
    if out is not None and (out_dir is not None or formats):
        raise InputError("--out writes one file; --out-dir/--format write a folder: "
                         "give one or the other")
    if formats and out_dir is None:
        out_dir = Path("tsgb_maps")
    if out_dir is not None and not formats:
        formats = ("png", "html")
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out-dir '{out_dir}' exists and is not a folder")
    explicit = {"size": args.size, "mean": args.mean, "std": args.std, "layout": args.layout,
                "channel_order": args.channel_order, "pixel_max": args.pixel_range,
                "crop": False if args.no_crop else None}
    return Settings(inputs=args.inputs, target=args.target, top_k=args.top_k,
                    labels=args.labels, preset=args.preset, explicit=explicit,
                    batch_size=args.batch_size, progress=args.progress, out=out,
                    out_dir=out_dir, formats=formats, colormap=args.colormap, cmap=args.cmap,
                    layer=args.layer)


def cmd_explain(args) -> int:
    from .explain_files import choose_preprocessing, run
    from .explainer import Explainer

    settings = _explain_settings(args)
    explainer = Explainer(args.model, method=args.method, output=args.output,
                          backend=args.backend, device=args.device, **_method_options(args))
    prep = choose_preprocessing(explainer.graph, settings.preset, settings.explicit)
    return run(explainer, settings, prep)


def cmd_inspect(args) -> int:
    from .graph import build_graph
    from .program import plan

    graph = build_graph(args.model, output=args.output)
    method = get_method(args.method)
    rules = method.rules
    print(f"model:   {args.model}  (opset {graph.opset})")
    print(f"input:   {graph.input_name} {list(graph.input_shape or [])}")
    outputs = ", ".join(f"{o.name} {list(graph.shapes.get(o.name) or [])}"
                        for o in graph.model.graph.output)
    print(f"outputs: {outputs}")
    print(f"logits:  {graph.logits_name} {list(graph.shapes.get(graph.logits_name) or [])}")
    ops = graph.op_types()
    with_rule = [o for o in ops if rules.lookup(o)]
    without = [o for o in ops if not rules.lookup(o)]
    print(f"ops with a '{method.name}' rule:    {', '.join(with_rule) or '-'}")
    print(f"ops without one (need none if off the backward path): {', '.join(without) or '-'}")
    options = method.resolve_options(_method_options(args))
    if args.tensors:
        _print_tensors(graph)
    if not method.single_pass:
        print(f"program: none ('{method.name}' is a map method: it reads signals of the "
              f"'{method.backward}' rules at the tensors it needs)")
        if args.program:
            raise InputError(f"--program: '{method.name}' has no reverse program; inspect "
                             f"--method {method.backward} shows the backward it reads")
        return 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = plan(graph, method, options, args.layer)
    print(f"program: {len(program)} steps, records {len(program.record)} tensors "
          f"and {len(program.record_shapes)} shapes")
    if args.program:
        print(program)
    return 0


def _print_tensors(graph) -> None:
    """Every float tensor on the path to the logits (what --layer accepts), with its shape."""
    from .map_methods import default_cam_layer
    from .program import live_tensors

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


def cmd_convert(args) -> int:
    import onnx

    from .convert import convert

    out = Path(args.out)
    if out.suffix.lower() != ".onnx":
        raise InputError(f"-o/--out must end in .onnx, got '{args.out}'")
    if not out.parent.exists():
        raise InputError(f"-o/--out folder '{out.parent}' does not exist")
    if out.exists() and Path(args.model).exists() and out.resolve() == Path(args.model).resolve():
        raise InputError("-o/--out names the input model: write the explainer to a new file")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = convert(args.model, method=args.method, layer=args.layer,
                        keep_signal=args.keep_signal, output=args.output,
                        **_method_options(args))
    for w in caught:
        print(f"tsgb: note: {w.message}", file=sys.stderr)
    onnx.save(model, str(out))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    outputs = ", ".join(o.name for o in model.graph.output)
    inputs = ", ".join(i.name for i in model.graph.input)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, opset {opset}); "
          f"inputs: {inputs}; outputs: {outputs}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, alpha=args.alpha if args.alpha is not None else 1.0)
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other error of the CLI."""

    def error(self, message: str):
        self.exit(2, f"tsgb: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tsgb", description="Saliency maps for ONNX CNNs.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def method_flags(sp):
        sp.add_argument("--method", default="tsgb",
                        help=f"explanation method ({', '.join(available_methods())}); default tsgb")
        sp.add_argument("--alpha", type=float, default=None, help="TSGB-FC scale coefficient (eq. 2)")
        sp.add_argument("--reference-compat", action="store_true",
                        help="TSGB: reproduce the reference code's variants")
        sp.add_argument("--output", default=None, help="model output holding the logits")
        sp.add_argument("--layer", default=None, help="tensor to explain at (default: model input)")
        sp.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                        help="a method option (repeatable), e.g. --opt groups=16")

    e = sub.add_parser("explain", help="explain images, .npy tensors or folders of them")
    e.add_argument("model", help="ONNX model file")
    e.add_argument("inputs", nargs="+",
                   help="image files, .npy tensors, or folders (searched recursively)")
    method_flags(e)
    e.add_argument("--target", default="top1",
                   help="'top1', a class index or name, or one per input: 3,7 or cat,dog")
    e.add_argument("--top-k", type=_positive_int, default=1, metavar="K",
                   help="explain the K best classes of every input")
    e.add_argument("--labels", default=None, metavar="FILE",
                   help="class names: a text file (one per line), a JSON list, or 'imagenet' "
                        "(default: the model's metadata)")
    e.add_argument("--out", default=None,
                   help="one file: saliency as .npy (raw) or .png (heat map per image)")
    e.add_argument("--out-dir", default=None, metavar="DIR",
                   help="write per-input files and an index page to DIR")
    e.add_argument("--format", type=_formats, action="append", default=[],
                   metavar="npy,png,html",
                   help="what --out-dir gets (comma list; default png,html; html alone "
                        "embeds its pictures)")
    e.add_argument("--batch-size", type=_positive_int, default=8, help="inputs per run")
    e.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    e.add_argument("--colormap", choices=("positive", "diverging"), default="positive",
                   help="positive: negatives truncated (the paper's display); diverging: "
                        "blue negative, red positive")
    e.add_argument("--cmap", default=None,
                   help="matplotlib colormap name (default jet / RdBu_r; a built-in map "
                        "without matplotlib)")
    e.add_argument("--preset", choices=("torchvision", "caffe", "tf", "none"), default=None,
                   help="image preprocessing preset (overrides the model's metadata)")
    e.add_argument("--size", type=_size, default=None,
                   help="image size, SIZE or HEIGHT,WIDTH (default: the model's)")
    e.add_argument("--mean", type=_floats, default=None,
                   help="per-channel mean, in the model's channel order")
    e.add_argument("--std", type=_floats, default=None, help="per-channel std")
    e.add_argument("--pixel-range", type=float, default=None, metavar="MAX",
                   help="pixels scaled to [0, MAX] before mean/std: 1 or 255")
    e.add_argument("--channel-order", choices=("rgb", "bgr"), default=None,
                   help="channel order of the model input")
    e.add_argument("--layout", choices=("nchw", "nhwc"), default=None,
                   help="image tensor layout (default: detected from the model)")
    e.add_argument("--no-crop", action="store_true", help="resize to size×size without cropping")
    e.add_argument("--backend", choices=("auto", "compiled", "numpy"), default="auto",
                   help="compiled: the convert explainer in one ONNX Runtime session; numpy: "
                        "ONNX Runtime forward + NumPy backward; auto (default): compiled "
                        "when the model has fixed image sizes")
    e.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu",
                   help="cuda: ONNX Runtime CUDA forward + CuPy backward (needs the [gpu] "
                        "extra); auto: cuda when usable, else the CPU (said once)")
    e.set_defaults(func=cmd_explain)

    c = sub.add_parser("convert", help="write a self-contained ONNX explainer model")
    c.add_argument("model", help="ONNX model file")
    c.add_argument("-o", "--out", required=True, help="explainer model to write (.onnx)")
    method_flags(c)
    c.add_argument("--keep-signal", action="store_true",
                   help="also output the backward signal at --layer")
    c.set_defaults(func=cmd_convert)

    i = sub.add_parser("inspect", help="show the model's input, logits, ops and program")
    i.add_argument("model", help="ONNX model file")
    method_flags(i)
    i.add_argument("--program", action="store_true", help="print every step")
    i.add_argument("--tensors", action="store_true",
                   help="list the tensors --layer accepts, with their shapes")
    i.set_defaults(func=cmd_inspect)

    d = sub.add_parser("demo", help="TSGB vs gradient on a real photo with EfficientNet-Lite0")
    d.add_argument("--out", default="tsgb_demo.png", help="PNG to write")
    d.add_argument("--alpha", type=float, default=None, help="TSGB-FC scale coefficient")
    d.set_defaults(func=cmd_demo)

    from .cli_evaluate import register as register_evaluation

    register_evaluation(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed
        return int(exc.code or 0)
    try:
        return args.func(args)
    except TsgbError as exc:
        print(f"tsgb: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, MemoryError) as exc:
        print(f"tsgb: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tsgb: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

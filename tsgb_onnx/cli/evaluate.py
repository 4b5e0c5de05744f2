"""`tsgb evaluate`: score methods on a data set with ground truth."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tsgb_onnx.cli.args import add_engine_flags, option_value, out_path, positive_int
from tsgb_onnx.errors import InputError
from tsgb_onnx.evaluation.evaluate import Settings, evaluate
from tsgb_onnx.io.atomic import write_text_atomic

# what a first run compares: the paper's method, the exact gradient and Grad-CAM
DEFAULT_METHODS = ("tsgb", "gradient", "gradcam")


def _per_method_options(items: list[str]) -> dict:
    """--opt METHOD.KEY=VALUE → {method: {key: value}}."""
    options: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, name = key.strip().partition(".")
        if not sep or not dot or not method or not name:
            raise InputError(f"--opt expects METHOD.KEY=VALUE (e.g. tsgb.alpha=0.8), got '{item}'")
        options.setdefault(method, {})[name.replace("-", "_")] = option_value(value.strip())
    return options


def _count_or_all(text: str) -> int:
    return 0 if text.strip().lower() == "all" else positive_int(text)


def _megabytes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of MB, got '{text}'") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of MB >= 0, got '{text}'")
    return value


def cmd_evaluate(args: argparse.Namespace) -> int:
    out_json = out_path(args.out, (".json",), "--out")
    out_md = out_path(args.markdown, (".md",), "--markdown")
    if not Path(args.model).is_file():
        raise InputError(f"model file '{args.model}' does not exist")
    settings = Settings(
        batch_size=args.batch_size,
        predict_batch=args.predict_batch,
        step=args.step,
        score=args.score,
        tolerance=args.tolerance,
        component=args.component,
        sanity_samples=args.sanity_samples,
        seed=args.seed,
        progress=not args.quiet,
        backend=args.backend,
        sanity_layers=args.sanity_layers,
        memory_budget=args.memory_budget,
        keep_maps=False,
    )
    summary = None
    if args.engine == "ray":
        if args.out_dir is None:
            raise InputError("--engine ray needs --out-dir DIR (where the Parquet results go)")
        from tsgb_onnx.scale.evaluate import run_evaluate

        ev, summary = run_evaluate(
            args.model,
            args.data,
            args.methods,
            args.metrics,
            _per_method_options(args.opt),
            settings,
            args.output,
            args.out_dir,
            address=args.address,
            workers=args.workers,
            progress=not args.quiet,
        )
    else:
        for flag, value in (
            ("--out-dir", args.out_dir),
            ("--address", args.address),
            ("--workers", args.workers),
        ):
            if value is not None:
                raise InputError(f"{flag} is for --engine ray")
        ev = evaluate(
            args.model,
            args.data,
            args.methods,
            args.metrics,
            _per_method_options(args.opt),
            settings,
            output=args.output,
        )
    table = ev.markdown()
    print(
        f"{ev.model} on {ev.data}: {ev.images} images, {len(ev.samples.target)} explained "
        f"objects, batch {settings.batch_size}; inference {ev.inference_images_per_s:.1f} images/s"
    )
    print(table, end="")
    for r in ev.results:
        if r.error:
            print(f"tsgb: note: method '{r.method}' could not run: {r.error}", file=sys.stderr)
    if out_json:
        write_text_atomic(out_json, json.dumps(ev.to_dict(), indent=2) + "\n")
        print(f"wrote {out_json}")
    if out_md:
        write_text_atomic(out_md, table)
        print(f"wrote {out_md}")
    if not any(r.error is None for r in ev.results):
        return 2
    if summary is not None:
        for failure in ev.failed:
            print(
                f"tsgb: note: image '{failure['image']}' failed: {failure['reason']}",
                file=sys.stderr,
            )
        print(summary.line("images"), file=sys.stderr)
        memory = summary.memory_line()
        if memory:
            print(memory, file=sys.stderr)
        if ev.failed:
            return 1
    return 0


def register(sub) -> None:
    """Add `tsgb evaluate` to the subparsers `sub`."""
    e = sub.add_parser("evaluate", help="score methods on a data set with ground truth")
    e.add_argument("model", help="ONNX model file")
    e.add_argument(
        "data",
        help="manifest .json/.toml, folder with a labels file, "
        "'synthetic[:COUNT[:SEED]]' or 'skimage'",
    )
    e.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"comma list of methods, or 'all' for every registered one (default: "
        f"{','.join(DEFAULT_METHODS)})",
    )
    e.add_argument(
        "--metrics",
        default="all",
        help="comma list of pointing,localization,deletion,insertion,"
        "class_sensitivity,sanity (default: all)",
    )
    e.add_argument("--out", default=None, help="write the results as JSON")
    e.add_argument("--markdown", default=None, help="write the table as Markdown")
    e.add_argument(
        "--opt",
        action="append",
        default=[],
        metavar="METHOD.KEY=VALUE",
        help="a method option (repeatable), e.g. --opt tsgb.alpha=0.8",
    )
    e.add_argument("--output", default=None, help="model output holding the logits")
    e.add_argument("--batch-size", type=positive_int, default=32, help="images per explain call")
    e.add_argument(
        "--predict-batch",
        type=positive_int,
        default=256,
        help="perturbed images per forward call in deletion/insertion",
    )
    e.add_argument("--step", type=float, default=0.01, help="pixel share per deletion step")
    e.add_argument(
        "--score",
        choices=("softmax", "sigmoid"),
        default="softmax",
        help="target score of deletion/insertion",
    )
    e.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="pointing-game tolerance in pixels (default 15 at 224 px, scaled)",
    )
    e.add_argument(
        "--component",
        choices=("largest", "all"),
        default="largest",
        help="localization box: largest connected region or all thresholded pixels",
    )
    e.add_argument(
        "--sanity-samples",
        type=positive_int,
        default=8,
        help="objects re-explained per randomized model",
    )
    e.add_argument(
        "--sanity-layers",
        type=_count_or_all,
        default=12,
        metavar="N",
        help="randomization steps of each sanity test, evenly spaced, the last (every layer "
        "randomized) always among them; 'all' for every layer (default 12)",
    )
    e.add_argument(
        "--memory-budget",
        type=_megabytes,
        default=1024,
        metavar="MB",
        help="memory one model run may take: caps the rows of explain and forward calls "
        "(default 1024; 0: no cap)",
    )
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--backend", choices=("auto", "compiled", "numpy"), default="auto")
    e.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    add_engine_flags(e)
    e.add_argument(
        "--out-dir",
        default=None,
        metavar="DIR",
        help="--engine ray: the Parquet results (a row per image × object × method) and "
        "the errors table; rerunning the command completes an interrupted run",
    )
    e.set_defaults(func=cmd_evaluate)

"""Command line: `tsgb evaluate` and `tsgb validate` (registered into the main parser)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .errors import InputError, TsgbError


def _out_path(text: str | None, suffixes: tuple[str, ...], flag: str) -> Path | None:
    if text is None:
        return None
    path = Path(text)
    if path.suffix.lower() not in suffixes:
        raise InputError(f"{flag} must end in {' or '.join(suffixes)}, got '{text}'")
    if not path.parent.exists():
        raise InputError(f"{flag} folder '{path.parent}' does not exist")
    return path


def _method_options(items: list[str]) -> dict:
    """--opt METHOD.KEY=VALUE → {method: {key: value}}."""
    from .cli import _option_value

    options: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, name = key.strip().partition(".")
        if not sep or not dot or not method or not name:
            raise InputError(f"--opt expects METHOD.KEY=VALUE (e.g. tsgb.alpha=0.8), got '{item}'")
        options.setdefault(method, {})[name.replace("-", "_")] = _option_value(value.strip())
    return options


def cmd_evaluate(args) -> int:
    from .evaluate import Settings, evaluate

    out_json = _out_path(args.out, (".json",), "--out")
    out_md = _out_path(args.markdown, (".md",), "--markdown")
    if not Path(args.model).is_file():
        raise InputError(f"model file '{args.model}' does not exist")
    settings = Settings(batch_size=args.batch_size, predict_batch=args.predict_batch,
                        step=args.step, score=args.score, tolerance=args.tolerance,
                        component=args.component, sanity_samples=args.sanity_samples,
                        seed=args.seed, progress=not args.quiet, backend=args.backend)
    ev = evaluate(args.model, args.data, args.methods, args.metrics,
                  _method_options(args.opt), settings, output=args.output)
    table = ev.markdown()
    print(f"{ev.model} on {ev.data}: {ev.images} images, {len(ev.samples.target)} explained "
          f"objects, batch {settings.batch_size}; inference {ev.inference_images_per_s:.1f} images/s")
    print(table, end="")
    for r in ev.results:
        if r.error:
            print(f"tsgb: note: method '{r.method}' could not run: {r.error}", file=sys.stderr)
    if out_json:
        out_json.write_text(json.dumps(ev.to_dict(), indent=2) + "\n")
        print(f"wrote {out_json}")
    if out_md:
        out_md.write_text(table)
        print(f"wrote {out_md}")
    return 0 if any(r.error is None for r in ev.results) else 2


def cmd_validate(args) -> int:
    """0: every check passed; 1: a check failed; 2: could not run (printed as one line)."""
    from .validate import validate

    try:
        report = validate(args.config, out_dir=args.out_dir, progress=not args.quiet)
    except (TsgbError, OSError):
        raise
    except Exception as exc:  # anything else: still one line and exit 2, never a traceback
        raise TsgbError(f"validation could not run: {type(exc).__name__}: {exc}") from None
    for c in report.checks:
        print(f"{'PASS' if c.passed else 'FAIL'}  {c.message}")
    failed = [c.name for c in report.checks if not c.passed]
    print(("validation passed" if not failed else f"validation failed: {', '.join(failed)}")
          + f"; wrote {report.files['json']}, {report.files['junit']}, {report.files['html']}")
    return report.exit_code


def register(sub) -> None:
    """Add the evaluation subcommands to the `tsgb` subparsers `sub`."""
    from .cli import _positive_int

    e = sub.add_parser("evaluate", help="score methods on a data set with ground truth")
    e.add_argument("model", help="ONNX model file")
    e.add_argument("data", help="manifest .json/.toml, folder with a labels file, "
                                "'synthetic[:COUNT[:SEED]]' or 'skimage'")
    e.add_argument("--methods", default="all", help="comma list of methods (default: all registered)")
    e.add_argument("--metrics", default="all",
                   help="comma list of pointing,localization,deletion,insertion,"
                        "class_sensitivity,sanity (default: all)")
    e.add_argument("--out", default=None, help="write the results as JSON")
    e.add_argument("--markdown", default=None, help="write the table as Markdown")
    e.add_argument("--opt", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="a method option (repeatable), e.g. --opt tsgb.alpha=0.8")
    e.add_argument("--output", default=None, help="model output holding the logits")
    e.add_argument("--batch-size", type=_positive_int, default=32, help="images per explain call")
    e.add_argument("--predict-batch", type=_positive_int, default=256,
                   help="perturbed images per forward call in deletion/insertion")
    e.add_argument("--step", type=float, default=0.01, help="pixel share per deletion step")
    e.add_argument("--score", choices=("softmax", "sigmoid"), default="softmax",
                   help="target score of deletion/insertion")
    e.add_argument("--tolerance", type=float, default=None,
                   help="pointing-game tolerance in pixels (default 15 at 224 px, scaled)")
    e.add_argument("--component", choices=("largest", "all"), default="largest",
                   help="localization box: largest connected region or all thresholded pixels")
    e.add_argument("--sanity-samples", type=_positive_int, default=8,
                   help="objects re-explained per randomized model")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--backend", choices=("auto", "compiled", "numpy"), default="auto")
    e.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    e.set_defaults(func=cmd_evaluate)

    v = sub.add_parser("validate", help="check a model against thresholds (exit 0 pass, 1 fail, "
                                        "2 could not run)")
    v.add_argument("config", help="TOML config (see docs/evaluation.md)")
    v.add_argument("--out-dir", default=None,
                   help="folder for report.json, junit.xml, report.html (default: the config's)")
    v.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    v.set_defaults(func=cmd_validate)

"""`tsgb validate`: check a model against the thresholds of a TOML config."""

from __future__ import annotations

import argparse

from tsgb_onnx.errors import TsgbError
from tsgb_onnx.evaluation.validate import validate


def cmd_validate(args: argparse.Namespace) -> int:
    """0: every check passed; 1: a check failed; 2: could not run (printed as one line)."""
    try:
        report = validate(args.config, out_dir=args.out_dir, progress=not args.quiet)
    except (TsgbError, OSError):
        raise
    except Exception as exc:  # anything else: still one line and exit 2, never a traceback
        raise TsgbError(f"validation could not run: {type(exc).__name__}: {exc}") from None
    for c in report.checks:
        print(f"{'PASS' if c.passed else 'FAIL'}  {c.message}")
    failed = [c.name for c in report.checks if not c.passed]
    print(
        ("validation passed" if not failed else f"validation failed: {', '.join(failed)}")
        + f"; wrote {report.files['json']}, {report.files['junit']}, {report.files['html']}"
    )
    return report.exit_code


def register(sub) -> None:
    """Add `tsgb validate` to the subparsers `sub`."""
    v = sub.add_parser(
        "validate", help="check a model against thresholds (exit 0 pass, 1 fail, 2 could not run)"
    )
    v.add_argument("config", help="TOML config (see docs/evaluation.md)")
    v.add_argument(
        "--out-dir",
        default=None,
        help="folder for report.json, junit.xml, report.html (default: the config's)",
    )
    v.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    v.set_defaults(func=cmd_validate)

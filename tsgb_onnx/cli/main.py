"""The `tsgb` command: one subcommand per module of this package."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tsgb_onnx.cli import convert, demo, evaluate, explain, inspect, validate
from tsgb_onnx.cli.args import Parser
from tsgb_onnx.errors import TsgbError

COMMANDS = (explain, convert, inspect, demo, evaluate, validate)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="tsgb", description="Saliency maps for ONNX CNNs.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in COMMANDS:
        command.register(sub)
    return parser


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

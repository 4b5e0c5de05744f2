"""The `tsgb` command: one subcommand per module of this package.

What every command shares is handled here: a `TsgbError` or `OSError` is one line
`tsgb: error: …` and exit 2; Ctrl-C is `tsgb: interrupted` and exit 130; a Python warning is one
line `tsgb: note: …` (no file path, no source line); a reader that closes the pipe early
(`tsgb inspect … | head`) ends the command quietly with exit 1, as the Python documentation
recommends (signal.html, "Note on SIGPIPE").
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from collections.abc import Iterator, Sequence

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


def note_line(message: Warning | str) -> str:
    """A warning as the one line the CLI prints: `tsgb: note: <message>`."""
    return "tsgb: note: " + " ".join(str(message).split())


@contextlib.contextmanager
def notes_for_warnings() -> Iterator[None]:
    """For the duration of a command, print each warning as one `tsgb: note:` line, once
    (the same message raised from two places of the code is one note)."""
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = note_line(message)
        if text in seen:
            return
        seen.add(text)
        with contextlib.suppress(OSError):  # stderr gone: nothing to tell
            print(text, file=file or sys.stderr)

    saved = warnings.showwarning
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = saved


def _os_message(exc: OSError) -> str:
    said = exc.strerror or str(exc)
    return f"{said}: '{exc.filename}'" if exc.filename else said


def _quiet_stdout() -> None:
    """The reader of stdout went away: send what is still buffered to /dev/null, so that
    Python's own flush at exit does not report the broken pipe again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    with contextlib.suppress(OSError, ValueError):
        os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed
        return int(exc.code or 0)
    try:
        with notes_for_warnings():
            code = args.func(args)
            sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        _quiet_stdout()
        return 1
    except TsgbError as exc:
        print(f"tsgb: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"tsgb: error: {_os_message(exc)}", file=sys.stderr)
        return 2
    except MemoryError as exc:
        print(f"tsgb: error: out of memory ({exc or 'no detail'})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tsgb: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

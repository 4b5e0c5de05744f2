"""Command line: `tsgb evaluate` and `tsgb validate` (registered into the main parser)."""

from __future__ import annotations


def register(sub) -> None:
    """Add the evaluation subcommands to the `tsgb` subparsers `sub`."""

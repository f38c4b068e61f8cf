"""Command-line options shared by several verbs, defined once."""

from __future__ import annotations

import argparse

__all__ = ["add_allow_global"]


def add_allow_global(parser: argparse.ArgumentParser) -> None:
    """``--allow-global NAME`` (repeatable), stored as ``allow_globals``: pickle globals the user trusts."""
    parser.add_argument(
        "--allow-global",
        metavar="NAME",
        action="append",
        default=[],
        dest="allow_globals",
        help="trust pickle global NAME (module.qualname); repeat for several",
    )

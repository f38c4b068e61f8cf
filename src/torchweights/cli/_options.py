"""Command-line conventions every verb shares, defined once: the verb's parser with ``-q``/``-v``/``--json``, the
"exit codes:" and "examples:" blocks of its ``--help``, and options several verbs take (``--allow-global``).

The conventions (README, "Command line"):

- ``-q/--quiet``: nothing on stdout (``--json`` output included); errors still go to stderr, the exit code
  carries the verdict, as ``grep -q`` and ``git -q``; the ``torchweights`` logger shows errors only.
- ``-v/--verbose``: nothing truncated (every finding, every row) and the ``torchweights`` logger at INFO on
  stderr; ``-vv`` at DEBUG.
- ``--json``: one JSON object on stdout, also on failure: ``{"error": {"code", "type", "message", "fix"}}``.
- ``--color=auto|always|never``: colour of status words; ``auto`` (the default) colours only on a terminal and
  honours ``NO_COLOR``, ``FORCE_COLOR`` and ``TERM=dumb`` (:mod:`torchweights.style`), as ``ls`` and ``grep`` do.

``-q`` and ``-v`` are accepted before the verb too (``torchweights -q scan x.pt``), as git's global options are.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "EXIT_INTERRUPTED_TEXT",
    "print_report",
    "HelpFormatter",
    "add_allow_global",
    "add_verb",
    "add_verbosity",
    "epilog",
]

#: The line every verb's "exit codes:" block ends with.
EXIT_INTERRUPTED_TEXT = "interrupted (Ctrl-C)"
#: Width of the epilog's lines (it is printed as written, not re-wrapped to the terminal).
EPILOG_WIDTH = 78
#: What exit code 2 also means for every verb: argparse's usage error.
USAGE_TEXT = "the command line is invalid (unknown option, missing argument)"


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, except that text written with line breaks (the epilog's blocks) is kept as written;
    one-paragraph descriptions are still wrapped to the terminal."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def epilog(exit_codes: Mapping[int, str], examples: Sequence[tuple[str, str]]) -> str:
    """The "exit codes:" and "examples:" blocks of a verb's ``--help``.

    Args:
        exit_codes: what each exit code means for the verb; 2 also says that the command line was invalid, and
            130 (interrupted) is added.
        examples: ``(command line, what it does)`` pairs.
    """
    import textwrap

    codes = dict(exit_codes)
    codes[2] = f"{codes[2]}; or {USAGE_TEXT}" if 2 in codes else USAGE_TEXT
    codes[130] = EXIT_INTERRUPTED_TEXT
    lines = ["exit codes:"]
    for code, text in sorted(codes.items()):
        lines += textwrap.wrap(text, EPILOG_WIDTH, initial_indent=f"  {code:<4} ", subsequent_indent=" " * 7)
    lines += ["", "examples:"]
    for command, what in examples:
        lines += [f"  # {what}", f"  {command}"]
    return "\n".join(lines) + "\n"


def add_verbosity(parser: argparse.ArgumentParser, *, default: object = argparse.SUPPRESS) -> None:
    """``-q/--quiet`` and ``-v/--verbose`` (exclusive). A verb's parser leaves them unset unless given
    (``argparse.SUPPRESS``), so the values given before the verb survive; the top-level parser sets the defaults."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default if default is argparse.SUPPRESS else False,
        help="print nothing on stdout; errors still go to stderr and the exit code says the result",
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default if default is argparse.SUPPRESS else 0,
        help="list everything (nothing truncated) and log to stderr (-vv: debug)",
    )


def add_verb(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    *,
    help: str,
    description: str,
    exit_codes: Mapping[int, str],
    examples: Sequence[tuple[str, str]],
    json: str | None = "print one JSON object instead of the text report",
) -> argparse.ArgumentParser:
    """A verb's parser, with what every verb shares: ``-q``, ``-v``, ``--json`` (unless ``json`` is None) and the
    exit codes and examples in its ``--help``."""
    parser = subparsers.add_parser(
        name,
        help=help,
        description=description,
        epilog=epilog(exit_codes, examples),
        formatter_class=HelpFormatter,
    )
    add_verbosity(parser)
    parser.add_argument(
        "--color",
        "--colour",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour status words: auto (a terminal, unless NO_COLOR is set), always or never",
    )
    if json is not None:
        parser.add_argument(
            "--json", action="store_true", help=json + ' (on failure: {"error": {"code", "type", "message", "fix"}})'
        )
    return parser


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


def print_report(args: argparse.Namespace, report: Any) -> None:
    """A verb's report on stdout: ``report.to_dict()`` as JSON under ``--json``, else its text laid out for stdout
    (:func:`~torchweights.style.render_for`: the terminal's width, colour where it colours)."""
    import json
    import sys

    from ..style import render_for

    text = json.dumps(report.to_dict(), indent=2) + "\n" if args.json else render_for(sys.stdout, report.__str__)
    sys.stdout.write(text)
    sys.stdout.flush()

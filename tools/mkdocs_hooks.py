"""mkdocs hook (mkdocs.yml ``hooks:``): the command-line reference, generated from the parser at build time.

docs/cli.md holds the prose and a ``<!-- cli-reference -->`` marker; :func:`on_page_markdown` replaces the marker
with :func:`render`: the top-level ``--help`` and one section per verb (``torchweights.cli.COMMANDS``, in order)
with its ``--help``, formatted at a fixed width so that the page does not depend on the terminal that builds it.
The page is therefore always the parser of the installed code: a verb or option added anywhere appears without
editing the docs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- cli-reference -->"
WIDTH = 100  # columns of the rendered help


def _help(parser: argparse.ArgumentParser) -> str:
    """``parser.format_help()`` at :data:`WIDTH` columns (argparse reads ``COLUMNS``), without trailing spaces."""
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(WIDTH + 2)  # argparse wraps at COLUMNS - 2
    try:
        text = parser.format_help()
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())


def verbs(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommand parsers of ``parser`` by name, in the order they were added."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:  # argparse keeps its subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


def render() -> str:
    """The reference: ``torchweights --help``, then ``## torchweights VERB`` with ``torchweights VERB --help``."""
    if str(ROOT / "src") not in sys.path:
        sys.path.insert(0, str(ROOT / "src"))
    from torchweights.cli import build_parser

    parser = build_parser()
    parts = [f"```text\n$ torchweights --help\n{_help(parser)}\n```\n"]
    for name, sub in verbs(parser).items():
        parts.append(f"\n## `torchweights {name}`\n\n```text\n$ torchweights {name} --help\n{_help(sub)}\n```\n")
    return "".join(parts)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """mkdocs event: put the generated reference where docs/cli.md has the marker."""
    if MARKER in markdown:
        return markdown.replace(MARKER, render())
    return markdown

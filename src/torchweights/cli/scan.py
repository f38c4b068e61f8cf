"""``torchweights scan FILE...``: is it safe to load? Static analysis only; nothing from the files is run.

Prints, per file, the verdict and every finding (worst first) with where it is (member, opcode offset), what and
why; ``--json`` prints one JSON object. Exit codes: 0 every file is clean (warnings such as unknown classes do not
count), 1 at least one file has a dangerous or suspicious finding, 2 otherwise when a file could not be fully read
or would be refused by ``tw.load``. Never imports torch.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ._options import add_allow_global

if TYPE_CHECKING:
    from ..tools.scan.report import ScanReport

# ``..scan`` and ``..scan_text`` are imported by the functions that use them: every subcommand module is imported to
# build the parser, and ``torchweights --help`` should not pay for the scanner.

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``scan`` subcommand to the top-level parser."""
    parser = subparsers.add_parser(
        "scan",
        help="is it safe to load? find pickle code and hostile structures without running anything",
        description="Statically analyse every pickle in each file (zip members, legacy streams, tar members, "
        "nested pickles) and say whether loading it would run code. Nothing from the files is imported or "
        "called. Exit 0 clean, 1 dangerous findings, 2 could not be fully read.",
    )
    parser.add_argument("paths", metavar="FILE", nargs="+", help="checkpoint files, sharded indexes or folders")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the text report")
    parser.add_argument("--all", action="store_true", help="list every finding, not only the first 50 per file")
    add_allow_global(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Scan every path and print the reports; return the exit code."""
    from ..style import render_for
    from ..tools.scan.report import to_json
    from ..tools.scan.scanner import scan
    from ..tools.scan.text import TEXT_FINDING_LIMIT, render_text

    reports = [scan(path, allow_globals=args.allow_globals) for path in args.paths]
    if args.json:
        sys.stdout.write(to_json(reports) + "\n")
    else:
        limit = None if args.all else TEXT_FINDING_LIMIT
        sys.stdout.write(render_for(sys.stdout, lambda: "\n".join(render_text(r, limit=limit) for r in reports)))
    sys.stdout.flush()
    return exit_code(reports)


def exit_code(reports: list[ScanReport]) -> int:
    """1 when any report is dangerous, else 2 when any is unreadable, else 0."""
    verdicts = {r.verdict for r in reports}
    return 1 if "dangerous" in verdicts else 2 if "unreadable" in verdicts else 0

"""``torchweights scan PATH...``: is it safe to load? Static analysis only; nothing from the files is run.

Folders are walked recursively (:func:`~torchweights.tools.scan.tree.scan_tree`: ``--include``/``--exclude`` globs,
repeatable or comma-separated; a sharded set or a distributed-checkpoint folder is one checkpoint; files that are no
checkpoint at all are listed as ignored; links to folders and broken links as skipped). One checkpoint: its verdict
and every finding (worst first) with where it is (member, opcode offset), what and why. Several: one line per file
(``verdict path (first finding)``) and a summary (``300 files: 297 clean, 2 dangerous, 1 unreadable``), with a
progress bar on stderr when it is a terminal. ``--json`` prints one JSON object (every report and the summary). Exit
codes, by default: 0 every file is clean (warnings such as unknown classes do not count), 1 at least one file has a
dangerous or suspicious finding, 2 otherwise when a file could not be fully read or would be refused by ``tw.load``.
``--fail-on`` names the conditions that fail instead (``dangerous`` 1, ``unknown`` 1: a class scan does not know,
``unreadable`` 2). Never imports torch.
"""

from __future__ import annotations

import argparse
import sys

from ._options import add_allow_global, add_verb

# ``..scan`` and ``..scan_text`` are imported by the functions that use them: every subcommand module is imported to
# build the parser, and ``torchweights --help`` should not pay for the scanner.

__all__ = ["EXAMPLES", "EXIT_CODES", "FailOn", "globs", "register", "run"]

#: What each exit code of ``scan`` means (its ``--help`` lists them).
EXIT_CODES = {
    0: "every file is clean (warnings such as unknown classes do not count)",
    1: "at least one file has a dangerous or suspicious finding (with --fail-on unknown: or names a class scan does "
    "not know)",
    2: "otherwise, a file could not be fully read or would be refused by tw.load (unless --fail-on leaves out "
    "unreadable)",
}
#: ``(command line, what it does)`` for ``scan --help``.
EXAMPLES = (
    ("torchweights scan pytorch_model.bin", "is it safe to load? the verdict and every finding"),
    ("torchweights scan -q downloads/*.pt || echo unsafe", "in a script or CI: only the exit code"),
    ("torchweights scan --allow-global mylib.Config model.pt", "trust a class you know"),
    ("torchweights scan --json model.pt", "the findings as JSON"),
    ("torchweights scan models/ --exclude 'runs/*' --fail-on dangerous", "a folder in CI: fail only on danger"),
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``scan`` subcommand to the top-level parser."""
    parser = add_verb(
        subparsers,
        "scan",
        help="is it safe to load? find pickle code and hostile structures without running anything",
        description="Statically analyse every pickle in each file (zip members, legacy streams, tar members, "
        "nested pickles) and say whether loading it would run code. Nothing from the files is imported or "
        "called. Folders are walked recursively.",
        exit_codes=EXIT_CODES,
        examples=EXAMPLES,
    )
    parser.add_argument(
        "paths",
        metavar="PATH",
        nargs="+",
        help="checkpoint files (read by content, whatever their name) and folders (walked recursively; a sharded "
        "set or a distributed-checkpoint folder is one checkpoint)",
    )
    parser.add_argument(
        "--include",
        metavar="GLOB",
        action="append",
        type=globs,
        default=None,
        help="in folders, scan the files matching GLOB (repeatable or comma-separated, a literal comma is [,]; "
        "replaces the default: *.pt *.pth *.pt2 *.bin *.ckpt *.safetensors *.index.json *.pkl *.pickle *.joblib "
        "*.npy *.npz *.tar *.mar); a GLOB with / matches the path inside the folder; files found that are no "
        "checkpoint at all (config.json, README) are listed as ignored and do not fail the run",
    )
    parser.add_argument(
        "--exclude",
        metavar="GLOB",
        action="append",
        type=globs,
        default=[],
        help="in folders, leave out the files and folders matching GLOB (repeatable or comma-separated: "
        "--exclude .git,runs)",
    )
    parser.add_argument(
        "--fail-on",
        metavar="WHAT",
        action="append",
        type=FailOn(),
        default=None,
        help="exit non-zero only for these: dangerous (exit 1), unknown (exit 1: a class scan does not know), "
        "unreadable (exit 2); repeatable or comma-separated; default dangerous,unreadable",
    )
    parser.add_argument(
        "--all", action="store_true", help="list every finding, not only the first 50 per file (as -v does)"
    )
    add_allow_global(parser)
    parser.set_defaults(handler=run)


class FailOn:
    """``--fail-on``'s type: one word or a comma list of :data:`~torchweights.tools.scan.tree.FAIL_ON`.

    :attr:`choices` are the words, for ``torchweights completion`` (argparse's own ``choices`` cannot check a comma
    list); the scanner is imported only when they are asked for.
    """

    @property
    def choices(self) -> tuple[str, ...]:
        """The words ``--fail-on`` takes."""
        from ..tools.scan.tree import FAIL_ON

        return tuple(FAIL_ON)

    def __call__(self, value: str) -> list[str]:
        words = [w.strip().lower() for w in value.split(",") if w.strip()]
        if not words or any(w not in self.choices for w in words):
            raise argparse.ArgumentTypeError(f"{value!r}: choose from {', '.join(self.choices)}")
        return words


def globs(value: str) -> list[str]:
    """``--include``/``--exclude``'s value: globs separated by commas, except a comma inside ``[...]`` (``[,]``
    matches a literal comma)."""
    out = [""]
    depth = 0
    for char in value:
        if char == "," and not depth:
            out.append("")
            continue
        depth = 1 if char == "[" else 0 if char == "]" else depth
        out[-1] += char
    words = [w.strip() for w in out if w.strip()]
    if not words:
        raise argparse.ArgumentTypeError(f"{value!r}: no glob in it")
    return words


def run(args: argparse.Namespace) -> int:
    """Scan every path (folders recursively) and print the reports; return the exit code."""
    import json
    import os

    from ..progress import cli_enabled, terminal_bar
    from ..style import render_for
    from ..tools.scan.text import TEXT_FINDING_LIMIT, render_text
    from ..tools.scan.tree import DEFAULT_FAIL_ON, scan_tree

    several = len(args.paths) > 1 or os.path.isdir(args.paths[0])  # a bar for one file would only flash
    with terminal_bar("scan", unit="file", enabled=cli_enabled(args) and several) as bar:
        tree = scan_tree(
            args.paths,
            include=None if args.include is None else [g for group in args.include for g in group],
            exclude=[g for group in args.exclude for g in group],
            allow_globals=args.allow_globals,
            progress=bar,
        )
    if args.json:
        sys.stdout.write(json.dumps(tree.to_dict(), allow_nan=False) + "\n")
    elif not tree.walked:  # files named one by one: their full reports, as before folders were walked
        limit = None if args.all or args.verbose else TEXT_FINDING_LIMIT
        sys.stdout.write(render_for(sys.stdout, lambda: "\n".join(render_text(r, limit=limit) for r in tree.reports)))
        if len(tree.reports) > 1:
            sys.stdout.write(tree.summary + "\n")
    else:
        sys.stdout.write(render_for(sys.stdout, tree.__str__))
    sys.stdout.flush()
    fail_on = DEFAULT_FAIL_ON if args.fail_on is None else [w for words in args.fail_on for w in words]
    return tree.exit_code(fail_on)

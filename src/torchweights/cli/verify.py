"""``torchweights verify PATH``: are the checkpoint's bytes what it (or a manifest) says they should be?

safetensors and sharded sets: header and size consistency, the index's ``total_size`` against its shards, shards
against the index; torch zip files: the CRC-32 of every member; with ``--manifest SHA256SUMS``: the sha256 of
every file. Every check is listed; problems are marked ``FAIL`` with their code.

Exit codes: 0 every check passed; 1 a check failed; 2 nothing to verify (missing file, not a checkpoint, a format
torchweights does not read, an unreadable manifest).
"""

from __future__ import annotations

import argparse

from . import EXIT_OK
from ._options import add_allow_global, add_verb, print_report

__all__ = ["EXAMPLES", "EXIT_CODES", "EXIT_PROBLEMS", "register", "run"]

#: The checkpoint was checked and at least one check failed.
EXIT_PROBLEMS = 1

#: What each exit code of ``verify`` means (its ``--help`` lists them).
EXIT_CODES = {
    0: "every check passed",
    1: "a check failed (each is listed, problems marked FAIL with their code)",
    2: "nothing to verify: a missing file, not a checkpoint, a format torchweights does not read, an unreadable "
    "manifest",
}
#: ``(command line, what it does)`` for ``verify --help``.
EXAMPLES = (
    ("torchweights verify model.safetensors", "header and sizes consistent with the file"),
    ("torchweights verify model.safetensors.index.json", "a sharded set: the index against every shard"),
    ("torchweights verify model.pt --manifest SHA256SUMS", "also every file's sha256 against a manifest"),
    ("torchweights verify -q model.pt && echo intact", "in a script: only the exit code"),
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``verify`` subcommand to the top-level parser."""
    parser = add_verb(
        subparsers,
        "verify",
        help="check a checkpoint's integrity: headers, sizes, shard index, zip CRCs, sha256 manifest",
        description=(
            "Check the integrity of PATH without loading it: safetensors headers and sizes, sharded indexes and "
            "their shards, zip CRC-32 of every member of torch files, and optionally a SHA256SUMS manifest."
        ),
        exit_codes=EXIT_CODES,
        examples=EXAMPLES,
        json="print the report as one JSON object",
    )
    parser.add_argument("path", metavar="PATH", help="checkpoint file, sharded index (*.index.json) or folder")
    parser.add_argument(
        "--manifest", metavar="SHA256SUMS", default=None, help="check every file's sha256 against this manifest"
    )
    add_allow_global(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Verify and print the report; return the exit code."""
    from ..progress import cli_enabled, terminal_bar
    from ..tools.verify import verify

    with terminal_bar("verify", enabled=cli_enabled(args)) as bar:  # on a terminal only
        report = verify(args.path, manifest=args.manifest, allow_globals=args.allow_globals, progress=bar)
    print_report(args, report)
    return EXIT_OK if report.ok else EXIT_PROBLEMS

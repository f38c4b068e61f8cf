"""``torchweights diff A B``: how two checkpoints differ, after the container and prefix handling of ``load_into``.

Prints a one-line summary (``identical``; ``same layout, values differ in N tensors (largest: ...)``; ``different
layouts: ...``), then every tensor that is not identical: only in A or B, shape or dtype changes, and for values
the largest absolute and relative difference and the fraction of changed elements. ``--json`` prints it all.

Exit codes: 0 identical (or equal within ``--rtol``/``--atol``); 1 they differ; 2 a checkpoint cannot be read.
"""

from __future__ import annotations

import argparse

from . import EXIT_OK
from ._options import add_allow_global, add_verb, print_report

__all__ = ["EXAMPLES", "EXIT_CODES", "EXIT_DIFFERENT", "register", "run"]

#: Both checkpoints were read, and they differ.
EXIT_DIFFERENT = 1

#: What each exit code of ``diff`` means (its ``--help`` lists them).
EXIT_CODES = {0: "identical (or equal within --rtol/--atol)", 1: "they differ", 2: "a checkpoint cannot be read"}
#: ``(command line, what it does)`` for ``diff --help``.
EXAMPLES = (
    ("torchweights diff finetuned.safetensors base.safetensors", "what changed: names, shapes, dtypes, values"),
    ("torchweights diff dp_model.pt model.safetensors", "a conversion kept every value ('module.' is handled)"),
    ("torchweights diff -q a.pt b.pt --atol 1e-6 || echo differs", "in a script: only the exit code"),
    ("torchweights diff --json a.pt b.pt", "every difference as JSON"),
)


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"tolerance must be 0 or more, got {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``diff`` subcommand to the top-level parser."""
    parser = add_verb(
        subparsers,
        "diff",
        help="compare two checkpoints: names, shapes, dtypes and values (exit 0 identical, 1 differs)",
        description=(
            "Compare checkpoint A with B (any formats) tensor by tensor, after the same container and prefix "
            "handling as load_into."
        ),
        exit_codes=EXIT_CODES,
        examples=EXAMPLES,
        json="print the report as one JSON object",
    )
    parser.add_argument("a", metavar="A", help="checkpoint to compare")
    parser.add_argument("b", metavar="B", help="reference checkpoint")
    parser.add_argument("--rtol", type=_tolerance, default=0.0, help="relative tolerance (default 0)")
    parser.add_argument("--atol", type=_tolerance, default=0.0, help="absolute tolerance (default 0)")
    parser.add_argument(
        "--container", metavar="NAME", default="auto", help="dict inside both files to compare (default: auto)"
    )
    add_allow_global(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Compare and print the report; return the exit code."""
    from ..progress import cli_enabled, terminal_bar
    from ..tools.diff import diff

    with terminal_bar("diff", enabled=cli_enabled(args)) as bar:  # on a terminal only
        report = diff(
            args.a,
            args.b,
            rtol=args.rtol,
            atol=args.atol,
            container=args.container,
            allow_globals=args.allow_globals,
            progress=bar,
        )
    print_report(args, report)
    return EXIT_OK if report.equal else EXIT_DIFFERENT

"""``torchweights report CKPT --html OUT.html [--model M:F] [--against OTHER]``: one self-contained HTML page.

The page (:func:`torchweights.tools.html_report.html_report`) has the file summary, with ``--model`` the report of
a real load into the model the factory builds (``--model`` as ``torchweights check`` takes it: the same function
builds the model) with its value findings, the flagged tensors named, plots of per-layer statistics, of the dtype
and size breakdown and with ``--against`` of the relative change of every tensor against a reference, and a table
of every tensor. The plots need matplotlib: ``pip install 'torchweights[report]'``. Prints one summary line.

Exit codes: :data:`EXIT_CODES` (0 written, nothing flagged; 1 written, tensors flagged or the load does not fit;
2 nothing written).
"""

from __future__ import annotations

import argparse

from . import EXIT_OK, EXIT_UNREADABLE, print_error
from ._options import add_allow_global, add_verb, print_report
from .check import factory_spec

__all__ = ["EXAMPLES", "EXIT_CODES", "EXIT_FLAGGED", "register", "run"]

#: The page was written, and it flags tensors or a load that does not fit.
EXIT_FLAGGED = 1

#: What each exit code of ``report`` means (its ``--help`` lists them).
EXIT_CODES = {
    0: "the page was written and nothing is flagged",
    1: "the page was written and it flags tensors (NaN, Inf, all-zero or constant weights, tensors left as "
    "initialised) or the load does not fit",
    2: "nothing was written: a checkpoint cannot be read, matplotlib is missing (pip install 'torchweights[report]'), "
    "the model factory fails, or the page cannot be written",
}
#: ``(command line, what it does)`` for ``report --help``.
EXAMPLES = (
    ("torchweights report model.safetensors --html report.html", "statistics, findings and plots of one file"),
    (
        "torchweights report run.ckpt --model my_project.models:build --html report.html",
        "also the load into the model, with its value checks",
    ),
    ("torchweights report tuned.pt --against base.pt --html report.html", "also what fine-tuning moved, per tensor"),
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``report`` subcommand to the top-level parser."""
    parser = add_verb(
        subparsers,
        "report",
        help="write one self-contained HTML page about a checkpoint: load report, value findings, plots",
        description=(
            "Write a self-contained HTML page about CKPT: the file summary, with --model the report of a load into "
            "the model (value findings included), plots of per-layer statistics, dtypes and sizes, and with "
            "--against the relative change of every tensor. The plots need matplotlib: "
            "pip install 'torchweights[report]'."
        ),
        exit_codes=EXIT_CODES,
        examples=EXAMPLES,
        json="print the summary (where, flagged tensors, the load's result) as one JSON object",
    )
    parser.add_argument("path", metavar="CKPT", help="checkpoint file, sharded index (*.index.json) or folder")
    parser.add_argument("--html", metavar="OUT.html", required=True, help="the page to write (replaced if it exists)")
    parser.add_argument(
        "--model",
        metavar="MODULE:FACTORY",
        type=factory_spec,
        help="load CKPT into the model this factory builds, as `torchweights check --model` takes it "
        "('pkg.models:build' or 'models.py:Net'), and report the load and its value checks",
    )
    parser.add_argument("--against", metavar="OTHER", help="reference checkpoint: plot what changed from it")
    add_allow_global(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Build the page, write it and print its summary; return the exit code."""
    from ..tools.html_report import html_report
    from .check import ModelFactoryError, build_model

    model = None
    if args.model is not None:
        from ..report.plots import pyplot

        pyplot()  # a missing matplotlib is said before the model is built
        try:
            model = build_model(args.model)
        except ModelFactoryError as e:
            print_error(e, json_output=args.json, lead="cannot build the model")
            return EXIT_UNREADABLE
    import logging

    logger = logging.getLogger("torchweights")
    level = logger.level
    if not args.verbose:  # the summary below says what the load's warning would: say it once
        logger.setLevel(logging.ERROR)
    try:
        report = html_report(args.path, args.html, model=model, against=args.against, allow_globals=args.allow_globals)
    finally:
        logger.setLevel(level)
    print_report(args, report)
    return EXIT_OK if report.ok else EXIT_FLAGGED

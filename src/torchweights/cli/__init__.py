"""The ``torchweights`` command line: one subcommand per module of this package.

Each subcommand module defines ``register(subparsers)``, which adds its parser and sets ``handler`` to a function
``(argparse.Namespace) -> int`` returning the exit code. Adding a command (``scan``, ``check``, ``diff``,
``convert``) means adding its module and its name to :data:`COMMANDS`.

Exit codes: 0 success; 1 the command ran but found a problem (``check``: the checkpoint does not fit the model);
2 the checkpoint could not be read (a :class:`~torchweights.errors.TorchWeightsError`, printed to stderr as
``ClassName [code]: message`` and ``more: <url>``, its errors reference entry) or the command line was invalid
(argparse's own usage error).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable

from ..errors import TorchWeightsError

__all__ = ["COMMANDS", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_UNREADABLE", "build_parser", "main"]

#: Subcommand modules under ``torchweights.cli``, in the order ``--help`` lists them.
COMMANDS: tuple[str, ...] = ("inspect", "scan", "check", "diff", "convert", "verify")

EXIT_OK = 0
EXIT_UNREADABLE = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand of :data:`COMMANDS` registered."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="torchweights",
        description="Read PyTorch checkpoints safely: inspect what a file holds and check whether it fits a model, "
        "without executing anything from it.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    subparsers.required = True
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return its exit code (usable as a console-script entry point).

    Args:
        argv: arguments without the program name; ``sys.argv[1:]`` when None.

    Returns:
        The exit code: 0 on success, 2 when the checkpoint could not be read. Invalid usage raises
        ``SystemExit(2)`` from argparse, as ``--help`` and ``--version`` raise ``SystemExit(0)``.
    """
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except TorchWeightsError as e:
        sys.stdout.flush()
        print(f"{type(e).__name__} [{e.code}]: {e.message}", file=sys.stderr)
        print(f"more: {e.docs_url}", file=sys.stderr)
        return EXIT_UNREADABLE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of our output went away (``torchweights inspect x | head``): stop quietly. Point stdout at
        # devnull so the interpreter's final flush does not raise again.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_OK

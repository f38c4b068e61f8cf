"""The ``torchweights`` command line: one subcommand per module of this package.

Each subcommand module defines ``register(subparsers)``, which adds its parser (with
:func:`~torchweights.cli._options.add_verb`: ``-q``, ``-v``, ``--json``, and the exit codes and examples of its
``--help``) and sets ``handler`` to a function ``(argparse.Namespace) -> int`` returning the exit code. Adding a
command means adding its module and its name to :data:`COMMANDS`.

Exit codes: 0 success; 1 the command ran but found a problem (``check``: the checkpoint does not fit the model);
2 the checkpoint could not be read (a :class:`~torchweights.errors.TorchWeightsError`, printed to stderr as
``ClassName [code]: message`` then ``more: <url>``, its errors reference entry, and with ``--json`` also on stdout
as ``{"error": {"code", "type", "message", "fix", "docs_url"}}``) or the command line was invalid (argparse's
usage error, which raises ``SystemExit(2)``); 130 interrupted. Bare ``torchweights`` prints the help and exits 0,
as pip and cargo do (git exits 1: a bare command is a request for help here, not a mistake).
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from typing import NoReturn

from ..errors import RuleError, TorchWeightsError
from ._options import HelpFormatter, add_verbosity

__all__ = [
    "COMMANDS",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_UNREADABLE",
    "CommandParser",
    "UsageError",
    "build_parser",
    "main",
    "print_error",
]

#: Subcommand modules under ``torchweights.cli``, in the order ``--help`` lists them.
COMMANDS: tuple[str, ...] = ("inspect", "scan", "check", "diff", "convert", "verify", "report", "completion")

EXIT_OK = 0
EXIT_UNREADABLE = 2
EXIT_INTERRUPTED = 130

#: Options of the top-level parser that take no value (the first other word is the command).
_GLOBAL_FLAGS = frozenset({"-q", "--quiet", "-v", "--verbose", "-vv", "-h", "--help", "-V", "--version"})


class UsageError(RuleError):
    """The command line cannot be parsed (argparse's usage error): an unknown command or option, a missing or bad
    argument.

    Attributes:
        usage: the usage line of the parser that refused it.
        prog: that parser's program name (``torchweights scan``).
        reason: argparse's own message, as printed after ``prog: error:``.
    """

    default_code = "usage"

    def __init__(self, reason: str, *, usage: str, prog: str) -> None:
        super().__init__(f"{reason}. Fix: see `{prog} --help`.")
        self.usage = usage
        self.prog = prog
        self.reason = reason


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors raise :class:`UsageError` (printed by :func:`main`, also as JSON
    under ``--json``) instead of printing and exiting itself. Subcommand parsers are of the same class."""

    def error(self, message: str) -> NoReturn:
        """Raise :class:`UsageError` for ``message``."""
        raise UsageError(message, usage=self.format_usage(), prog=self.prog)


def build_parser() -> CommandParser:
    """The top-level parser with every subcommand of :data:`COMMANDS` registered."""
    from .. import __version__

    parser = CommandParser(
        prog="torchweights",
        description="Read PyTorch checkpoints safely: inspect what a file holds and check whether it fits a model, "
        "without executing anything from it.",
        epilog="Run `torchweights COMMAND --help` for a command's options, exit codes and examples.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s {__version__}")
    add_verbosity(parser, default=None)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    subparsers.required = True
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def print_error(error: TorchWeightsError, *, json_output: bool, lead: str | None = None) -> None:
    """Report ``error``: ``ClassName [code]: message`` (or ``lead: message``) on stderr, and with ``json_output``
    ``{"error": {"code", "type", "message", "fix", "docs_url"}}`` as one line on stdout; then ``more: <url>``, the
    code's entry in the errors reference."""
    if json_output:
        import json

        sys.stdout.write(json.dumps({"error": error.to_dict()}) + "\n")
    sys.stdout.flush()
    head = lead if lead is not None else f"{type(error).__name__} [{error.code}]"
    print(f"{head}: {error.message}", file=sys.stderr)
    print(f"more: {error.docs_url}", file=sys.stderr)


def _command_word(argv: Sequence[str], also: frozenset[str] = frozenset()) -> str | None:
    """The first word that is not a top-level option (nor one of ``also``): the command (None when there is none)."""
    for word in argv:
        if word == "--":
            return None
        if word not in _GLOBAL_FLAGS and word not in also:
            return word
    return None


def _wants_json(argv: Sequence[str]) -> bool:
    words = argv[: list(argv).index("--")] if "--" in argv else argv
    return "--json" in words


def _usage_error(error: UsageError, *, json_output: bool) -> NoReturn:
    """Print a usage error as argparse does (usage and ``prog: error: reason`` on stderr; with ``json_output`` the
    error object on stdout) and exit 2."""
    if json_output:
        import json

        sys.stdout.write(json.dumps({"error": error.to_dict()}) + "\n")
    sys.stdout.flush()
    sys.stderr.write(error.usage)
    sys.stderr.write(f"{error.prog}: error: {error.reason}\n")
    raise SystemExit(EXIT_UNREADABLE)


def _parse(parser: CommandParser, argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed; an unknown command gets "did you mean" (difflib), -q with -v is refused."""
    word = _command_word(argv, also=frozenset({"--json"}))  # `torchweights --json inspekt` gets the hint too
    if word is not None and not word.startswith("-") and word not in COMMANDS:
        from ..text import close_names_hint

        parser.error(
            f"unknown command {word!r}{close_names_hint(word, COMMANDS)}; the commands are {', '.join(COMMANDS)}"
        )
    args = parser.parse_args(argv)
    if args.quiet and args.verbose:
        parser.error("-q/--quiet and -v/--verbose cannot be used together")
    return args


class _Discard(io.StringIO):
    """A text stream that drops what is written to it (stdout under ``-q``)."""

    def write(self, text: str) -> int:
        """Drop ``text``."""
        return len(text)


@contextmanager
def _conventions(args: argparse.Namespace) -> Iterator[None]:
    """Apply ``--color``, ``-q`` (stdout dropped, the ``torchweights`` logger at ERROR) and ``-v`` (the logger at
    INFO, ``-vv`` DEBUG, on stderr) while a command runs; the logger is restored afterwards."""
    from ..style import colour_preference

    with colour_preference(getattr(args, "color", "auto")):
        if not (args.quiet or args.verbose):
            yield
            return
        yield from _verbosity(args)


def _verbosity(args: argparse.Namespace) -> Iterator[None]:
    """The logger and stdout under ``-q`` / ``-v`` (see :func:`_conventions`)."""
    import logging

    logger = logging.getLogger("torchweights")
    level = logger.level
    handler: logging.Handler | None = None
    if args.verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("torchweights: %(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG if args.verbose > 1 else logging.INFO)
    else:
        logger.setLevel(logging.ERROR)
    try:
        if args.quiet:
            with redirect_stdout(_Discard()):
                yield
        else:
            yield
    finally:
        logger.setLevel(level)
        if handler is not None:
            logger.removeHandler(handler)


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return its exit code (usable as a console-script entry point).

    Args:
        argv: arguments without the program name; ``sys.argv[1:]`` when None.

    Returns:
        The exit code: 0 on success, 2 when the checkpoint could not be read. Invalid usage raises
        ``SystemExit(2)``, as ``--help`` and ``--version`` raise ``SystemExit(0)``; bare ``torchweights`` prints
        the help and returns 0.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if _command_word(argv) is None and not {"-h", "--help", "-V", "--version"} & set(argv):
        parser.print_help()
        return EXIT_OK
    try:
        args = _parse(parser, argv)
    except UsageError as e:
        _usage_error(e, json_output=_wants_json(argv))
    handler: Callable[[argparse.Namespace], int] = args.handler
    json_output = bool(getattr(args, "json", False)) and not args.quiet
    try:
        with _conventions(args):
            return handler(args)
    except TorchWeightsError as e:
        print_error(e, json_output=json_output)
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

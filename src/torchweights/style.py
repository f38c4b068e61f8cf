"""How text output looks where it is shown: the width to lay it out in, and whether status words are coloured.

Every renderer lays out its text for the :class:`Style` in effect (:func:`current`); ``str(report)`` and anything
written to a log or a file use :data:`PLAIN`: no colour, lines kept within :data:`DEFAULT_WIDTH` columns. The
command line asks :func:`for_stream` for the style of its standard output and renders with it (:func:`using`).

Colour (ANSI SGR codes, written here, no dependency) is given only to status words the renderers themselves
produce and mark with :func:`status` or :func:`marked` (``OK``, ``FAILED``, ``dangerous``, ``clean``, ``missing``,
...), never to text from a file: a tensor named ``FAIL`` is a plain cell, and the renderers escape control
characters in every name (:func:`~torchweights.text.printable`). Whether to colour follows the order Python 3.13's
own tracebacks use: ``NO_COLOR`` set to anything non-empty turns it off (https://no-color.org), else
``FORCE_COLOR`` set to anything non-empty turns it on (https://force-color.org), else ``TERM=dumb`` turns it off,
else colour only when the stream is a terminal.

Width: ``COLUMNS`` when set (as :func:`shutil.get_terminal_size` and GNU tools honour it), else the terminal's
width, else (output piped or redirected) :data:`DEFAULT_WIDTH`, so files and pipes get the same text as
``str(report)`` wherever they run.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping
from typing import TextIO

__all__ = [
    "DEFAULT_WIDTH",
    "MIN_WIDTH",
    "PLAIN",
    "STATUS_COLOURS",
    "Marked",
    "Style",
    "colour_preference",
    "current",
    "for_stream",
    "marked",
    "render_for",
    "status",
    "using",
    "wants_colour",
]

#: Width of text that is not shown on a terminal (``str(report)``, pipes, files, logs).
DEFAULT_WIDTH = 100
#: Narrowest width text is laid out in, however narrow the terminal.
MIN_WIDTH = 40

_RED, _GREEN, _YELLOW = "31", "32", "33"

#: The status words that are coloured, and their SGR colour: red for failures and danger, yellow for what needs a
#: look, green for success. Only these exact words are ever coloured.
STATUS_COLOURS: Mapping[str, str] = {
    # load reports (the result line) and verify
    "OK": _GREEN,
    "ok": _GREEN,
    "FAILED": _RED,
    "FAIL": _RED,
    "INCOMPLETE": _YELLOW,
    "WARN": _YELLOW,
    "NOTHING LOADED": _RED,
    "DRY RUN": _YELLOW,
    # scan verdicts, finding severities, global verdicts
    "CLEAN": _GREEN,
    "clean": _GREEN,
    "DANGEROUS": _RED,
    "dangerous": _RED,
    "UNREADABLE": _RED,
    "unreadable": _RED,
    "suspicious": _RED,
    "error": _RED,
    "warning": _YELLOW,
    "unknown": _YELLOW,
    "safe": _GREEN,
    "known": _GREEN,
    "allowed": _YELLOW,
    # diff statuses
    "identical": _GREEN,
    "close": _GREEN,
    "different": _YELLOW,
    "shape": _YELLOW,
    "dtype": _YELLOW,
    "only-a": _YELLOW,
    "only-b": _YELLOW,
    # convert
    "verified bit for bit": _GREEN,
    "not verified": _YELLOW,
}


class Marked(str):
    """Text a renderer produced whose leading :attr:`word` is a status word (a cell ``OK: loaded 2 of 2``, or
    ``dangerous`` alone); only marked text is ever coloured."""

    word: str

    def __new__(cls, text: str, word: str) -> Marked:
        self = super().__new__(cls, text)
        self.word = word if text.startswith(word) else ""
        return self


def status(word: str) -> Marked:
    """``word`` marked as a status word, coloured where the style colours (a table cell, a verdict)."""
    return Marked(word, word)


def marked(text: str, word: str) -> Marked:
    """``text`` whose first word(s) ``word`` are a status (``marked("OK: loaded 2 of 2", "OK")``)."""
    return Marked(text, word)


@dataclasses.dataclass(frozen=True)
class Style:
    """How to lay out text: ``width`` columns (None: never wrap) and whether status words are coloured."""

    width: int | None = DEFAULT_WIDTH
    colour: bool = False

    def paint(self, text: str) -> str:
        """``text`` with its marked status word coloured when this style colours (see :class:`Marked`); any other
        text, and everything after the word, unchanged."""
        word = text.word if isinstance(text, Marked) else ""
        code = STATUS_COLOURS.get(word)
        if not self.colour or code is None:
            return str(text)
        return f"\x1b[{code}m{word}\x1b[0m{text[len(word) :]}"

    def paint_lead(self, line: str, start: int, cell: str) -> str:
        """``line`` with ``cell``'s status word coloured where ``cell`` was laid out, at column ``start``."""
        word = cell.word if isinstance(cell, Marked) else ""
        if not self.colour or word not in STATUS_COLOURS or line[start : start + len(word)] != word:
            return line
        return line[:start] + self.paint(Marked(word, word)) + line[start + len(word) :]


#: ``str(report)``, logs, files and pipes.
PLAIN = Style()

_CURRENT: contextvars.ContextVar[Style] = contextvars.ContextVar("torchweights_style", default=PLAIN)


def current() -> Style:
    """The style text is being rendered for (:data:`PLAIN` unless inside :func:`using`)."""
    return _CURRENT.get()


@contextlib.contextmanager
def using(style: Style | None) -> Iterator[Style]:
    """Render for ``style`` inside the block (:data:`PLAIN` when None); the previous style comes back after it."""
    token = _CURRENT.set(PLAIN if style is None else style)
    try:
        yield _CURRENT.get()
    finally:
        _CURRENT.reset(token)


_WHEN: contextvars.ContextVar[str] = contextvars.ContextVar("torchweights_colour_when", default="auto")


@contextlib.contextmanager
def colour_preference(when: str) -> Iterator[None]:
    """Colour ``"always"``, ``"never"`` or ``"auto"`` (the default: the environment and the stream decide) for every
    :func:`wants_colour` asked ``"auto"`` inside the block: the command line's ``--color``."""
    token = _WHEN.set(when)
    try:
        yield
    finally:
        _WHEN.reset(token)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):  # closed, or not a real file
        return False


def wants_colour(stream: TextIO, when: str = "auto", environ: Mapping[str, str] | None = None) -> bool:
    """Whether to colour text written to ``stream``: ``when`` is ``"always"``, ``"never"`` or ``"auto"`` (the
    environment and the stream decide, in the order the module docstring gives; inside :func:`colour_preference`,
    ``"auto"`` means its choice)."""
    if when == "auto":
        when = _WHEN.get()
    if when in ("always", "never"):
        return when == "always"
    env = os.environ if environ is None else environ
    if env.get("NO_COLOR"):
        return False
    if env.get("FORCE_COLOR"):
        return True
    if env.get("TERM") == "dumb":
        return False
    return _isatty(stream)


def _width(stream: TextIO, env: Mapping[str, str]) -> int:
    columns = env.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return max(int(columns), MIN_WIDTH)
    if not _isatty(stream):
        return DEFAULT_WIDTH
    try:
        width = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        import shutil  # the fallback that asks the interpreter's own stdout

        width = shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns
    return max(width or DEFAULT_WIDTH, MIN_WIDTH)


def for_stream(stream: TextIO, when: str = "auto", environ: Mapping[str, str] | None = None) -> Style:
    """The style of text written to ``stream``: its width and whether it is coloured (module docstring)."""
    env = os.environ if environ is None else environ
    return Style(width=_width(stream, env), colour=wants_colour(stream, when, env))


def render_for(stream: TextIO, render: Callable[[], str], when: str = "auto") -> str:
    """What ``render()`` returns when it lays its text out for ``stream`` (``render_for(sys.stdout, report.__str__)``:
    the command line's text; ``str(report)`` stays :data:`PLAIN`)."""
    with using(for_stream(stream, when)):
        return render()

"""Message formatting shared by every error and report: quoting names, lists, counts, sizes and shapes, and the
one layout of text every report uses: :func:`wrap` (words kept whole, hanging indents) and :func:`table` (name
columns folded in the middle before the text column wraps), laid out for the width of the
:class:`~torchweights.style.Style` in effect."""

from __future__ import annotations

import enum
import textwrap
from collections.abc import Iterable, Sequence

from .fold import human_bytes

__all__ = [
    "FOLD_MIN",
    "TEXT_MIN",
    "TEXT_ROOM",
    "StrEnum",
    "fold_middle",
    "format_bytes",
    "format_shape",
    "is_are",
    "plural",
    "printable",
    "problem_list",
    "quote",
    "quote_list",
    "shorten_list",
    "table",
    "wrap",
]

#: Narrowest a name column is folded to (:func:`table`'s ``shrink``) before the text column wraps instead.
FOLD_MIN = 24
#: Narrowest a wrapped text column gets, however wide the columns before it are.
TEXT_MIN = 24
#: Where a table's text column must wrap whatever names fold, names fold only until it has this many columns.
TEXT_ROOM = 40


class StrEnum(str, enum.Enum):
    """A vocabulary of words (what :class:`enum.StrEnum` is from Python 3.11): every member is a ``str`` equal
    to its value, hashes, prints and formats as it and goes into JSON as it, so code comparing with plain strings
    and the JSON output are unchanged."""

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(self, spec)


def printable(text: str) -> str:
    """``text`` with control and other non-printable characters escaped, so text from a file cannot drive the
    terminal (``'a\\x00b'``)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def quote(name: str) -> str:
    """``name`` in single quotes, as every message quotes names; control characters are escaped."""
    return f"'{printable(name)}'"


def shorten_list(parts: Iterable[str], limit: int = 8) -> str:
    """``a, b, c`` joined by commas; folded to ``a, b, … and 12 more`` past ``limit`` parts."""
    items = list(parts)
    shown = ", ".join(items[:limit])
    if len(items) > limit:
        shown += f", … and {len(items) - limit} more"
    return shown


def quote_list(names: Iterable[str], limit: int = 8) -> str:
    """``'a', 'b', 'c'``; folded to ``'a', 'b', … and 12 more`` past ``limit`` names."""
    return shorten_list((quote(n) for n in names), limit)


def is_are(count: int) -> str:
    """``is`` for one thing, ``are`` for several."""
    return "is" if count == 1 else "are"


def plural(count: int, word: str) -> str:
    """``1 tensor`` / ``3 tensors``."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def format_bytes(nbytes: int) -> str:
    """``123 bytes``, or ``104,857,600 bytes (104.9 MB)`` when a unit helps."""
    text = "1 byte" if nbytes == 1 else f"{nbytes:,} bytes"
    return text if nbytes < 1000 else f"{text} ({human_bytes(nbytes)})"


def format_shape(shape: Sequence[object]) -> str:
    """A shape as Python prints a tuple: ``(1000, 768)``, ``(5,)``, ``()``."""
    return str(tuple(shape))


def problem_list(problems: Sequence[tuple[str, str]]) -> str:
    """Problems ``(code, text)`` as one line each, ready to append to a message."""
    return "\n".join(f"  - [{code}] {text}" for code, text in problems)


def fold_middle(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters by replacing its middle with ``...`` (two thirds of what is kept from
    the start, one third from the end: ``blocks.0.attn...proj.weight``); unchanged when it fits."""
    if len(text) <= limit:
        return text
    keep = max(limit - 3, 2)
    return text[: keep - keep // 3] + "..." + text[len(text) - keep // 3 :]


def wrap(text: str, indent: str = "  ", hang: str | None = None, width: int | None = None) -> list[str]:
    """``text`` (escaped) as lines within ``width`` columns (the current style's width when None), broken between
    words only (never at hyphens, never inside a word: a word longer than a line overflows it), the first line
    indented by ``indent`` and the others by ``hang`` (``indent`` when None: a hanging indent aligns them under the
    text after a label or bullet)."""
    from . import style  # laying text out is not on the load path (tests/test_startup.py)

    limit = style.current().width if width is None else width
    hang = indent if hang is None else hang
    text = printable(text)
    if limit is None:
        return [(indent + text).rstrip()]
    lines = textwrap.wrap(
        text,
        width=max(limit, len(hang) + TEXT_MIN, len(indent) + TEXT_MIN),
        initial_indent=indent,
        subsequent_indent=hang,
        break_on_hyphens=False,
        break_long_words=False,
    )
    return lines or [indent.rstrip()]


def table(
    rows: Sequence[Sequence[str]],
    right: Iterable[int] = (),
    indent: str = "  ",
    sep: str = "  ",
    *,
    shrink: Iterable[int] = (),
    wrap_last: bool = False,
    width: int | None = None,
) -> list[str]:
    """Rows of cells as aligned lines (trailing spaces removed); columns listed in ``right`` are right-aligned.

    Rows shorter than the longest are padded with empty cells, and every cell is escaped (:func:`printable`). When
    the lines would be wider than ``width`` (the current style's width when None), the columns listed in ``shrink``
    (names) are folded in the middle (:func:`fold_middle`), widest first, down to :data:`FOLD_MIN` characters;
    then, with ``wrap_last``, the last column (text) wraps between words, its lines hanging under its first. Where
    folding cannot spare the text from wrapping, names fold only until it has :data:`TEXT_ROOM` columns.
    Cells marked by :func:`~torchweights.style.status` have their status word coloured where the style colours.
    """
    if not rows:
        return []
    from . import style  # laying text out is not on the load path (tests/test_startup.py)

    look = style.current()
    limit = look.width if width is None else width
    ncols = max(len(row) for row in rows)
    padded = [[printable(cell) for cell in row] + [""] * (ncols - len(row)) for row in rows]
    widths = [max(len(row[i]) for row in padded) for i in range(ncols)]
    right_set = set(right)
    last = ncols - 1
    if limit is not None:
        over = len(indent) + sum(widths) + len(sep) * last - limit
        foldable = sum(max(widths[i] - FOLD_MIN, 0) for i in set(shrink))
        if wrap_last and over > foldable:  # the text wraps anyway: fold names only to give it TEXT_ROOM columns
            over -= widths[last] - min(widths[last], TEXT_ROOM)
        for i in sorted(set(shrink), key=lambda i: -widths[i]):
            cut = min(over, widths[i] - FOLD_MIN)
            if cut > 0:
                widths[i] -= cut
                over -= cut
    start = len(indent) + sum(widths[:last]) + len(sep) * last  # where the last column starts
    text_width = None if limit is None or not wrap_last else max(limit - start, TEXT_MIN)
    lines = []
    for row in padded:
        cells = [fold_middle(c, widths[i]) if len(c) > widths[i] else c for i, c in enumerate(row)]
        tail = [cells[last]]
        if text_width is not None and len(cells[last]) > text_width:
            tail = wrap(cells[last], indent="", hang="", width=text_width)
        cells[last] = tail[0]
        line = indent
        for i, (cell, w) in enumerate(zip(cells, widths)):
            pad = " " * (w - len(cell)) if i < last or i in right_set else ""
            shown = look.paint(row[i]) if cell is row[i] and isinstance(row[i], style.Marked) else cell
            line += (pad + shown if i in right_set else shown + pad) + (sep if i < last else "")
        if tail[0] is not row[last]:
            line = look.paint_lead(line, start, row[last])
        lines.append(line.rstrip())
        lines += [(" " * start + part).rstrip() for part in tail[1:]]
    return lines


def close_names_hint(name: str, candidates: Iterable[str]) -> str:
    """``" (did you mean 'a' or 'b'?)"`` for up to three candidates close to ``name``, or ``""``."""
    import difflib  # only on error paths: not worth its import time otherwise

    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(quote(c) for c in close)}?)" if close else ""

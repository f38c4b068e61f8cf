"""Message formatting shared by every error and report: quoting names, lists, counts, sizes and shapes."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence

from .fold import human_bytes

__all__ = [
    "StrEnum",
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
]


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


def table(rows: Sequence[Sequence[str]], right: Iterable[int] = (), indent: str = "  ", sep: str = "  ") -> list[str]:
    """Rows of cells as aligned lines (trailing spaces removed); columns listed in ``right`` are right-aligned.

    Rows shorter than the longest are padded with empty cells.
    """
    if not rows:
        return []
    ncols = max(len(row) for row in rows)
    padded = [list(row) + [""] * (ncols - len(row)) for row in rows]
    widths = [max(len(row[i]) for row in padded) for i in range(ncols)]
    right_set = set(right)
    lines = []
    for row in padded:
        cells = [cell.rjust(w) if i in right_set else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append((indent + sep.join(cells)).rstrip())
    return lines


def close_names_hint(name: str, candidates: Iterable[str]) -> str:
    """``" (did you mean 'a' or 'b'?)"`` for up to three candidates close to ``name``, or ``""``."""
    import difflib  # only on error paths: not worth its import time otherwise

    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(quote(c) for c in close)}?)" if close else ""

"""The cells and layout helpers of the load report's text (:mod:`~torchweights.report.text`): names escaped and
cut for a table, shapes, folded rows, wrapped lines, tables.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from ..fold import fold_names
from ..text import printable, table

if TYPE_CHECKING:  # pragma: no cover
    pass

__all__ = [
    "NAME_LIMIT",
    "WIDTH",
    "and_list",
    "fold_rows",
    "more",
    "name_cell",
    "numel",
    "shape_cell",
    "strict_text",
    "table_rows",
    "wrap",
]

#: Width the report aims to stay within.
WIDTH = 100
#: Longest name shown in a table cell; longer ones keep their start and end.
NAME_LIMIT = 72


def name_cell(text: str) -> str:
    """A name for a table cell: escaped, and cut in the middle past :data:`NAME_LIMIT` characters."""
    text = printable(text)
    if len(text) <= NAME_LIMIT:
        return text
    keep = NAME_LIMIT - 3
    return text[: keep - keep // 3] + "..." + text[-(keep // 3) :]


def shape_cell(shape: tuple[int, ...] | None) -> str:
    """A shape for a cell: ``(3, 4)``, or ``?`` when unknown."""
    return "?" if shape is None else str(tuple(shape))


def numel(shape: tuple[int, ...] | None) -> int:
    """Elements of a tensor of ``shape`` (1 for a scalar or an unknown shape)."""
    n = 1
    for d in shape or ():
        n *= d
    return n


def more(count: int, indent: str = "  ") -> str:
    """The line that says ``count`` rows were cut."""
    return f"{indent}... and {count} more"


def fold_rows(items: Iterable[tuple[str, tuple[str, ...]]]) -> list[tuple[str, int, tuple[str, ...]]]:
    """Fold names whose other columns are identical: ``(name, columns)`` -> ``(pattern, count, columns)``.

    Rows come in the order of their first member.
    """
    groups: dict[tuple[str, ...], list[str]] = {}
    order: dict[str, int] = {}
    for name, cols in items:
        order.setdefault(name, len(order))
        groups.setdefault(cols, []).append(name)
    rows: list[tuple[int, str, int, tuple[str, ...]]] = []
    for cols, names in groups.items():
        for pattern, members in fold_names(names):
            rows.append((order[members[0]], pattern, len(members), cols))
    rows.sort(key=lambda r: r[0])
    return [(pattern, count, cols) for _, pattern, count, cols in rows]


def wrap(text: str, indent: str = "  ", width: int = WIDTH) -> list[str]:
    """``text`` wrapped to ``width`` with every line indented (names are never cut at hyphens)."""
    return textwrap.wrap(
        text, width=width, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False
    ) or [indent.rstrip()]


def and_list(parts: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def strict_text(value: object) -> str:
    """A ``strict`` value as the caller writes it (``True``, ``False``, ``'model'``)."""
    return repr(value)


def table_rows(
    rows: Sequence[Sequence[str]], indent: str = "  ", sep: str = "  ", right: Iterable[int] = ()
) -> list[str]:
    """Rows as aligned columns (see :func:`~torchweights.text.table`)."""
    return table(rows, right=right, indent=indent, sep=sep)

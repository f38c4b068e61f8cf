"""The cells and layout helpers of the load report's text (:mod:`~torchweights.report.text`): names escaped and
cut for a table, shapes, folded rows, tables (laid out by :func:`~torchweights.text.table`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..fold import fold_names
from ..text import fold_middle, printable, table

__all__ = [
    "NAME_LIMIT",
    "and_list",
    "fold_rows",
    "more",
    "name_cell",
    "numel",
    "shape_cell",
    "strict_text",
    "table_rows",
]

#: Longest name shown in a table cell; longer ones keep their start and end.
NAME_LIMIT = 72


def name_cell(text: str) -> str:
    """A name for a table cell: escaped, and cut in the middle past :data:`NAME_LIMIT` characters."""
    return fold_middle(printable(text), NAME_LIMIT)


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


def and_list(parts: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def strict_text(value: object) -> str:
    """A ``strict`` value as the caller writes it (``True``, ``False``, ``'model'``)."""
    return repr(value)


def table_rows(
    rows: Sequence[Sequence[str]],
    indent: str = "  ",
    sep: str = "  ",
    right: Iterable[int] = (),
    shrink: Iterable[int] = (0,),
    wrap_last: bool = True,
) -> list[str]:
    """Rows as aligned columns (see :func:`~torchweights.text.table`): the report's rows start with a name, which
    is folded first when the lines are too wide, and end with text, which wraps under itself."""
    return table(rows, right=right, indent=indent, sep=sep, shrink=shrink, wrap_last=wrap_last)

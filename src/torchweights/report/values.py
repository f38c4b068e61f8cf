"""The value findings of a load in words: the "values" section of the text report, the phrase of the result line
and the parts of the log line (:mod:`torchweights.values.checks` decides them; this module only words them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..text import plural
from .cells import more, name_cell, table_rows

if TYPE_CHECKING:  # pragma: no cover
    from ..values.findings import ValueFinding

__all__ = ["values_log", "values_phrase", "values_section"]

#: Most rows of the "values" section.
SECTION_ROWS = 40

#: Per finding kind: the noun for the tensors it names.
_WORDS = {"nan": "NaN tensor", "inf": "Inf tensor", "zero": "all-zero weight", "constant": "constant weight"}
#: Per finding kind: the label of its names in the log line (the result line before it has the counts).
_LABELS = {"nan": "NaN in", "inf": "Inf in", "zero": "all zero", "constant": "constant"}


def _by_kind(findings: Sequence[ValueFinding]) -> dict[str, list[str]]:
    """Names per kind of value finding, kinds in :data:`_WORDS` order (``initial`` left out)."""
    names: dict[str, list[str]] = {}
    for f in findings:
        if f.in_values:
            names.setdefault(f.kind.value, []).append(f.name)
    return {kind: names[kind] for kind in _WORDS if kind in names}


def values_log(findings: Sequence[ValueFinding]) -> list[tuple[str, list[str]]]:
    """``[("NaN in", names), ("all zero", names)]``: per kind of value finding (``initial`` left out: the report
    accounts for those as keys left as initialised), the names for the log line, whose result part counts them."""
    return [(_LABELS[kind], names) for kind, names in _by_kind(findings).items()]


def values_phrase(findings: Sequence[ValueFinding]) -> str:
    """``values: 1 NaN tensor, 2 all-zero weights`` for the result line, or ``""`` when the values are clean."""
    parts = [plural(len(names), _WORDS[kind]) for kind, names in _by_kind(findings).items()]
    return "values: " + ", ".join(parts) if parts else ""


def values_section(findings: Sequence[ValueFinding]) -> list[str]:
    """The "values" section of the text report of a load whose values were checked."""
    if not findings:
        return ["values (checked: no NaN, Inf, all-zero or constant weights)"]
    rows = [[name_cell(f.name), f.kind.value, f.detail] for f in findings]
    lines = [f"values ({plural(len(findings), 'finding')})", *table_rows(rows[:SECTION_ROWS])]
    if len(rows) > SECTION_ROWS:
        lines.append(more(len(rows) - SECTION_ROWS))
    return lines

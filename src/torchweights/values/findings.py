"""What the value checks of a load found: :class:`ValueFinding` (one per tensor and kind) and the kinds.

Plain data only (no torch): :class:`~torchweights.report.load.LoadReport` holds these, and the report renders them.
The rules that produce them are :mod:`torchweights.values.checks`'s.
"""

from __future__ import annotations

import enum
from typing import Any

from ..structs import structure

__all__ = ["FindingKind", "ValueFinding"]


class FindingKind(str, enum.Enum):
    """What is wrong with a tensor's values (members are their own plain words, as in JSON)."""

    NAN = "nan"
    INF = "inf"
    ZERO = "zero"
    CONSTANT = "constant"
    INITIAL = "initial"

    def __str__(self) -> str:
        return self.value


@structure(frozen=True)
class ValueFinding:
    """One value finding of a load, by tensor name.

    Attributes:
        name: the model's name of the tensor (``layer1.0.conv1.weight``).
        kind: ``nan`` (NaN values), ``inf`` (infinite values), ``zero`` (an all-zero weight matrix or kernel),
            ``constant`` (a weight matrix or kernel whose values are all one nonzero value), ``initial`` (nothing
            was loaded into it: it keeps the value the model was built with, or ``init_missing`` gave it).
        detail: the words behind it (``"3 of 4,096 values are NaN"``).
    """

    name: str
    kind: FindingKind
    detail: str

    @property
    def in_values(self) -> bool:
        """True for a finding about the values the tensor holds (all kinds but ``initial``, which the load report
        already accounts for as a key that was not loaded)."""
        return self.kind is not FindingKind.INITIAL

    def to_dict(self) -> dict[str, Any]:
        """Plain data: ``{"name", "kind", "detail"}``."""
        return {"name": self.name, "kind": self.kind.value, "detail": self.detail}

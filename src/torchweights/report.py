"""The account of a load: what happened to every key. Renders decisions, never makes them."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: importing the planner here would slow every ``tw.open`` (api imports this)
    from .plan import Action, Plan

__all__ = ["LoadReport"]


@dataclass
class LoadReport:
    """What :func:`torchweights.load_into` did (or, for a dry run or a failed plan, would do).

    Attributes:
        plan: every decision, per key (:class:`~torchweights.plan.Plan`).
        applied: whether the model was changed.
        seconds: wall time of the whole call.
        bytes_read: tensor bytes read from the checkpoint.
        fallback_modules: modules loaded through torch's own path (custom ``_load_from_state_dict`` or hooks).
        notes: anything else worth knowing (checkpoint warnings, ...).
    """

    plan: Plan
    applied: bool = False
    seconds: float = 0.0
    bytes_read: int = 0
    fallback_modules: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is missing, mismatched or (under ``strict=True``) unexpected."""
        return self.plan.ok

    @property
    def problems(self) -> list[Action]:
        """The actions that make the load fail under its strictness."""
        return self.plan.problems

    @property
    def loaded(self) -> list[Action]:
        """Keys loaded (copied or cast)."""
        return self.plan.by_kind("load")

    @property
    def totals(self) -> dict[str, int]:
        """Counts: tensors and elements loaded, bytes read, and actions per kind."""
        loaded = self.loaded
        return {
            "tensors": len(loaded),
            "parameters": sum(math.prod(a.dst_shape or ()) for a in loaded),
            "bytes": self.bytes_read,
            **self.plan.counts(),
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain data: source, model, container and prefix choices, rules applied, totals and every action."""
        plan = self.plan
        return {
            "source": plan.source,
            "model": plan.model,
            "ok": self.ok,
            "applied": self.applied,
            "strict": plan.rules.strict,
            "container": {
                "name": plan.container.name,
                "reason": plan.container.reason,
                "runner_up": None if plan.container.runner_up is None else ".".join(plan.container.runner_up),
            },
            "prefix": {"strip": plan.prefix.strip, "add": plan.prefix.add, "evidence": plan.prefix.evidence},
            "rules_applied": list(plan.applied),
            "totals": self.totals,
            "seconds": round(self.seconds, 6),
            "fallback_modules": list(self.fallback_modules),
            "notes": list(self.notes),
            "actions": [a.to_dict() for a in plan.actions],
        }

    def to_json(self, **kwargs: Any) -> str:
        """:meth:`to_dict` as JSON (``kwargs`` go to :func:`json.dumps`)."""
        return json.dumps(self.to_dict(), **kwargs)

    def raise_if_problems(self) -> None:
        """Raise :class:`~torchweights.errors.LoadError` (carrying this report) when :attr:`ok` is False."""
        if self.ok:
            return
        from .errors import LoadError

        raise LoadError(self.summary(), report=self, code=self.error_code())

    def error_code(self) -> str:
        """The most specific error code for this report's problems."""
        kinds = {a.kind for a in self.problems}
        for kind, code in (
            ("mismatch", "shape-mismatch"),
            ("missing", "missing-keys"),
            ("unexpected", "unexpected-keys"),
        ):
            if kind in kinds:
                return code
        return "load-failed"

    def summary(self) -> str:
        """The error text: every problem, and the exact option that would load the rest."""
        from .report_text import problem_summary

        return problem_summary(self)

    def __str__(self) -> str:
        from .report_text import render

        return render(self)

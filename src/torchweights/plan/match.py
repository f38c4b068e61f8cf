"""Pairing: which model key each key of the chosen container loads into.

:class:`Matcher` binds each container key whose name, after the user's renames and the prefix transform, is a model
key; then the built-in legacy renames (:data:`~torchweights.plan.rules.LEGACY_RENAMES`), each only where it turns a
key left without a match into one with an equal (or scalar-compatible) shape. Whether a pair loads, and how
(shapes, dtypes, skips), is :mod:`torchweights.plan.verdicts`' decision.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace

from ..adapt.base import GroupFit, Step
from .container import Fit
from .prefix import transform
from .rules import LEGACY_RENAMES, LegacyRename, Rules
from .spec import ModelSpec

__all__ = ["Matcher", "scalar_compatible"]


def scalar_compatible(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """0-dim and one-element shapes of the same numel, e.g. () and (1,)."""
    return a != b and math.prod(a) == math.prod(b) == 1 and (len(a) == 0 or len(b) == 0)


#: Built-in renames by the last dotted part of the keys they change; those that name none apply to every key.
_LEGACY_BY_LEAF: dict[str, list[LegacyRename]] = {}
_LEGACY_ANY = [rule for rule in LEGACY_RENAMES if not rule.leaves]
for _rule in LEGACY_RENAMES:
    for _leaf in _rule.leaves:
        _LEGACY_BY_LEAF.setdefault(_leaf, []).append(_rule)


class Matcher:
    """The pairs of one :class:`~torchweights.plan.container.Fit`, filled by :meth:`match`.

    Attributes:
        source_of: model key -> (container key, the transforms that made the match: :meth:`via`, legacy renames).
        target_of: container key -> model key.
        final: container key -> its name after the user's renames and prefix handling.
        applied: one line per legacy rename used, with how many keys it paired.
        adapted: model key -> the group adapter's step that fills it (sources as container keys).
        consumed: container keys that group adapters use (neither paired nor unexpected).
    """

    def __init__(self, fit: Fit, spec: ModelSpec, rules: Rules) -> None:
        self.fit = fit
        self.spec = spec
        self.rules = rules
        self.source_of: dict[str, tuple[str, tuple[str, ...]]] = {}  # model key -> (container key, via)
        self.target_of: dict[str, str] = {}  # container key -> model key
        self.final: dict[str, str] = {}  # container key -> its name after renames and prefix handling
        self.applied: list[str] = []
        self.adapted: dict[str, Step] = {}
        self.consumed: set[str] = set()

    def match(self) -> None:
        """Pair every container key whose final name is a model key (the first one wins), then the legacy renames
        (``rules.legacy_renames``) on the keys left over."""
        strip, add = self.fit.prefix.strip, self.fit.prefix.add
        entries = self.spec.entries
        for key, renamed in self.fit.renamed.items():
            new = self.fit.final[key]
            self.final[key] = new
            if new in entries and new not in self.source_of:
                self.bind(key, new, self.via(key, renamed, new, strip, add))
        if self.rules.legacy_renames and len(self.target_of) < len(self.final):
            self.legacy()

    @staticmethod
    def via(key: str, renamed: str, new: str, strip: str, add: str) -> tuple[str, ...]:
        """``rename`` when a user rename changed the key (before or after prefix handling), ``prefix`` when the
        prefix transform did."""
        moved = transform(renamed, strip, add)
        return (("rename",) if renamed != key or new != moved else ()) + (("prefix",) if moved != renamed else ())

    def bind(self, key: str, target: str, via: tuple[str, ...]) -> None:
        """Pair container key ``key`` with model key ``target``."""
        self.source_of[target] = (key, via)
        self.target_of[key] = target

    def bind_aligned(self, key: str, target: str) -> None:
        """Pair container key ``key`` with model key ``target`` as ``align="auto"`` decided."""
        via = self.via(key, self.fit.renamed[key], self.final[key], self.fit.prefix.strip, self.fit.prefix.add)
        self.bind(key, target, (*via, "align"))

    def bind_group(self, fit: GroupFit, key_of: dict[str, str]) -> None:
        """Take a group adapter's fit: its steps' sources are names after prefix handling (``key_of`` maps them
        back to container keys)."""
        for target, step in fit.steps.items():
            self.adapted[target] = replace(step, sources=tuple(key_of[s] for s in step.sources))
        self.consumed.update(key_of[s] for s in fit.consumed)

    def legacy(self) -> None:
        """Built-in renames, each only where it turns a key without a match into an exact match."""
        used: Counter[str] = Counter()
        entries = self.spec.entries
        for key, renamed in self.fit.renamed.items():
            if key in self.target_of:
                continue
            base = self.final[key]
            rules = _LEGACY_BY_LEAF.get(base.rpartition(".")[2], [])
            for rule in (*rules, *_LEGACY_ANY) if _LEGACY_ANY else rules:
                new = rule.pattern.sub(rule.replacement, base)
                entry = entries.get(new)
                if new == base or entry is None or new in self.source_of:
                    continue
                shape = self.fit.keys[key].shape
                if entry.shape == shape or scalar_compatible(shape, entry.shape):
                    via = self.via(key, renamed, base, self.fit.prefix.strip, self.fit.prefix.add)
                    self.bind(key, new, (*via, f"legacy rename: {rule.label}"))
                    used[rule.label] += 1
                    break
        for label, n in used.items():
            self.applied.append(f"legacy rename {label} on {n} keys")

"""The container: which dict of tensors inside the checkpoint is the state dict for this model.

:func:`best_container` scores the dicts of the file (:class:`Fit`: the user's renames, then the prefix transform,
then matches by name and by shape) and takes the best fit: by matched names, then matched shapes; never by size,
so an optimizer's larger state does not win. On a tie: not training state, then not an EMA copy (EMA copies win
only on a strictly better fit, or when asked), then the smaller, then the deeper dict. The best disjoint container
that matches anything is the runner-up. Containers whose keys cannot reach the best match count (an upper bound
from the keys' last dotted parts) are never scored. ``container=NAME`` forces one (a dict, or a dotted prefix of
flat names).

Without a model, :func:`torchweights.plan.selection.choose_container` picks from names alone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import field
from typing import Any

from ..structs import structure
from ..text import plural, quote, shorten_list
from .model import PrefixChoice, RenameUse
from .prefix import ModelIndex, choose_prefix, choose_prefix_with_renames, transform
from .renames import apply_rename, rename_clash
from .rules import CONTAINER_NAMES, RuleError, Rules, is_ema, is_training_state
from .sources import SourceKey

__all__ = ["Fit", "RunnerUp", "best_container"]

#: The runner-up container: its path, how many keys match by name, and how many by name and shape.
RunnerUp = tuple[tuple[str, ...], int, int]


@structure
class _Candidate:
    """A dict of tensors inside the checkpoint: its path, how many tensors lie below it, and an upper bound on how
    many of them can match a model key (those whose last dotted part is also the last part of some model key)."""

    path: tuple[str, ...]
    size: int = 0
    bound: int = 0
    given: dict[str, SourceKey] | None = None

    def members(self, keys: Sequence[SourceKey]) -> dict[str, SourceKey]:
        """The tensors below this container, by their key relative to it, in checkpoint order."""
        if self.given is not None:
            return self.given
        out: dict[str, SourceKey] = {}
        path, depth = self.path, len(self.path)
        for key in keys:
            if len(key.path) > depth and key.path[:depth] == path:
                name = ".".join(key.path[depth:])
                if name in out:  # two tensors under one name (e.g. dotted dict keys): keep both, distinctly
                    n = 2
                    while f"{name}#{n}" in out:
                        n += 1
                    name = f"{name}#{n}"
                out[name] = key
        return out


def _candidates(keys: Sequence[SourceKey], leaves: set[str] | None) -> dict[tuple[str, ...], _Candidate]:
    """Every container path above some tensor, with its size and bound (see :class:`_Candidate`).

    ``leaves``: last dotted parts of the model's keys, for the bound; None when user renames may change them (the
    bound is then the container's size). Counts go up the tree once per node, not once per key and level.
    """
    nodes: dict[tuple[str, ...], _Candidate] = {}
    for key in keys:
        parent = key.path[:-1]
        node = nodes.get(parent)
        if node is None:
            node = nodes[parent] = _Candidate(parent)
        node.size += 1
        if leaves is None or key.path[-1].rpartition(".")[2] in leaves:
            node.bound += 1
    by_depth: dict[int, list[tuple[str, ...]]] = {}
    for path in nodes:
        by_depth.setdefault(len(path), []).append(path)
    for depth in range(max(by_depth, default=0), 0, -1):
        for path in by_depth.get(depth, ()):
            child = nodes[path]
            up = nodes.get(path[:-1])
            if up is None:
                up = nodes[path[:-1]] = _Candidate(path[:-1])
                by_depth.setdefault(depth - 1, []).append(path[:-1])
            up.size += child.size
            up.bound += child.bound
    return nodes


def _rank(path: tuple[str, ...], names: int, exact: int, size: int, strip: str = "") -> tuple[Any, ...]:
    """Sort key of a container, best first: most names matched, then most shapes. On a tie: one outside training
    state (optimizer moments keyed like the model...), then the non-EMA copy (counting the prefix stripped), then
    the smaller container (fewer stray keys), then the deeper one (same tensors, fewer prefix changes), then the
    usual names."""
    parts = (*path, *strip.split(".")[:-1])
    training = is_training_state(parts)
    last = path[-1] if path else ""
    usual = CONTAINER_NAMES.index(last) if last in CONTAINER_NAMES else len(CONTAINER_NAMES)
    return (-names, -exact, training, is_ema(parts), size, -len(path), usual, path)


@structure
class Fit:
    """One container fitted to the model: its keys, what the user's renames and the prefix transform make of them,
    and how many then match a model key by name (``names``) and by name and shape (``exact``).

    ``clash``: the error to raise if this container is taken (two keys renamed to one name); ``uses``: what each of
    the user's renames matched here.
    """

    path: tuple[str, ...]
    keys: dict[str, SourceKey]
    renamed: dict[str, str]  # container key -> key after user renames
    prefix: PrefixChoice
    names: int
    exact: int
    clash: RuleError | None = None
    final: dict[str, str] = field(default_factory=dict)  # container key -> name after renames and prefix handling
    uses: tuple[RenameUse, ...] = ()

    @property
    def ema(self) -> bool:
        """Whether the tensors taken are an EMA copy (by the container's path or the prefix stripped)."""
        return is_ema((*self.path, *self.prefix.strip.split(".")[:-1]))

    def rank(self) -> tuple[Any, ...]:
        """See :func:`_rank`."""
        return _rank(self.path, self.names, self.exact, len(self.keys), self.prefix.strip)


def _nested(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Whether one container holds the other (their tensors overlap); otherwise they are disjoint."""
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def best_container(keys: Sequence[SourceKey], index: ModelIndex, rules: Rules) -> tuple[Fit, RunnerUp | None]:
    """The best container and the best one disjoint from it (``(path, names, exact)``), if any."""
    candidates = _candidates(keys, None if rules.rename else index.leaves)
    if rules.container != "auto":
        return _forced_container(keys, candidates, index, rules), None
    # Most promising first; a candidate whose bound cannot reach the best's matches is never scored.
    order = sorted(candidates.values(), key=lambda c: (-c.bound, c.size))
    fits: dict[tuple[str, ...], Fit] = {}
    best: Fit | None = None
    for cand in order:
        if best is not None:
            if cand.bound < best.names:
                break
            if (
                best.exact == best.names == cand.bound
                and _rank(cand.path, cand.bound, cand.bound, cand.size) > best.rank()
            ):
                continue  # could at best tie on matches, and would lose the tie-break (a prefix only makes it worse)
        fit = _fit(cand, keys, index, rules)
        fits[cand.path] = fit
        if best is None or fit.rank() < best.rank():
            best = fit
    assert best is not None
    if best.clash is not None:
        raise best.clash
    # The runner-up: the best container disjoint from the winner that matches anything at all.
    runner: Fit | None = None
    for cand in order:
        if not cand.bound or (runner is not None and cand.bound < runner.names):
            break
        if _nested(cand.path, best.path):
            continue
        other = fits.get(cand.path)
        if other is None:
            other = fits[cand.path] = _fit(cand, keys, index, rules)
        if other.names and (runner is None or other.rank() < runner.rank()):
            runner = other
    return best, (runner.path, runner.names, runner.exact) if runner is not None else None


def _forced_container(
    keys: Sequence[SourceKey], candidates: dict[tuple[str, ...], _Candidate], index: ModelIndex, rules: Rules
) -> Fit:
    wanted = rules.container.strip(".")
    by_name = {".".join(path): cand for path, cand in candidates.items()}
    cand = by_name.get(wanted)
    if cand is None and wanted:
        # A dotted prefix of flat names ("ema" for keys "ema.encoder.weight" stored side by side with "model.*").
        start = wanted + "."
        members = {}
        for key in keys:
            name = ".".join(key.path)
            if name.startswith(start):
                members[name[len(start) :]] = key
        if members:
            cand = _Candidate(tuple(wanted.split(".")), len(members), len(members), members)
    if cand is None:
        listed = sorted(
            (c for c in candidates.values() if len(c.path) <= 2), key=lambda c: (len(c.path), -c.size, c.path)
        )
        named = [f"{quote('.'.join(c.path) or '<root>')} ({plural(c.size, 'tensor')})" for c in listed]
        raise RuleError(
            f"container={quote(rules.container)} is not a dict of tensors in this checkpoint. Containers found: "
            f"{shorten_list(named, 12)}. Pass one of them, or container='auto'.",
            code="bad-container",
        )
    fit = _fit(cand, keys, index, rules)
    if fit.clash is not None:
        raise fit.clash
    return fit


def _fit(cand: _Candidate, keys: Sequence[SourceKey], index: ModelIndex, rules: Rules) -> Fit:
    """Score one container: the user's renames that match keys as stored, the prefix transform, then the renames
    that matched no stored key, on the names after prefix handling (a rename written in the model's names)."""
    members = cand.members(keys)
    if not rules.rename:
        prefix, names, exact = choose_prefix({k: v.shape for k, v in members.items()}, index, rules)
        final = {k: transform(k, prefix.strip, prefix.add) for k in members}
        return Fit(cand.path, members, dict(zip(members, members)), prefix, names, exact, None, final)
    renamed = dict(zip(members, members))
    uses: list[RenameUse] = []
    later: list[tuple[re.Pattern[str], str]] = []
    for pattern, replacement in rules.compiled_rename:
        matched = apply_rename(renamed, pattern, replacement)
        if matched:
            uses.append(RenameUse(pattern.pattern, replacement, matched, "stored"))
        else:
            later.append((pattern, replacement))
    clash = rename_clash(renamed)
    shapes = {renamed[k]: v.shape for k, v in members.items()}
    prefix, names, exact = choose_prefix(shapes, index, rules)
    final = {k: transform(v, prefix.strip, prefix.add) for k, v in renamed.items()}
    if later:
        prefix, final, names, exact, matched_later = choose_prefix_with_renames(
            shapes, renamed, index, rules, prefix, later
        )
        for (pattern, replacement), matched in zip(later, matched_later, strict=True):
            uses.append(RenameUse(pattern.pattern, replacement, matched, "model" if matched else "none"))
        clash = clash or rename_clash(final)
    order = {(p.pattern, r): i for i, (p, r) in enumerate(rules.compiled_rename)}
    uses.sort(key=lambda u: order[(u.pattern, u.replacement)])
    return Fit(cand.path, members, renamed, prefix, names, exact, clash, final, tuple(uses))

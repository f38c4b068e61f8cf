"""Reconciliation: decide, from names, shapes and dtypes alone, what happens to every key. Pure data, no I/O.

:func:`reconcile` takes the checkpoint's records, a :class:`~torchweights.plan.spec.ModelSpec` and the user's
:class:`~torchweights.plan.rules.Rules`, and returns a frozen :class:`Plan` in which every model key and every
checkpoint key appears in exactly one :class:`Action`:

1. **container**: the dict of tensors inside the file that fits the model best (by matched names after renames
   and prefix handling, then matched shapes; never by size, so an optimizer's larger state does not win). On a
   tie: not training state, then not an EMA copy (EMA copies win only on a strictly better fit, or when asked),
   then the smaller, then the deeper dict. The best disjoint container that matches anything is the runner-up;
2. **renames** the user gave, in order, on the container's keys;
3. **prefix**: the strip/add transform that maximises exact name+shape matches, then name matches, without
   collisions; no change unless strictly better. Candidates: known wrapper prefixes, prefixes shared by several
   keys or by all, and prefix pairs that turn individual keys into model keys;
4. **matching**, then built-in legacy renames that turn a leftover mismatch into a match;
5. **shapes, skips, dtypes, tied weights, custom loaders**: the per-key verdicts.

Containers whose keys cannot reach the best match count (an upper bound from the keys' last dotted parts) are
never scored, and prefix transforms are scored with set operations, so 20,000 keys next to 40,000 optimizer
tensors take a fraction of a second.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..records import Checkpoint
from ..text import StrEnum, format_shape, plural, quote, shorten_list
from .rules import (
    CONTAINER_NAMES,
    EMA_NAMES,
    KNOWN_PREFIXES,
    LEGACY_RENAMES,
    OPTIMIZER_NAMES,
    WRAPPER_PARTS,
    LegacyRename,
    RuleError,
    Rules,
    matches_any,
)
from .spec import EXTRA_STATE, ModelEntry, ModelSpec

__all__ = [
    "Action",
    "ActionKind",
    "ContainerChoice",
    "ModuleInit",
    "Plan",
    "PrefixChoice",
    "RenameUse",
    "SkipUse",
    "SourceKey",
    "reconcile",
    "renames_module",
]


class ActionKind(StrEnum):
    """What happens to one key (:attr:`Action.kind`); members are strings (``ActionKind.LOAD == "load"``)."""

    MISMATCH = "mismatch"
    MISSING = "missing"
    UNEXPECTED = "unexpected"
    SKIP = "skip"
    DEFAULT = "default"
    TIED = "tied"
    LOAD = "load"
    EXTRA = "extra"
    IGNORED = "ignored"


#: Action kinds, in the order reports list them. Problems first.
KINDS: tuple[ActionKind, ...] = tuple(ActionKind)


@dataclass(frozen=True)
class SourceKey:
    """One tensor of the checkpoint as the planner sees it."""

    record: str
    path: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class Action:
    """The verdict for one key (or one model key and its checkpoint source).

    Attributes:
        kind: ``load`` (copied, possibly renamed or cast), ``tied`` (shares memory with a loaded key),
            ``skip`` (left as initialised / not loaded, on request), ``default`` (absent from old checkpoints, kept
            at its initial value, e.g. BatchNorm ``num_batches_tracked``), ``mismatch`` (shapes differ),
            ``missing`` (no source), ``unexpected`` (no target), ``ignored`` (outside the chosen container),
            ``extra`` (a module's extra state, restored with its ``set_extra_state`` as torch's loader does; the
            source is a tensor record or, for any other value, a name of ``Checkpoint.extras``). An
            :class:`ActionKind`: a string.
        target: model key, if any.
        source: checkpoint record name, if any.
        key: the source's key inside the chosen container, before renames and prefix handling.
        src_shape / dst_shape: shapes on each side.
        src_dtype / dst_dtype: dtypes on each side (``dst_dtype`` is what will be stored).
        via: transforms that made the match (``"prefix"``, ``"rename 'gamma$' -> 'weight'"``, ``"reshape"``).
        reason: why a key is skipped, missing, mismatched or ignored.
        fallback: loaded through torch's own ``load_state_dict`` path (module with custom loading or hooks).
    """

    kind: ActionKind
    target: str | None = None
    source: str | None = None
    key: str | None = None
    src_shape: tuple[int, ...] | None = None
    dst_shape: tuple[int, ...] | None = None
    src_dtype: str | None = None
    dst_dtype: str | None = None
    via: tuple[str, ...] = ()
    reason: str = ""
    fallback: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", ActionKind(self.kind))  # a plain string names the same kind

    @property
    def cast(self) -> bool:
        """Whether loading converts the dtype."""
        return self.kind == "load" and self.src_dtype != self.dst_dtype

    @property
    def renamed(self) -> bool:
        """Whether the model key differs from the checkpoint key."""
        return self.target is not None and self.key is not None and self.target != self.key

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        out: dict[str, Any] = {"kind": self.kind}
        for name in ("target", "source", "key", "src_dtype", "dst_dtype", "reason"):
            value = getattr(self, name)
            if value:
                out[name] = value
        for name in ("src_shape", "dst_shape"):
            value = getattr(self, name)
            if value is not None:
                out[name] = list(value)
        if self.via:
            out["via"] = list(self.via)
        if self.fallback:
            out["fallback"] = True
        return out


@dataclass(frozen=True)
class ContainerChoice:
    """Which part of the checkpoint was taken as the state dict, and why."""

    path: tuple[str, ...]
    reason: str
    matched: int = 0
    runner_up: tuple[str, ...] | None = None
    runner_up_matched: int = 0

    @property
    def name(self) -> str:
        """Dotted name of the container (``""`` for the file's root)."""
        return ".".join(self.path)


@dataclass(frozen=True)
class PrefixChoice:
    """The prefix transform applied to the container's keys: strip ``strip``, then add ``add``."""

    strip: str = ""
    add: str = ""
    changed: int = 0
    total: int = 0
    collisions: int = 0

    @property
    def evidence(self) -> str:
        """One line saying what was done and on how many keys."""
        if not self.strip and not self.add:
            return "no prefix change"
        parts = []
        if self.strip:
            parts.append(f"stripped {quote(self.strip)}")
        if self.add:
            parts.append(f"added {quote(self.add)}")
        return f"{' and '.join(parts)} on {self.changed}/{self.total} keys; {self.collisions} collisions"


@dataclass(frozen=True)
class RenameUse:
    """What one of the user's renames did: how many keys it matched, and in which names.

    Attributes:
        pattern / replacement: the rename.
        matched: container keys it matched.
        phase: ``"stored"`` (it matched keys as stored in the checkpoint, and applied there, before prefix
            handling), ``"model"`` (it matched none of them, and applied to the names after prefix handling: a
            rename written in the model's names) or ``"none"`` (it matched no key in either).
    """

    pattern: str
    replacement: str
    matched: int
    phase: str

    def describe(self) -> str:
        """One line for the report: ``rename 'fc\\.' -> 'head.' matched 2 keys (after prefix handling)``."""
        text = f"rename {quote(self.pattern)} -> {quote(self.replacement)} matched {plural(self.matched, 'key')}"
        if self.phase == "model":
            text += " (in the names after prefix handling)"
        return text


@dataclass(frozen=True)
class SkipUse:
    """What one of the user's ``skip`` patterns did.

    Attributes:
        pattern: the glob.
        matched: keys it skipped (model keys left as initialised, checkpoint tensors not loaded).
        names: ``"model"`` (it matches model keys: it applies to the model's names, and to checkpoint tensors that
            match no model key), ``"checkpoint"`` (it matches no model key: it applies to the checkpoint's names,
            as stored or after prefix handling, so ``skip=["head.*"]`` works whatever key ``head.*`` would load
            into) or ``"none"`` (it matched nothing).
    """

    pattern: str
    matched: int
    names: str

    def describe(self) -> str:
        """One line for the report: ``skip 'head.*' matched 2 keys (in the checkpoint's names)``."""
        text = f"skip {quote(self.pattern)} matched {plural(self.matched, 'key')}"
        if self.names == "checkpoint":
            text += " (in the checkpoint's names)"
        return text


@dataclass(frozen=True)
class ModuleInit:
    """A module whose tensors on the meta device no checkpoint tensor fills, and how ``init_missing=True``
    initialises them.

    Attributes:
        module: the module's path (``""`` for the root).
        method: the method called after its meta tensors are allocated (``reset_parameters``,
            ``_reset_parameters``, ``reset_running_stats``), or None when it has none (they stay on meta).
        tensors: the model keys it owns that would stay on the meta device.
    """

    module: str
    method: str | None
    tensors: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    """Everything :func:`reconcile` decided, as frozen data.

    Attributes (beyond the obvious):
        left_on_meta: model tensors (keys, and buffers that ``state_dict()`` leaves out) that stay on the meta
            device after the plan is applied: they have no values, and the model cannot run until something fills
            them. Never part of an "OK" load.
        initialise: the modules owning meta tensors that no checkpoint tensor fills, with the method that
            ``init_missing=True`` calls to initialise them (or None: they stay on meta); what it would do when not
            set.
        renames: what each of the user's renames matched.
        skips: what each of the user's skip patterns matched.
        suggestion: when missing and unexpected keys pair up one to one (same leaves and shapes, same layer
            indices), the plan of the same load with the ``rename`` that pairs them, checked to load them and
            everything that loaded here; None otherwise.
    """

    source: str
    model: str
    container: ContainerChoice
    prefix: PrefixChoice
    rules: Rules
    actions: tuple[Action, ...]
    applied: tuple[str, ...] = field(default=())
    left_on_meta: tuple[str, ...] = ()
    initialise: tuple[ModuleInit, ...] = ()
    renames: tuple[RenameUse, ...] = ()
    suggestion: Plan | None = None
    skips: tuple[SkipUse, ...] = ()

    def by_kind(self, kind: str) -> list[Action]:
        """The actions of one kind, in plan order."""
        return [a for a in self.actions if a.kind == kind]

    @property
    def problems(self) -> list[Action]:
        """Actions that make the load fail under the plan's strictness: under ``strict=True``, every mismatched,
        missing or unexpected key; under ``"model"``, mismatched and missing ones; under both, any key that would
        be left on the meta device (skipped ones included: a meta tensor has no initial value to keep). None under
        ``strict=False``."""
        strict = self.rules.strict
        if strict is False:
            return []
        bad = {"mismatch", "missing", "unexpected"} if strict is True else {"mismatch", "missing"}
        meta = set(self.left_on_meta)
        return [a for a in self.actions if a.kind in bad or (a.target is not None and a.target in meta)]

    @property
    def ok(self) -> bool:
        """True when the plan can be applied under its strictness and leaves nothing on the meta device."""
        return not self.problems and not self.left_on_meta

    @property
    def initialised(self) -> list[str]:
        """Model keys that ``init_missing=True`` initialises instead of leaving them on the meta device (empty when
        it is not set)."""
        if not self.rules.init_missing:
            return []
        return [name for init in self.initialise if init.method for name in init.tensors]

    def counts(self) -> dict[str, int]:
        """Number of actions per kind (every kind present, zeros included)."""
        counter = Counter(a.kind for a in self.actions)
        return {kind: counter.get(kind, 0) for kind in KINDS}


# --------------------------------------------------------------------------------------------------------------
# Checkpoint keys and container candidates
# --------------------------------------------------------------------------------------------------------------


def extra_state_values(checkpoint: Checkpoint | Mapping[str, Any] | Iterable[SourceKey]) -> dict[str, Any]:
    """The values saved as modules' extra state that are not tensors (tensors are records), by dotted name: the
    entries of ``Checkpoint.extras`` (or of a plain dict) whose last dotted part is ``_extra_state``."""
    if isinstance(checkpoint, Checkpoint):
        found = checkpoint.extras
    elif isinstance(checkpoint, Mapping):
        found = {}
        stack: list[tuple[Mapping[Any, Any], str]] = [(checkpoint, "")]
        while stack:
            mapping, prefix = stack.pop()
            for name, value in mapping.items():
                here = f"{prefix}{name}"
                if here.rpartition(".")[2] == EXTRA_STATE:
                    found[here] = value
                elif isinstance(value, Mapping):
                    stack.append((value, here + "."))
    else:
        return {}
    return {
        name: value
        for name, value in found.items()
        if name.rpartition(".")[2] == EXTRA_STATE and not (hasattr(value, "shape") and hasattr(value, "dtype"))
    }


def _source_keys(checkpoint: Checkpoint | Mapping[str, Any] | Iterable[SourceKey]) -> list[SourceKey]:
    if isinstance(checkpoint, Checkpoint):
        return [SourceKey(r.name, r.path or (r.name,), r.shape, r.dtype) for r in checkpoint.records.values()]
    if isinstance(checkpoint, Mapping):
        return [
            SourceKey(name, path, tuple(int(n) for n in value.shape), str(value.dtype).removeprefix("torch."))
            for name, (path, value) in mapping_tensors(checkpoint).items()
        ]
    return [k if k.path else SourceKey(k.record, (k.record,), k.shape, k.dtype) for k in checkpoint]


def mapping_tensors(mapping: Mapping[Any, Any]) -> dict[str, tuple[tuple[str, ...], Any]]:
    """The tensors (anything with ``shape`` and ``dtype``) of a plain, possibly nested, dict, by the dotted names
    the plan gives them: ``{name: (path, tensor)}``. Other values are not tensors and are left out, and a dict
    saved as a module's extra state (under a key ending in ``_extra_state``) is one value, not walked."""
    out: dict[str, tuple[tuple[str, ...], Any]] = {}
    stack: list[tuple[Iterator[tuple[Any, Any]], tuple[str, ...]]] = [(iter(mapping.items()), ())]
    while stack:  # depth first, in insertion order, without recursion
        items, path = stack[-1]
        for name, value in items:
            here = (*path, str(name))
            if isinstance(value, Mapping) and here[-1].rpartition(".")[2] != EXTRA_STATE:
                stack.append((iter(value.items()), here))
                break
            if hasattr(value, "shape") and hasattr(value, "dtype"):
                out[".".join(here)] = (here, value)
        else:
            stack.pop()
    return out


@dataclass
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


def _is_ema(path: Sequence[str]) -> bool:
    return any(part in EMA_NAMES for part in path)


def _rank(path: tuple[str, ...], names: int, exact: int, size: int, strip: str = "") -> tuple[Any, ...]:
    """Sort key of a container, best first: most names matched, then most shapes. On a tie: one outside training
    state (optimizer moments keyed like the model...), then the non-EMA copy (counting the prefix stripped), then
    the smaller container (fewer stray keys), then the deeper one (same tensors, fewer prefix changes), then the
    usual names."""
    parts = (*path, *strip.split(".")[:-1])
    training = any(part in OPTIMIZER_NAMES for part in parts)
    last = path[-1] if path else ""
    usual = CONTAINER_NAMES.index(last) if last in CONTAINER_NAMES else len(CONTAINER_NAMES)
    return (-names, -exact, training, _is_ema(parts), size, -len(path), usual, path)


@dataclass
class _Fit:
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
        return _is_ema((*self.path, *self.prefix.strip.split(".")[:-1]))

    def rank(self) -> tuple[Any, ...]:
        """See :func:`_rank`."""
        return _rank(self.path, self.names, self.exact, len(self.keys), self.prefix.strip)


def _nested(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Whether one container holds the other (their tensors overlap); otherwise they are disjoint."""
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def _choose_container(
    keys: Sequence[SourceKey], index: _ModelIndex, rules: Rules
) -> tuple[_Fit, tuple[tuple[str, ...], int, int] | None]:
    """The best container and the best one disjoint from it (``(path, names, exact)``), if any."""
    candidates = _candidates(keys, None if rules.rename else index.leaves)
    if rules.container != "auto":
        return _forced_container(keys, candidates, index, rules), None
    # Most promising first; a candidate whose bound cannot reach the best's matches is never scored.
    order = sorted(candidates.values(), key=lambda c: (-c.bound, c.size))
    fits: dict[tuple[str, ...], _Fit] = {}
    best: _Fit | None = None
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
    runner: _Fit | None = None
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
    keys: Sequence[SourceKey], candidates: dict[tuple[str, ...], _Candidate], index: _ModelIndex, rules: Rules
) -> _Fit:
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


def _fit(cand: _Candidate, keys: Sequence[SourceKey], index: _ModelIndex, rules: Rules) -> _Fit:
    """Score one container: the user's renames that match keys as stored, the prefix transform, then the renames
    that matched no stored key, on the names after prefix handling (a rename written in the model's names)."""
    members = cand.members(keys)
    if not rules.rename:
        prefix, names, exact = _choose_prefix({k: v.shape for k, v in members.items()}, index, rules)
        final = {k: _transform(k, prefix.strip, prefix.add) for k in members}
        return _Fit(cand.path, members, dict(zip(members, members)), prefix, names, exact, None, final)
    renamed = dict(zip(members, members))
    uses: list[RenameUse] = []
    later: list[tuple[re.Pattern[str], str]] = []
    for pattern, replacement in rules.compiled_rename:
        matched = _rename_step(renamed, pattern, replacement)
        if matched:
            uses.append(RenameUse(pattern.pattern, replacement, matched, "stored"))
        else:
            later.append((pattern, replacement))
    clash = _clash(renamed)
    shapes = {renamed[k]: v.shape for k, v in members.items()}
    prefix, names, exact = _choose_prefix(shapes, index, rules)
    final = {k: _transform(v, prefix.strip, prefix.add) for k, v in renamed.items()}
    if later:
        prefix, final, names, exact, matched_later = _prefix_with_renames(shapes, renamed, index, rules, prefix, later)
        for (pattern, replacement), matched in zip(later, matched_later, strict=True):
            uses.append(RenameUse(pattern.pattern, replacement, matched, "model" if matched else "none"))
        clash = clash or _clash(final)
    order = {(p.pattern, r): i for i, (p, r) in enumerate(rules.compiled_rename)}
    uses.sort(key=lambda u: order[(u.pattern, u.replacement)])
    return _Fit(cand.path, members, renamed, prefix, names, exact, clash, final, tuple(uses))


def _prefix_with_renames(
    shapes: dict[str, tuple[int, ...]],
    renamed: dict[str, str],
    index: _ModelIndex,
    rules: Rules,
    chosen: PrefixChoice,
    later: Sequence[tuple[re.Pattern[str], str]],
) -> tuple[PrefixChoice, dict[str, str], int, int, list[int]]:
    """The prefix transform when some renames apply after it (they matched no stored key): the transform chosen
    without them, no transform, and (``prefix="auto"``) each candidate strip after which a rename matches some
    key, each scored with the renames applied; the most exact matches, then names, without collisions.

    Returns the transform, the final names (container key -> name), names and exact matches, and how many keys
    each rename matched."""
    model = index.shapes
    total = len(shapes)
    options: list[tuple[str, str]] = [(chosen.strip, chosen.add), ("", "")]
    if rules.prefix == "auto":
        counts, _ = _prefix_counts(shapes)
        for strip in sorted(_candidate_set(shapes, counts)):
            n = len(strip)
            if any(p.search(k[n:]) for k in shapes if k.startswith(strip) for p, _ in later):
                options += [(strip, ""), (strip, chosen.add)]
    best: tuple[Any, ...] | None = None
    for strip, add in dict.fromkeys(options):
        final = {k: _transform(v, strip, add) for k, v in renamed.items()}
        matched = [_rename_step(final, pattern, replacement) for pattern, replacement in later]
        if len(set(final.values())) < len(final):
            continue
        if (strip, add) != (chosen.strip, chosen.add) and strip and add:
            kept = sum(1 for k, v in renamed.items() if not v.startswith(strip) and final[k] in model)
            if renames_module(strip, add, kept):
                continue
        names = sum(1 for v in final.values() if v in model)
        exact = sum(1 for k, v in final.items() if model.get(v) == shapes[renamed[k]])
        if best is None or (exact, names) > (best[3], best[2]):
            changed = sum(1 for k, v in renamed.items() if _transform(v, strip, add) != v)
            best = (PrefixChoice(strip, add, changed, total, 0), final, names, exact, matched)
    if best is None:  # every option collides: keep the transform chosen without the renames
        final = {k: _transform(v, chosen.strip, chosen.add) for k, v in renamed.items()}
        matched = [_rename_step(final, pattern, replacement) for pattern, replacement in later]
        best = (chosen, final, 0, 0, matched)
    return best  # type: ignore[return-value]


def _rename_step(names: dict[str, str], pattern: re.Pattern[str], replacement: str) -> int:
    """Apply one rename to every value of ``names`` (in place); the number of names it matched."""
    matched = 0
    for key, name in names.items():
        if pattern.search(name) is None:
            continue
        matched += 1
        try:
            names[key] = pattern.sub(replacement, name)
        except (re.error, IndexError) as exc:
            raise RuleError(
                f"rename {quote(pattern.pattern)} -> {quote(replacement)} cannot be applied: {exc}",
                code="bad-rename",
            ) from None
    return matched


def _clash(out: dict[str, str]) -> RuleError | None:
    """The error to raise if two keys end up the same after the user's renames (the first of each clashing group
    keeps the new name; the others keep their own, and show up as unexpected if this container is ever used
    without raising)."""
    seen: dict[str, str] = {}
    clashes = []
    for key, new in out.items():
        if new in seen:
            clashes.append(f"{quote(seen[new])} and {quote(key)} -> {quote(new)}")
        else:
            seen[new] = key
    if not clashes:
        return None
    error = RuleError(
        f"the renames map {len(clashes)} pairs of checkpoint keys to the same name: {shorten_list(clashes, 5)}. "
        "Make the patterns more specific (anchor them with ^ and $).",
        code="rename-collision",
    )
    for key, new in out.items():
        if seen[new] != key:
            out[key] = key
    return error


# --------------------------------------------------------------------------------------------------------------
# Prefix inference
# --------------------------------------------------------------------------------------------------------------


def _splits(name: str, depth: int = 3) -> list[tuple[str, str]]:
    """``name`` cut after each of its first ``depth`` dots: ``[("a.", "b.c.d"), ("a.b.", "c.d"), ...]``."""
    out: list[tuple[str, str]] = []
    end = name.find(".")
    while end >= 0 and len(out) < depth:
        out.append((name[: end + 1], name[end + 1 :]))
        end = name.find(".", end + 1)
    return out


def _prefix_counts(
    names: Iterable[str], rests: Mapping[str, list[str]] | None = None, leaves: set[str] | None = None
) -> tuple[Counter[str], Counter[tuple[str, str]]]:
    """How many names start with each prefix of one to three dotted parts (``a.``, ``a.b.``, ``a.b.c.``); and, given
    the other side's names by what is left of them after a prefix (``rests``), how many names each
    ``(strip, add)`` pair turns into a name of the other side.

    ``leaves``: the other side's last dotted parts; names ending otherwise can match nothing whatever the prefix
    (an optimizer's ``exp_avg``), and are not counted."""
    counts: dict[str, int] = {}
    support: dict[tuple[str, str], int] = {}
    find = rests.get if rests is not None else None
    for name in names:
        if leaves is not None and name.rpartition(".")[2] not in leaves:
            continue
        parts = name.split(".", 3)
        prefix = ""
        for i in range(len(parts)):
            if i:
                prefix += parts[i - 1] + "."
                counts[prefix] = counts.get(prefix, 0) + 1
            if find is None:
                continue
            rest = name[len(prefix) :]
            adds = find(rest)
            if adds is None or len(adds) > _AMBIGUOUS:
                continue
            for add in adds:
                # When both sides lose a prefix, a bare leaf ('weight') left in common is no evidence.
                if prefix != add and (not prefix or not add or "." in rest):
                    pair = (prefix, add)
                    support[pair] = support.get(pair, 0) + 1
    return Counter(counts), Counter(support)


#: A rest shared by more model keys than this (``0.weight`` in every block) says nothing about the prefix.
_AMBIGUOUS = 4


def _prefix_candidates(names: Mapping[str, Any]) -> tuple[set[str], Counter[str]]:
    """Prefixes worth trying on one side, with how many names have each.

    The known wrapper prefixes present; the 12 most shared prefixes of one to three dotted parts that at least two
    names share (however small a fraction: a root may hold far more optimizer state than weights); and every dotted
    prefix shared by all names. A prefix of a single name is no evidence of a wrapper.
    """
    counts, _ = _prefix_counts(names)
    return _candidate_set(names, counts), counts


def _candidate_set(names: Mapping[str, Any], counts: Counter[str]) -> set[str]:
    """See :func:`_prefix_candidates`; adds the prefixes shared by all names to ``counts`` (up to any depth)."""
    found = {p for p in KNOWN_PREFIXES if counts.get(p)}
    found.update(p for p, n in counts.most_common(12) if n >= 2)
    if names:
        common = os.path.commonprefix([min(names), max(names)])
        end = common.find(".")
        while end >= 0:  # every dotted prefix shared by all names
            prefix = common[: end + 1]
            found.add(prefix)
            counts[prefix] = len(names)
            end = common.find(".", end + 1)
    return found


def _transform(key: str, strip: str, add: str) -> str:
    """Strip ``strip`` from a key that starts with it and put ``add`` in its place; without ``strip``, add
    ``add`` to every key."""
    if strip:
        return add + key[len(strip) :] if key.startswith(strip) else key
    return add + key


class _ModelIndex:
    """The model's keys, indexed once per reconciliation for every container tried."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.shapes: dict[str, tuple[int, ...]] = {name: e.shape for name, e in spec.entries.items()}
        self.leaves = {name.rpartition(".")[2] for name in self.shapes}
        self.adds, _ = _prefix_candidates(self.shapes)
        self._rests: dict[str, list[str]] | None = None
        self._under: dict[str, dict[str, tuple[int, ...]]] = {"": self.shapes}

    @property
    def rests(self) -> dict[str, list[str]]:
        """What is left of each model key after no prefix or a prefix of up to 3 parts -> those prefixes (at most
        ``_AMBIGUOUS + 1`` of them: more only says the rest is ambiguous)."""
        if self._rests is None:
            self._rests = {}
            for name in self.shapes:
                for prefix, rest in (("", name), *_splits(name)):
                    found = self._rests.setdefault(rest, [])
                    if len(found) <= _AMBIGUOUS:
                        found.append(prefix)
        return self._rests

    def under(self, add: str) -> dict[str, tuple[int, ...]]:
        """Model keys that start with ``add``, without it, with their shapes."""
        found = self._under.get(add)
        if found is None:
            n = len(add)
            found = self._under[add] = {k[n:]: v for k, v in self.shapes.items() if k.startswith(add)}
        return found


def _pair_order(pair: tuple[str, str]) -> tuple[Any, ...]:
    """Transforms in order of preference among equally good ones: not into training state nor an EMA copy, then
    the simplest."""
    strip, add = pair
    parts = strip.split(".")[:-1]
    training = any(part in OPTIMIZER_NAMES for part in parts)
    return (training, _is_ema(parts), bool(strip) + bool(add), len(strip) + len(add), strip, add)


def _choose_prefix(
    shapes: dict[str, tuple[int, ...]], index: _ModelIndex, rules: Rules
) -> tuple[PrefixChoice, int, int]:
    """The prefix transform for one container's keys (after renames), with its name and exact-shape matches.

    With ``prefix="auto"``: the transform with the most exact (name and shape) matches, then most name matches,
    among those that make no two keys collide; no change unless a transform is strictly better.
    """
    total = len(shapes)
    if rules.prefix != "auto":
        strip, add = _explicit_prefix(rules.prefix)
        names, exact, changed, collisions = _score(shapes, index, strip, add)
        return PrefixChoice(strip, add, changed, total, collisions), names, exact
    model = index.shapes
    matched = shapes.keys() & model.keys()
    exact_matched = {k for k, _ in shapes.items() & model.items()}
    best = (PrefixChoice(total=total), len(matched), len(exact_matched))
    if len(exact_matched) == total or not total:
        return best
    counts, support = _prefix_counts(shapes, index.rests, index.leaves)
    strips = _candidate_set(shapes, counts)
    # Every usual or shared prefix on one side against every one on the other, and the pairs that explain the
    # most keys one by one (a prefix on a few keys only, as long as what is left is a model key).
    candidates = {(s, a) for s in ["", *strips] for a in ["", *index.adds] if (s or a) and s != a}
    candidates.update(pair for pair, _ in support.most_common(12))
    pairs = sorted(candidates, key=_pair_order)
    # Per strip: identity matches among the keys it changes (they are lost), and those keys without the prefix.
    lost_names: dict[str, int] = {}
    stripped: dict[str, tuple[dict[str, tuple[int, ...]], int]] = {}
    for strip, add in pairs:
        best_exact = best[2]
        target = index.under(add)
        if strip:
            lost = lost_names.get(strip)
            if lost is None:
                lost = lost_names[strip] = sum(1 for k in matched if k.startswith(strip))
            kept = len(matched) - lost  # keys without the prefix stay as they are, and so do their matches
            if renames_module(strip, add, kept):
                continue
            if min(counts.get(strip, 0), len(target)) + kept <= best_exact:
                continue
            cached = stripped.get(strip)
            if cached is None:
                n = len(strip)
                rest = {k[n:]: v for k, v in shapes.items() if k.startswith(strip)}
                cached = stripped[strip] = (rest, sum(1 for k in exact_matched if k.startswith(strip)))
            rest, lost_exact = cached
            names = len(rest.keys() & target.keys()) + kept
            if names <= best_exact:
                continue
            exact = len(rest.items() & target.items()) + len(exact_matched) - lost_exact
        else:
            if min(total, len(target)) <= best_exact:
                continue
            names = len(shapes.keys() & target.keys())
            if names <= best_exact:
                continue
            exact = len(shapes.items() & target.items())
        if (exact, names) <= (best[2], best[1]):
            continue
        collisions = _collisions(shapes, stripped[strip][0], strip, add) if strip else 0
        if collisions:
            continue
        changed = len(stripped[strip][0]) if strip else total
        best = (PrefixChoice(strip, add, changed, total, 0), names, exact)
    return best


def renames_module(strip: str, add: str, kept: int) -> bool:
    """Whether the transform ``strip`` -> ``add`` renames a module rather than a wrapper, given ``kept``: how many
    keys it leaves unchanged match a model key as stored.

    A wrapper covers the keys: when some keys already load under their stored names, the container uses the
    model's names, and a swap of one leading name for another on the other keys (``head.`` -> ``classifier.``)
    would load one module's tensors into another. Such a swap is a rename, for the user to ask for (the plan
    suggests it); it is never inferred. Removing or inserting only wrapper levels (``encoder._orig_mod.`` ->
    ``encoder.``, ``module.a.`` -> ``a.``; see :data:`~torchweights.plan.rules.WRAPPER_PARTS`) moves nothing, and
    stripping or adding alone is not a swap."""
    if not (strip and add and kept):
        return False
    return _unwrapped(strip) != _unwrapped(add)


def _unwrapped(prefix: str) -> list[str]:
    """The dotted parts of ``prefix`` that are not wrapper levels."""
    return [part for part in prefix.split(".")[:-1] if part not in WRAPPER_PARTS]


def _collisions(shapes: Mapping[str, Any], rest: Iterable[str], strip: str, add: str) -> int:
    """How many stripped keys land on a key that was left as it is."""
    count = 0
    for r in rest:
        new = add + r
        if new in shapes and not new.startswith(strip):
            count += 1
    return count


def _score(
    shapes: Mapping[str, tuple[int, ...]], index: _ModelIndex, strip: str, add: str
) -> tuple[int, int, int, int]:
    """(names matched, exact matches, keys changed, collisions) for one transform."""
    model = index.shapes
    seen: set[str] = set()
    names = exact = changed = collisions = 0
    for key, shape in shapes.items():
        new = _transform(key, strip, add)
        changed += new != key
        if new in seen:
            collisions += 1
        seen.add(new)
        target = model.get(new)
        if target is not None:
            names += 1
            exact += target == shape
    return names, exact, changed, collisions


def _explicit_prefix(prefix: str | None) -> tuple[str, str]:
    """``prefix=None``/``""``: no change; ``"module."``: strip it; ``"+model."``: add it; ``"a.->b."``: replace."""
    if not prefix:
        return "", ""
    if "->" in prefix:
        strip, add = (p.strip() for p in prefix.split("->", 1))
        return strip, add
    if prefix.startswith("+"):
        return "", prefix[1:]
    return prefix, ""


# --------------------------------------------------------------------------------------------------------------
# Matching and verdicts
# --------------------------------------------------------------------------------------------------------------


def _scalar_compatible(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """0-dim and one-element shapes of the same numel, e.g. () and (1,)."""
    return a != b and math.prod(a) == math.prod(b) == 1 and (len(a) == 0 or len(b) == 0)


def _in_custom_module(name: str, custom: Sequence[str]) -> bool:
    return bool(custom) and any(m == "" or name == m or name.startswith(m + ".") for m in custom)


def _is_batch_counter(name: str) -> bool:
    return name.rpartition(".")[2] == "num_batches_tracked"


#: Built-in renames by the last dotted part of the keys they change; those that name none apply to every key.
_LEGACY_BY_LEAF: dict[str, list[LegacyRename]] = {}
_LEGACY_ANY = [rule for rule in LEGACY_RENAMES if not rule.leaves]
for _rule in LEGACY_RENAMES:
    for _leaf in _rule.leaves:
        _LEGACY_BY_LEAF.setdefault(_leaf, []).append(_rule)


class _Matcher:
    def __init__(self, fit: _Fit, spec: ModelSpec, rules: Rules) -> None:
        self.fit = fit
        self.spec = spec
        self.rules = rules
        self.source_of: dict[str, tuple[str, tuple[str, ...]]] = {}  # model key -> (container key, via)
        self.target_of: dict[str, str] = {}  # container key -> model key
        self.final: dict[str, str] = {}  # container key -> its name after renames and prefix handling
        self.applied: list[str] = []

    def match(self) -> None:
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
        moved = _transform(renamed, strip, add)
        return (("rename",) if renamed != key or new != moved else ()) + (("prefix",) if moved != renamed else ())

    def bind(self, key: str, target: str, via: tuple[str, ...]) -> None:
        self.source_of[target] = (key, via)
        self.target_of[key] = target

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
                if entry.shape == shape or _scalar_compatible(shape, entry.shape):
                    via = self.via(key, renamed, base, self.fit.prefix.strip, self.fit.prefix.add)
                    self.bind(key, new, (*via, f"legacy rename: {rule.label}"))
                    used[rule.label] += 1
                    break
        for label, n in used.items():
            self.applied.append(f"legacy rename {label} on {n} keys")


def _load_action(
    target: ModelEntry,
    source: SourceKey,
    key: str,
    via: tuple[str, ...],
    rules: Rules,
    spec: ModelSpec,
    stored_skips: Sequence[str] = (),
) -> Action:
    """The verdict for a model key that has a source: load (maybe reshaped or cast), skip, or mismatch.

    ``stored_skips``: the skip patterns that match no model key, matched against the source's names instead."""
    dst_shape = target.shape
    common: dict[str, Any] = {
        "target": target.name,
        "source": source.record,
        "key": key,
        "src_shape": source.shape,
        "dst_shape": dst_shape,
        "src_dtype": source.dtype,
        "via": via,
    }
    skip_pattern = (
        matches_any(target.name, rules.skip)
        or matches_any(key, stored_skips)
        or matches_any(source.record, stored_skips)
    )
    if skip_pattern is not None:
        return Action(ActionKind.SKIP, dst_dtype=target.dtype, reason=f"skip={quote(skip_pattern)}", **common)
    fallback = _in_custom_module(target.name, spec.custom_modules)
    reason = ""
    if source.shape != dst_shape:
        if _scalar_compatible(source.shape, dst_shape):
            common["via"] = (*via, "reshape")
        elif fallback and (target.name, source.shape) in spec.converts:
            # The module's own _load_from_state_dict was seen to turn this shape into the model's (on meta tensors).
            reason = "shapes differ; the module's own loading code converts them"
        elif rules.on_mismatch == "skip":
            return Action(
                ActionKind.SKIP, dst_dtype=target.dtype, reason="shape mismatch (on_mismatch='skip')", **common
            )
        else:
            why = "shapes differ"
            if fallback:
                why += " (the module has its own loading code, which was not seen to accept this shape)"
            return Action(ActionKind.MISMATCH, dst_dtype=target.dtype, reason=why, **common)
    if source.dtype.startswith(("qint", "quint")) != target.dtype.startswith(("qint", "quint")):
        # A quantized tensor and a plain one: no cast turns one into the other (its integers are not its values).
        why = "one is quantized and the other is not; no cast converts them"
        if rules.on_mismatch == "skip":
            return Action(ActionKind.SKIP, dst_dtype=target.dtype, reason=f"{why} (on_mismatch='skip')", **common)
        return Action(ActionKind.MISMATCH, dst_dtype=target.dtype, reason=why, **common)
    dst_dtype = target.dtype if rules.dtype == "model" else source.dtype
    if (
        dst_dtype != target.dtype
        and _is_batch_counter(target.name)
        and _is_float(source.dtype)
        and not _is_float(target.dtype)
    ):
        # Old files stored BatchNorm's step counter as a float: it stays the model's integer.
        dst_dtype = target.dtype
        common["via"] = (*common["via"], "legacy: float num_batches_tracked")
    return Action(ActionKind.LOAD, dst_dtype=dst_dtype, fallback=fallback, reason=reason, **common)


def _is_float(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat", "complex")) or dtype in ("half", "double")


def reconcile(
    checkpoint: Checkpoint | Mapping[str, Any] | Iterable[SourceKey],
    spec: ModelSpec,
    rules: Rules | None = None,
    *,
    source: str | None = None,
    suggest: bool = True,
) -> Plan:
    """Decide what happens to every key, from names, shapes and dtypes alone.

    Args:
        checkpoint: a :class:`~torchweights.records.Checkpoint`, a plain ``{name: tensor}`` dict (nested dicts
            are walked; values without ``shape`` and ``dtype`` are not tensors), or :class:`SourceKey` items.
        spec: the model side.
        rules: the user's options (defaults: strict, auto container, auto prefix).
        source: what to call the checkpoint in messages (defaults to its path).
        suggest: look for renames that pair missing and unexpected keys (:attr:`Plan.suggestion`).

    Returns:
        A frozen :class:`Plan`. It never raises for mismatches; check :attr:`Plan.ok`.

    Raises:
        RuleError: a rule cannot be followed (unknown container, renames that collide).
    """
    rules = rules or Rules.make()
    keys = _source_keys(checkpoint)
    plan, final = _reconcile(keys, checkpoint, spec, rules, source)
    if suggest:
        pairs = _paired_renames(plan, final)
        if pairs:
            plan = _with_suggestion(plan, keys, spec, pairs)
    return plan


def _reconcile(
    keys: list[SourceKey],
    checkpoint: Checkpoint | Mapping[str, Any] | Iterable[SourceKey],
    spec: ModelSpec,
    rules: Rules,
    source: str | None,
) -> tuple[Plan, Mapping[str, str]]:
    """:func:`reconcile` without suggestions; also returns each container key's name after renames and prefix
    handling."""
    name = source or (checkpoint.path if isinstance(checkpoint, Checkpoint) else "<state dict>")
    if not keys:
        if rules.container not in ("auto", ""):
            raise RuleError(
                f"container={quote(rules.container)} is not a dict of tensors in this checkpoint: it holds no "
                "tensors at all.",
                code="bad-container",
            )
        empty = _Fit((), {}, {}, PrefixChoice(), 0, 0, uses=tuple(RenameUse(p, r, 0, "none") for p, r in rules.rename))
        extras = extra_state_values(checkpoint)
        return _assemble(name, spec, rules, empty, None, [], _Matcher(empty, spec, rules), extras), {}
    index = _ModelIndex(spec)
    fit, runner = _choose_container(keys, index, rules)
    matcher = _Matcher(fit, spec, rules)
    matcher.match()
    inside = {k.record for k in fit.keys.values()}
    outside = [k for k in keys if k.record not in inside]
    extras = extra_state_values(checkpoint)
    return _assemble(name, spec, rules, fit, runner, outside, matcher, extras), matcher.final


def _tie_groups(spec: ModelSpec) -> dict[str, list[str]]:
    """Tied keys by the first key of their storage (the one the others name in ``tied_to``), in model order."""
    entries = spec.entries
    groups: dict[str, list[str]] = {}
    for entry in entries.values():
        if entry.tied_to is None:
            continue
        root, seen = entry.tied_to, {entry.name}
        while root in entries and entries[root].tied_to is not None and root not in seen:
            seen.add(root)
            root = entries[root].tied_to  # type: ignore[assignment]
        if root not in entries or root == entry.name:
            continue
        groups.setdefault(root, [root]).append(entry.name)
    return groups


def _assemble(
    source: str,
    spec: ModelSpec,
    rules: Rules,
    fit: _Fit,
    runner: tuple[tuple[str, ...], int, int] | None,
    outside: list[SourceKey],
    matcher: _Matcher,
    extras: Mapping[str, Any] | None = None,
) -> Plan:
    entries = spec.entries
    extra_keys = set(spec.extra_states)
    extra_done: set[str] = set()
    source_of = matcher.source_of
    verdicts: dict[str, Action] = {}
    stored_skips = _stored_skips(rules, entries)
    # Tied keys share one storage: it is loaded once, through the group's first key, from the first member that
    # has a fitting source; the other members are "tied". A copy that does not fit its key is not read: it is
    # reported as unexpected.
    stray: list[Action] = []
    for root, members in _tie_groups(spec).items():
        root_entry = entries[root]
        loader: Action | None = None
        for member in members:
            bound = source_of.get(member)
            if bound is None:
                continue
            key, via = bound
            if member != root:
                via = (*via, f"tied: source of {quote(member)}")
            action = _load_action(root_entry, fit.keys[key], key, via, rules, spec, stored_skips)
            if action.kind == "load":
                loader = action
                break
        if loader is None:
            continue  # nothing loads the storage: every member gets its own verdict
        verdicts[root] = loader
        for member in members:
            entry = entries[member]
            bound = source_of.get(member)
            common: dict[str, Any] = {"target": member, "dst_shape": entry.shape, "dst_dtype": entry.dtype}
            reason = f"shares memory with {quote(root)}, loaded once"
            if bound is not None and fit.keys[bound[0]].record != loader.source:
                key, via = bound
                src = fit.keys[key]
                if src.shape == entry.shape or _scalar_compatible(src.shape, entry.shape):
                    common.update(key=key, source=src.record, src_shape=src.shape, src_dtype=src.dtype, via=via)
                    reason += "; this checkpoint copy is not read"
                else:
                    stray.append(
                        Action(
                            ActionKind.UNEXPECTED,
                            source=src.record,
                            key=key,
                            src_shape=src.shape,
                            src_dtype=src.dtype,
                            reason=f"copy of {quote(member)} with shape {format_shape(src.shape)}, not "
                            f"{format_shape(entry.shape)}; the tied storage is loaded from {quote(loader.key or '')}",
                        )
                    )
            if member != root:
                verdicts[member] = Action(ActionKind.TIED, reason=reason, **common)
    actions: list[Action] = []
    for entry in entries.values():
        verdict = verdicts.get(entry.name)
        if verdict is None:
            bound = source_of.get(entry.name)
            if bound is not None:
                key, via = bound
                verdict = _load_action(entry, fit.keys[key], key, via, rules, spec, stored_skips)
            else:
                verdict = _unsourced(entry, rules)
        actions.append(verdict)
    _counters_of_absent_modules(actions, entries)
    actions.extend(stray)
    target_of = matcher.target_of
    for key, src in fit.keys.items():
        if key in target_of:
            continue
        final = matcher.final.get(key, key)
        pattern = matches_any(final, rules.skip) or matches_any(key, rules.skip) or matches_any(src.record, rules.skip)
        if final in extra_keys and final not in extra_done:
            extra_done.add(final)
            if not pattern:
                actions.append(_extra_action(final, key, src.record, "a tensor", src))
                continue
        kind, reason = (
            (ActionKind.SKIP, f"skip={quote(pattern)}") if pattern else (ActionKind.UNEXPECTED, "no model key matches")
        )
        if final != key and not pattern:
            reason += f" (looked for {quote(final)})"
        actions.append(
            Action(kind, source=src.record, key=key, src_shape=src.shape, src_dtype=src.dtype, reason=reason)
        )
    inside = ".".join(fit.path) + "." if fit.path else ""
    for name, value in (extras or {}).items():
        if not name.startswith(inside):
            continue
        key = name[len(inside) :]
        final = _transform(key, fit.prefix.strip, fit.prefix.add)
        if final in extra_keys and final not in extra_done:
            extra_done.add(final)
            pattern = matches_any(final, rules.skip) or matches_any(key, rules.skip)
            if pattern:
                actions.append(Action(ActionKind.SKIP, source=name, key=key, reason=f"skip={quote(pattern)}"))
            else:
                actions.append(_extra_action(final, key, name, f"a {type(value).__name__}", None))
    for name in spec.extra_states:
        if name not in extra_done:
            reason = "extra state of a module that defines set_extra_state; the checkpoint has none for it"
            actions.append(Action(ActionKind.MISSING, target=name, reason=reason))
    container_label = quote((fit.path and ".".join(fit.path)) or "<root>")
    ignored_reason = f"outside the chosen container {container_label}"
    for src in outside:
        actions.append(
            Action(
                ActionKind.IGNORED, source=src.record, src_shape=src.shape, src_dtype=src.dtype, reason=ignored_reason
            )
        )
    left, initialise = _meta_fate(actions, spec, rules)
    skips = _skip_uses(rules, actions, stored_skips)
    return Plan(
        source=source,
        model=spec.class_name,
        container=_describe_container(fit, runner, rules),
        prefix=fit.prefix,
        rules=rules,
        actions=tuple(actions),
        applied=tuple(_applied(fit, rules, matcher.applied, skips)),
        left_on_meta=left,
        initialise=initialise,
        renames=fit.uses,
        skips=skips,
    )


def _extra_action(target: str, key: str, source: str, what: str, src: SourceKey | None) -> Action:
    """The action that restores a module's extra state (``what`` the checkpoint holds for it)."""
    return Action(
        ActionKind.EXTRA,
        target=target,
        source=source,
        key=key,
        src_shape=src.shape if src is not None else None,
        src_dtype=src.dtype if src is not None else None,
        via=("prefix",) if target != key else (),
        reason=f"{what}, passed to set_extra_state",
    )


def _counters_of_absent_modules(actions: list[Action], entries: Mapping[str, ModelEntry]) -> None:
    """A BatchNorm ``num_batches_tracked`` is kept at its default only when its module's other tensors are in the
    checkpoint (a file saved before torch 0.4.1 has them without it). When none of them loads, the module is absent
    from the file and its counter is missing like the rest of it (in place)."""
    filled = {entries[a.target].module for a in actions if a.target is not None and a.kind in ("load", "tied")}
    for i, a in enumerate(actions):
        if a.kind == "default" and a.target is not None and entries[a.target].module not in filled:
            reason = "no checkpoint key matches (nor any other tensor of its module)"
            actions[i] = replace(a, kind=ActionKind.MISSING, reason=reason)


def _stored_skips(rules: Rules, entries: Mapping[str, ModelEntry]) -> tuple[str, ...]:
    """The skip patterns that match no model key: they apply to the checkpoint's names (see :class:`SkipUse`)."""
    return tuple(p for p in rules.skip if not any(matches_any(name, (p,)) for name in entries))


def _skip_uses(rules: Rules, actions: Sequence[Action], stored: Sequence[str]) -> tuple[SkipUse, ...]:
    """How many keys each skip pattern skipped (each skipped key names the first pattern that matched it)."""
    if not rules.skip:
        return ()
    labels = {f"skip={quote(p)}": p for p in rules.skip}
    counts: Counter[str] = Counter()
    for a in actions:
        if a.kind == "skip":
            label = next((t for t in labels if a.reason == t or a.reason.startswith(t + "; ")), None)
            if label is not None:
                counts[labels[label]] += 1
    return tuple(
        SkipUse(p, counts[p], "none" if not counts[p] else "checkpoint" if p in stored else "model") for p in rules.skip
    )


#: Kinds whose model key gets no tensor from the checkpoint (``default`` keys are filled as torch fills them).
_UNFILLED = ("skip", "missing", "mismatch")


def _meta_fate(
    actions: Sequence[Action], spec: ModelSpec, rules: Rules
) -> tuple[tuple[str, ...], tuple[ModuleInit, ...]]:
    """Which model tensors stay on the meta device after the load, and (``init_missing=True``) which modules
    initialise theirs: every module owning such a key, with its init method or None."""
    if not spec.on_meta:
        return (), ()
    entries = spec.entries
    unfilled = [
        a.target
        for a in actions
        if a.kind in _UNFILLED and a.target is not None and a.target in entries and entries[a.target].meta
    ]
    unsaved = [e.name for e in spec.unsaved_meta]
    if not unfilled:
        return tuple(unsaved), ()
    by_module: dict[str, list[str]] = {}
    for name in unfilled:
        by_module.setdefault(entries[name].module, []).append(name)
    initialise = tuple(
        ModuleInit(module, spec.init_methods.get(module), tuple(names)) for module, names in by_module.items()
    )
    if not rules.init_missing:
        return (*unfilled, *unsaved), initialise
    left = [name for init in initialise if init.method is None for name in init.tensors]
    return (*left, *unsaved), initialise


def _unsourced(entry: ModelEntry, rules: Rules) -> Action:
    common: dict[str, Any] = {"target": entry.name, "dst_shape": entry.shape, "dst_dtype": entry.dtype}
    pattern = matches_any(entry.name, rules.skip)
    if pattern is not None:
        return Action(ActionKind.SKIP, reason=f"skip={quote(pattern)}; kept as initialised", **common)
    if _is_batch_counter(entry.name):
        kept = (
            "set to 0, as torch sets it (the model's is on the meta device)"
            if entry.meta
            else "kept at its current value"
        )
        return Action(ActionKind.DEFAULT, reason=f"absent from checkpoints saved before torch 0.4.1; {kept}", **common)
    return Action(ActionKind.MISSING, reason="no checkpoint key matches", **common)


def _describe_container(fit: _Fit, runner: tuple[tuple[str, ...], int, int] | None, rules: Rules) -> ContainerChoice:
    label = ".".join(fit.path) or "<root>"
    if rules.container != "auto":
        reason = f"{quote(label)} as requested (container={quote(rules.container)})"
    else:
        reason = f"{quote(label)} matches {fit.names} of its {len(fit.keys)} keys ({fit.exact} with equal shapes)"
        if fit.ema:
            reason += "; an EMA copy, taken because it fits strictly better"
        if runner is not None:
            reason += (
                f"; runner-up {quote('.'.join(runner[0]) or '<root>')} matches {runner[1]} "
                f"({runner[2]} with equal shapes)"
            )
    return ContainerChoice(
        path=fit.path,
        reason=reason,
        matched=fit.names,
        runner_up=runner[0] if runner else None,
        runner_up_matched=runner[1] if runner else 0,
    )


def _applied(fit: _Fit, rules: Rules, extra: list[str], skips: Sequence[SkipUse]) -> list[str]:
    out = [use.describe() for use in fit.uses]
    if fit.prefix.strip or fit.prefix.add:
        out.append(fit.prefix.evidence)
    out.extend(extra)
    out.extend(use.describe() for use in skips if use.names != "model")
    return out


# --------------------------------------------------------------------------------------------------------------
# Suggested renames: missing and unexpected keys that pair up one to one
# --------------------------------------------------------------------------------------------------------------


def _module_groups(names: Iterable[tuple[str, tuple[int, ...]]]) -> dict[tuple[Any, ...], dict[tuple[str, ...], str]]:
    """Names grouped by module: ``(template, leaves and shapes) -> {layer indices: module}``, where the template
    is the module path with its numeric parts as ``{}`` (``blocks.{}.mlp``). Root-level names are left out."""
    modules: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, shape in names:
        module, _, leaf = name.rpartition(".")
        if module:
            modules.setdefault(module, {})[leaf] = shape
    out: dict[tuple[Any, ...], dict[tuple[str, ...], str]] = {}
    for module, leaves in modules.items():
        parts = module.split(".")
        template = tuple("{}" if p.isdigit() else p for p in parts)
        indices = tuple(p for p in parts if p.isdigit())
        out.setdefault((template, frozenset(leaves.items())), {})[indices] = module
    return out


def _paired_renames(plan: Plan, final: Mapping[str, str]) -> list[tuple[str, str]]:
    """Renames (in the names after prefix handling) that turn unexpected checkpoint modules into missing model
    modules, where they pair up one to one: the same leaves (``weight``, ``bias``) with the same shapes, and the
    same layer indices. A group that could pair with more than one other is ambiguous: no rename for it."""
    missing = [(a.target, a.dst_shape) for a in plan.by_kind("missing") if a.target and a.dst_shape is not None]
    if not missing:
        return []
    unexpected = [
        (final[a.key], a.src_shape)
        for a in plan.by_kind("unexpected")
        if a.key is not None and a.key in final and a.src_shape is not None and "#" not in a.key
    ]
    if not unexpected:
        return []
    want = _module_groups(missing)  # type: ignore[arg-type]
    have = _module_groups(unexpected)  # type: ignore[arg-type]
    candidates: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
    backwards: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
    for (w_template, leaves), w_index in want.items():
        for (h_template, h_leaves), h_index in have.items():
            if leaves == h_leaves and w_index.keys() == h_index.keys() and w_template != h_template:
                candidates.setdefault((w_template, leaves), []).append((h_template, h_leaves))
                backwards.setdefault((h_template, h_leaves), []).append((w_template, leaves))
    out: list[tuple[str, str]] = []
    shifted = 0  # pairs whose names differ only by a leading prefix: prefix handling's job, not renames
    for w, found in candidates.items():
        if len(found) != 1 or len(backwards[found[0]]) != 1:
            continue
        h_template = found[0][0]
        w_name, h_name = ".".join(w[0]), ".".join(h_template)
        shifted += w_name.endswith("." + h_name) or h_name.endswith("." + w_name)
        pattern, replacement, group = "^", "", 0
        for part in h_template:
            pattern += r"(\d+)\." if part == "{}" else re.escape(part) + r"\."
        for part in w[0]:
            if part == "{}":
                group += 1
                replacement += f"\\g<{group}>."
            else:
                replacement += part + "."
        out.append((pattern, replacement))
    if shifted == len(out) or len(out) > _MAX_SUGGESTED_RENAMES:
        return []
    return out


#: More module pairs than this are not a rename to suggest (the key spaces differ too much for a short fix).
_MAX_SUGGESTED_RENAMES = 8


def _with_suggestion(plan: Plan, keys: list[SourceKey], spec: ModelSpec, pairs: list[tuple[str, str]]) -> Plan:
    """``plan`` with :attr:`Plan.suggestion` set, when the renames load every key they pair and keep every key that
    loaded loading."""
    rules = plan.rules
    try:
        trial = replace(rules, rename=(*rules.rename, *pairs), compiled_rename=())
        again, _ = _reconcile(keys, keys, spec, trial, plan.source)
    except RuleError:
        return plan
    before = {a.target for a in plan.actions if a.kind in ("load", "tied")}
    after = {a.target for a in again.actions if a.kind in ("load", "tied")}
    gained = after - before
    if not before <= after or not gained:
        return plan
    if any(use.matched == 0 for use in again.renames[len(rules.rename) :]):
        return plan
    return replace(plan, suggestion=again)

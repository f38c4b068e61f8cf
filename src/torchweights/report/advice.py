"""What to do about a plan's problems, decided from the plan alone: :func:`advise` turns a
:class:`~torchweights.plan.reconcile.Plan` into an :class:`Advice`, plain data: the evidence found (:class:`Hint`: the
keys are under another prefix, in another part of the file, pair up under a rename...) and the options that load the
rest (``rename``, ``skip`` patterns, ``on_mismatch``, ``strict``, ``init_missing``), checked against the plan.

Nothing here writes text: :mod:`~torchweights.report.text` words the advice for the report and the
:class:`~torchweights.errors.LoadError` message. The advice is testable on plans, without rendering.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import field
from typing import TYPE_CHECKING, Literal

from ..fold import fold_names
from ..plan.rules import matches_any
from ..structs import structure
from ..text import StrEnum

if TYPE_CHECKING:  # pragma: no cover
    from ..plan.model import Plan

__all__ = [
    "SKIP_PATTERNS",
    "SKIP_SEARCH_LIMIT",
    "Advice",
    "Hint",
    "HintKind",
    "advise",
    "prefix_evidence",
    "skip_patterns",
]

#: Most skip patterns a suggestion lists before it falls back to a broader option.
SKIP_PATTERNS = 8
#: Above this many problem keys, skip patterns are not computed (a broader option is suggested).
SKIP_SEARCH_LIMIT = 5000


class HintKind(StrEnum):
    """What a :class:`Hint` says; members are strings (``HintKind.STRIP_PREFIX == "strip-prefix"``)."""

    #: Missing and unexpected keys pair up one to one: ``pairs`` renames load ``count`` of them.
    RENAME = "rename"
    #: ``count`` missing keys are in the checkpoint as ``name + key``: ``prefix=name`` strips it.
    STRIP_PREFIX = "strip-prefix"
    #: ``count`` missing keys are in the checkpoint without ``name``: ``prefix="+" + name`` adds it.
    ADD_PREFIX = "add-prefix"
    #: ``count`` missing keys are in the file under ``name``, outside the chosen container ``current``:
    #: ``container=option`` loads that part.
    OTHER_CONTAINER = "other-container"
    #: ``name``, another part of the file, also matches ``count`` model keys: ``container=name`` loads it.
    RUNNER_UP = "runner-up"
    #: A container was forced and nothing points elsewhere: ``container="auto"`` picks the best fit.
    AUTO_CONTAINER = "auto-container"
    #: A prefix was forced and no other prefix explains the missing keys: ``prefix="auto"`` infers one.
    AUTO_PREFIX = "auto-prefix"
    #: The checkpoint holds no tensors at all.
    NO_TENSORS = "no-tensors"
    #: ``count`` of the ``total`` model keys have no tensor, and nothing explains why: another model's checkpoint?
    NOT_FOR_MODEL = "not-for-model"
    #: None of the ``count`` tensors matched by name has the model's shape: another configuration?
    ALL_MISMATCHED = "all-mismatched"
    #: The modules ``names`` have no ``reset_parameters()``: ``init_missing`` cannot give their tensors values.
    NO_RESET = "no-reset"
    #: The buffers ``names`` are left on the meta device and not saved by ``state_dict()``: no checkpoint fills them.
    UNSAVED_BUFFERS = "unsaved-buffers"
    #: The adapter ``name`` (not asked for) would load keys; ``names``: what it would do, one line per fit.
    ADAPTER = "adapter"
    #: ``align="auto"`` would pair ``count`` of the ``total`` missing keys by structure (``confidence`` overall).
    ALIGN = "align"


@structure(frozen=True)
class Hint:
    """One piece of evidence about a plan's problems; :attr:`kind` says which, the other fields carry its data.

    Attributes:
        kind: what the hint says (see :class:`HintKind` for the fields each kind uses).
        count: how many keys it is about.
        total: out of how many.
        name: the prefix, container or part of the file it names.
        option: the value of the option it suggests (``container=option``).
        current: what the plan chose instead (the container).
        names: the modules or keys it names.
        pairs: ``(pattern, replacement)`` renames.
        confidence: the alignment's overall confidence (:attr:`HintKind.ALIGN`).
    """

    kind: HintKind
    count: int = 0
    total: int = 0
    name: str = ""
    option: str = ""
    current: str = ""
    names: tuple[str, ...] = ()
    pairs: tuple[tuple[str, str], ...] = ()
    confidence: float = 0.0


@structure
class Advice:
    """What to do about a plan's problems: evidence first (:attr:`hints`), then the options of one call that loads
    the rest. An option left at its default (None, empty, 0) is not advised.

    Attributes:
        hints: the evidence, in the order to tell it.
        rename: the whole ``rename`` to pass (the plan's renames that matched, then the new ones), or None.
        skip: the whole ``skip`` to pass (the patterns that matched, then the new ones); empty: not advised.
        new_skips: the patterns this advice adds to :attr:`skip`.
        on_mismatch: ``"skip"`` when every mismatched key should be kept as initialised, else None.
        mismatched: how many keys :attr:`on_mismatch` keeps.
        strict: ``False`` (load whatever fits) or ``"model"`` (leave unexpected tensors out), or None.
        unexpected: how many tensors ``strict="model"`` leaves out.
        init_missing: how many keys on the meta device ``init_missing=True`` initialises (0: not advised).
        adapt: adapters to pass (``adapt=[...]``): they would load keys that do not fit as stored.
        align: ``"auto"`` when pairing the missing and unexpected keys by structure would load them, else None.
    """

    hints: list[Hint] = field(default_factory=list)
    rename: tuple[tuple[str, str], ...] | None = None
    skip: tuple[str, ...] = ()
    new_skips: tuple[str, ...] = ()
    on_mismatch: Literal["skip"] | None = None
    mismatched: int = 0
    strict: Literal[False, "model"] | None = None
    unexpected: int = 0
    init_missing: int = 0
    adapt: tuple[str, ...] = ()
    align: str | None = None

    @property
    def changes(self) -> bool:
        """Whether the advice includes a call (some option to pass), not only hints."""
        return bool(
            self.rename is not None
            or self.skip
            or self.on_mismatch
            or self.strict is not None
            or self.init_missing
            or self.adapt
            or self.align
        )


def advise(plan: Plan) -> Advice:
    """The advice for a plan: the renames that pair missing and unexpected keys first (they load trained
    weights), or ``align="auto"`` where pairing them by structure loads more; the adapters that would load keys
    that do not fit as stored; then what the plan with them applied still needs (skips, ``init_missing``,
    strictness)."""
    suggestion = plan.suggestion
    gained = 0
    if suggestion is not None:
        gained = sum(1 for a in suggestion.actions if a.kind == "load") - sum(
            1 for a in plan.actions if a.kind == "load"
        )
    aligned = _align_hint(plan, gained)
    if aligned is not None:  # the renames of a suggestion pair fewer keys: align instead
        advice = Advice(hints=[aligned], align="auto")
        _advise_adapters(plan, advice)
        return advice
    if suggestion is None:
        advice = _advise_keys(plan)
        _advise_meta(plan, advice)
        return advice
    inner = advise(suggestion)
    new = suggestion.rules.rename[len(plan.rules.rename) :]
    unused = {(use.pattern, use.replacement) for use in plan.renames if use.matched == 0}
    pairs = [pair for pair in suggestion.rules.rename if pair not in unused]  # not a rename that matched nothing
    hints = [Hint(HintKind.RENAME, count=gained, pairs=tuple(new)), *inner.hints]
    return Advice(
        hints=hints,
        rename=tuple(pairs),
        skip=inner.skip,
        new_skips=inner.new_skips,
        on_mismatch=inner.on_mismatch,
        mismatched=inner.mismatched,
        strict=inner.strict,
        unexpected=inner.unexpected,
        init_missing=inner.init_missing,
        adapt=inner.adapt,
    )


#: ``align="auto"`` is suggested only when it pairs at least this many missing keys with tensors of their shapes.
ALIGN_MIN_KEYS = 4


def _align_hint(plan: Plan, gained: int) -> Hint | None:
    """The ``align="auto"`` hint, when alignment was not asked for and pairing the missing and unexpected keys by
    structure (:func:`~torchweights.plan.align.align`, on the plan's names and shapes) would load more of them than
    ``gained`` (what a suggested rename loads): at least :data:`ALIGN_MIN_KEYS` and half the missing keys, with no
    group that only a guess could pair, and no prefix or other part of the file that explains them."""
    if plan.rules.align is not None:
        return None
    missing = {a.target: a.dst_shape for a in plan.by_kind("missing") if a.target and a.dst_shape is not None}
    unexpected = {a.key or a.source or "": a.src_shape for a in plan.by_kind("unexpected") if a.src_shape is not None}
    if len(missing) < ALIGN_MIN_KEYS or len(unexpected) < ALIGN_MIN_KEYS:
        return None
    if _missing_hints(plan)[1]:  # a prefix or another part of the file explains them: no renaming to guess
        return None
    from ..plan.align import align  # (only for a plan whose keys do not pair by name)

    mapping, alignment = align(unexpected, missing, src_order=list(unexpected), dst_order=list(missing))
    if alignment.ambiguous:
        return None
    fits = sum(1 for key, target in mapping.items() if unexpected[key] == missing[target])
    if fits <= gained or fits < ALIGN_MIN_KEYS or 2 * fits < len(missing):
        return None
    return Hint(HintKind.ALIGN, count=fits, total=len(missing), confidence=alignment.confidence)


def _advise_adapters(plan: Plan, advice: Advice) -> None:
    """The adapters the plan names as able to load keys that do not fit (not asked for): a hint each, and
    ``adapt=[...]``."""
    if not plan.adapter_hints:
        return
    by_name: dict[str, list[str]] = {}
    for name, what in plan.adapter_hints:
        by_name.setdefault(name, []).append(what)
    advice.adapt = tuple(by_name)
    advice.hints += [Hint(HintKind.ADAPTER, name=name, names=tuple(whats)) for name, whats in by_name.items()]


def _adapted_keys(plan: Plan) -> set[str]:
    """The problem keys an adapter hint names (its line starts with the model key: ``conv1.weight: 3 -> 1 ...``)."""
    out = set()
    for action in plan.problems:
        target = action.target
        if target and any(what.startswith((target + ":", target + " ")) for _, what in plan.adapter_hints):
            out.add(target)
    return out


def _advise_meta(plan: Plan, advice: Advice) -> None:
    """Advice for tensors left on the meta device: ``init_missing=True`` where their modules can initialise them;
    what to do where they cannot."""
    meta = plan.left_on_meta
    if not meta:
        return
    keys = {a.target for a in plan.actions if a.target is not None}
    owner = {name: init for init in plan.initialise for name in init.tensors}
    fixable = [n for n in meta if n in owner and owner[n].method]
    stuck = sorted({owner[n].module or "<root>" for n in meta if n in owner and not owner[n].method})
    unsaved = [n for n in meta if n not in keys]
    if fixable and not plan.rules.init_missing:
        advice.init_missing = len(fixable)
    if stuck:
        advice.hints.append(Hint(HintKind.NO_RESET, names=tuple(stuck)))
    if unsaved:
        advice.hints.append(Hint(HintKind.UNSAVED_BUFFERS, names=tuple(unsaved)))


def _advise_keys(plan: Plan) -> Advice:
    advice = Advice()
    _advise_adapters(plan, advice)
    adapted = _adapted_keys(plan)
    problems = [a for a in plan.problems if a.target not in adapted or a.target is None]
    kinds = {a.kind for a in problems}
    if not kinds:
        return advice
    rules = plan.rules
    universe = [a.target for a in plan.actions if a.target is not None]
    mismatched = [a.target or "" for a in problems if a.kind == "mismatch"]
    missing = [a.target or "" for a in problems if a.kind == "missing"]
    if any(" from " in what.split(": ", 1)[0] for _, what in plan.adapter_hints):
        return advice  # a group adapter would take keys of its own choosing: what is left is for the next report
    if missing:
        hints, evidence = _missing_hints(plan)
        advice.hints += hints
        if evidence or 2 * len(missing) > len(universe):
            # The keys are elsewhere, or most are absent: align the key spaces first; skipping would load little.
            if not any(a.source is not None for a in plan.actions):
                advice.hints.append(Hint(HintKind.NO_TENSORS))
            elif not hints:
                advice.hints.append(Hint(HintKind.NOT_FOR_MODEL, count=len(missing), total=len(universe)))
            return advice
    paired = sum(1 for a in plan.actions if a.source is not None and a.target is not None)
    if mismatched and len(mismatched) == paired:
        advice.hints.append(Hint(HintKind.ALL_MISMATCHED, count=paired))
        return advice
    mismatch_skip = skip_patterns(mismatched, universe) if mismatched else []
    missing_skip = skip_patterns(missing, universe) if missing else []
    if missing_skip is None or len(missing_skip or ()) > SKIP_PATTERNS:
        advice.strict = False  # load whatever fits, keep every other model key as initialised
        return advice
    new: list[str] = []
    if mismatch_skip is None or len(mismatch_skip) > SKIP_PATTERNS:
        advice.on_mismatch = "skip"
        advice.mismatched = len(mismatched)
    else:
        new += mismatch_skip
    new += [p for p in missing_skip if p not in new]
    if new:
        kept = [use.pattern for use in plan.skips if use.matched] if plan.skips else list(rules.skip)
        advice.skip = (*kept, *(p for p in new if p not in kept))
        advice.new_skips = tuple(new)
    if "unexpected" in kinds:
        advice.strict = "model"
        advice.unexpected = sum(1 for a in problems if a.kind == "unexpected")
    return advice


def _missing_hints(plan: Plan) -> tuple[list[Hint], bool]:
    """Why model keys may be missing, from evidence in the plan: the keys exist under another prefix or in
    another part of the file, or a container/prefix was forced. The flag says whether the checkpoint itself shows
    where the missing keys are (most of them)."""
    rules = plan.rules
    missing = [a.target for a in plan.by_kind("missing") if a.target]
    hints: list[Hint] = []
    unexpected = [a.key or a.source or "" for a in plan.by_kind("unexpected")]
    strip, add = prefix_evidence(missing, unexpected)
    if strip is not None:
        hints.append(Hint(HintKind.STRIP_PREFIX, count=strip[1], name=strip[0]))
    elif add is not None:
        hints.append(Hint(HintKind.ADD_PREFIX, count=add[1], name=add[0]))
    ignored = [a.source or "" for a in plan.by_kind("ignored")]
    elsewhere, _ = prefix_evidence(missing, ignored)
    if elsewhere is not None:
        outer, n = elsewhere
        hints.append(
            Hint(
                HintKind.OTHER_CONTAINER,
                count=n,
                name=outer.rstrip("."),
                option=outer.split(".", 1)[0],
                current=plan.container.name or "<root>",
            )
        )
    elif plan.container.runner_up is not None and plan.container.runner_up_matched:
        runner = ".".join(plan.container.runner_up) or "<root>"
        hints.append(Hint(HintKind.RUNNER_UP, count=plan.container.runner_up_matched, name=runner))
    if not hints and rules.container != "auto":
        hints.append(Hint(HintKind.AUTO_CONTAINER))
    if strip is None and add is None and rules.prefix != "auto":
        hints.append(Hint(HintKind.AUTO_PREFIX))
    return hints, strip is not None or add is not None or elsewhere is not None


def prefix_evidence(
    missing: Sequence[str], others: Sequence[str]
) -> tuple[tuple[str, int] | None, tuple[str, int] | None]:
    """The prefix that, stripped from ``others`` (or added to them), explains most missing keys, with the count;
    only when it explains at least half of them."""
    if not missing or not others:
        return None, None
    suffixes: dict[str, set[str]] = {}
    for key in others:
        parts = key.split(".")
        for i in range(1, len(parts)):
            suffixes.setdefault(".".join(parts[i:]), set()).add(".".join(parts[:i]) + ".")
    strip: Counter[str] = Counter()
    for name in missing:
        for prefix in suffixes.get(name, ()):
            strip[prefix] += 1
    others_set = set(others)
    add: Counter[str] = Counter()
    for name in missing:
        parts = name.split(".")
        for i in range(1, len(parts)):
            if ".".join(parts[i:]) in others_set:
                add[".".join(parts[:i]) + "."] += 1
    need = max(1, (len(missing) + 1) // 2)
    best_strip = strip.most_common(1)[0] if strip else None
    best_add = add.most_common(1)[0] if add else None
    return (
        best_strip if best_strip and best_strip[1] >= need else None,
        best_add if best_add and best_add[1] >= need else None,
    )


# --------------------------------------------------------------------------------------------------- skip patterns


def _glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


class _Cover:
    """Which model keys a skip pattern would catch, with a prefix index for the common ``module.*`` case."""

    def __init__(self, universe: Sequence[str]) -> None:
        self.universe = list(universe)
        self.below: dict[str, set[str]] = {}
        for name in self.universe:
            parts = name.split(".")
            for i in range(1, len(parts)):
                self.below.setdefault(".".join(parts[:i]), set()).add(name)

    def __call__(self, pattern: str) -> frozenset[str]:
        plain = pattern[:-2] if pattern.endswith(".*") else pattern
        if not any(c in plain for c in "*?["):
            found = set(self.below.get(plain, ()))
            if plain == pattern and plain in self.universe:
                found.add(plain)
            return frozenset(found)
        return frozenset(n for n in self.universe if matches_any(n, [pattern]) is not None)


def skip_patterns(names: Sequence[str], universe: Sequence[str]) -> list[str] | None:
    """The fewest skip globs that catch every key of ``names`` and, beyond them, only other keys of the same
    modules (``head.*`` for a mismatched ``head.weight``: the head is kept as initialised as a whole).

    Whole subtrees collapse upwards (``decoder.*``) and per-layer patterns fold into one glob
    (``blocks.*.ls1.*``) when that catches exactly the same keys. None when there are too many keys to search.
    """
    if len(names) > SKIP_SEARCH_LIMIT:
        return None
    cover = _Cover(universe)
    wanted = set(names)
    by_module: dict[str, list[str]] = {}
    for name in names:
        by_module.setdefault(name.rpartition(".")[0], []).append(name)
    units: dict[str, frozenset[str]] = {}  # pattern -> keys it catches
    bases: dict[str, str] = {}  # pattern -> the dotted name it stands for
    for module, members in by_module.items():
        if module:
            pattern = _glob_escape(module) + ".*"
            caught = cover(pattern)
            if all(n in wanted or n.rpartition(".")[0] == module for n in caught):
                units[pattern], bases[pattern] = caught, module
                continue
        for name in members:
            pattern = _glob_escape(name)
            units[pattern], bases[pattern] = cover(pattern) | {name}, name
    allowed = frozenset().union(*units.values())
    # Collapse upwards: the shortest ancestor whose whole subtree is already caught.
    collapsed: dict[str, frozenset[str]] = {}
    for pattern, caught in units.items():
        parts = bases[pattern].split(".")
        chosen, chosen_caught = pattern, caught
        for i in range(1, len(parts)):
            candidate = _glob_escape(".".join(parts[:i])) + ".*"
            got = cover(candidate)
            if got and got <= allowed:
                chosen, chosen_caught = candidate, got
                break
        collapsed.setdefault(chosen, chosen_caught)
    # Fold per-layer patterns into one glob when it catches exactly the same keys.
    out: list[str] = []
    for folded, members in fold_names(collapsed):
        if len(members) > 1:
            glob = ".".join("*" if part.startswith("{") else part for part in _components(folded))
            union = frozenset().union(*(collapsed[m] for m in members))
            if glob.count("*") <= 3 and cover(glob) == union:
                out.append(glob)
                continue
        out.extend(members)
    if not wanted <= frozenset().union(*(cover(p) for p in out)):  # pragma: no cover - a safety net
        return [_glob_escape(n) for n in names]
    return out


def _components(pattern: str) -> list[str]:
    """The dotted components of a folded pattern (dots inside ``{0..11}`` do not split)."""
    return re.split(r"\.(?![^{}]*\})", pattern)

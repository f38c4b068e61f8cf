"""The plan as frozen data: what :func:`~torchweights.plan.reconcile.reconcile` decided, key by key.

:class:`Plan` holds one :class:`Action` per model key and per checkpoint key (its :class:`ActionKind` says what
happens to it), with the :class:`ContainerChoice` and :class:`PrefixChoice` that were made, what each of the user's
renames and skips did (:class:`RenameUse`, :class:`SkipUse`) and how ``init_missing=True`` fills meta tensors
(:class:`ModuleInit`). No logic beyond the properties that read the data; :mod:`torchweights.apply` executes a
plan, :mod:`torchweights.report` renders one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import field
from typing import Any

from ..adapt.base import Step
from ..structs import structure
from ..text import StrEnum, plural, quote
from .rules import Rules

__all__ = [
    "KINDS",
    "Action",
    "AlignedPair",
    "Alignment",
    "AmbiguousGroup",
    "ActionKind",
    "ContainerChoice",
    "ModuleInit",
    "Plan",
    "PrefixChoice",
    "RenameUse",
    "SkipUse",
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


@structure(frozen=True)
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
        adapt: for a key loaded through an adapter (``adapt=[...]``), the planned
            :class:`~torchweights.adapt.base.Step`: which adapter, from which checkpoint records (``source`` is the
            first of them).
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
    adapt: Step | None = None

    def __post_init__(self) -> None:
        if type(self.kind) is not ActionKind:
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
        if self.adapt is not None:
            out["adapt"] = {
                "adapter": self.adapt.adapter,
                "sources": list(self.adapt.sources),
                "detail": self.adapt.detail,
            }
        return out


@structure(frozen=True)
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


@structure(frozen=True)
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


@structure(frozen=True)
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


@structure(frozen=True)
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


@structure(frozen=True)
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


@structure(frozen=True)
class AlignedPair:
    """A checkpoint module (or tensor) paired with a model module (or tensor) by ``align="auto"``.

    Attributes:
        source: the checkpoint's module path (after prefix handling), or the tensor's name when ``tensor``.
        target: the model's module path, or tensor name.
        keys: how many tensors the pair maps.
        confidence: 0..1: how strongly the structure ties the two (see README, "Across refactors").
        evidence: what tied them, in words (``"the only modules of their shapes; layer indices"``).
        tensor: a tensor paired on its own (``cls_token``) rather than a module's ``weight``/``bias``...
    """

    source: str
    target: str
    keys: int
    confidence: float
    evidence: str
    tensor: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "source": self.source,
            "target": self.target,
            "keys": self.keys,
            "confidence": self.confidence,
            "evidence": self.evidence,
        }


@structure(frozen=True)
class AmbiguousGroup:
    """Checkpoint and model modules of identical shapes that nothing but declaration order could pair.

    Attributes:
        sources / targets: the module paths on each side, each in its side's order.
        reason: why they cannot be told apart.
        rename: the ``rename`` pairs that would settle them if declaration order is right (to check, then pass).
    """

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    reason: str
    rename: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "sources": list(self.sources),
            "targets": list(self.targets),
            "reason": self.reason,
            "rename": dict(self.rename),
        }


@structure(frozen=True)
class Alignment:
    """What ``align="auto"`` did (:mod:`torchweights.plan.align`).

    Attributes:
        pairs: every aligned module pair.
        ambiguous: groups that could not be paired without guessing; a plan with any is not ``ok``.
        confidence: the tensor-weighted mean of the pairs' confidences (0 when nothing was aligned).
        considered: (checkpoint, model) tensors left unmatched before alignment.
        aligned: tensors paired by alignment.
        undecided: model tensors in the ambiguous groups.
        unequal: ``(checkpoint modules, model modules)`` of the same shapes left unpaired because their numbers
            differ (a block added or removed): which of them correspond cannot be told.
        seconds: time spent aligning.
        note: why nothing was aligned, when alignment was refused.
    """

    pairs: tuple[AlignedPair, ...] = ()
    ambiguous: tuple[AmbiguousGroup, ...] = ()
    confidence: float = 0.0
    considered: tuple[int, int] = (0, 0)
    aligned: int = 0
    undecided: int = 0
    unequal: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = ()
    seconds: float = 0.0
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "pairs": [p.to_dict() for p in self.pairs],
            "ambiguous": [g.to_dict() for g in self.ambiguous],
            "confidence": self.confidence,
            "considered": {"checkpoint": self.considered[0], "model": self.considered[1]},
            "aligned": self.aligned,
            "undecided": self.undecided,
            "unequal": [{"sources": list(a), "targets": list(b)} for a, b in self.unequal],
            "seconds": round(self.seconds, 4),
            "note": self.note,
        }


@structure(frozen=True)
class Plan:
    """Everything :func:`~torchweights.plan.reconcile.reconcile` decided, as frozen data.

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
        alignment: what ``align="auto"`` did (None when it was not asked for).
        adapter_hints: ``(adapter, what it would do)`` for adapters that would make a mismatched or missing key
            load but were not asked for (``adapt=[...]``); the error's fix names them.
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
    alignment: Alignment | None = None
    adapter_hints: tuple[tuple[str, str], ...] = ()

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
    def ambiguous(self) -> tuple[AmbiguousGroup, ...]:
        """The alignment's ambiguous groups (a load raises on any, whatever ``strict`` says)."""
        return self.alignment.ambiguous if self.alignment is not None else ()

    @property
    def ok(self) -> bool:
        """True when the plan can be applied under its strictness, leaves nothing on the meta device and aligned
        nothing by guessing."""
        return not self.problems and not self.left_on_meta and not self.ambiguous

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

"""The verdicts: what happens to every key, given the chosen container and the pairs, assembled into a Plan.

A paired key loads (maybe reshaped or cast), is skipped or mismatches (shapes, quantized against plain, the user's
``skip``/``on_mismatch``, modules with their own loading code); tied keys load once through their group's first
key; a model key without a source is missing, skipped or kept at its default (BatchNorm's counter); a module's
extra state is restored; container keys without a target are unexpected or skipped, and keys outside the container
ignored. :func:`assemble` also works out which tensors stay on the meta device, what each skip pattern did, and
describes the container choice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from ..adapt.base import Context, Step
from ..text import format_shape, quote
from .adapters import Hint, context_of, reshape_step
from .container import Fit, RunnerUp
from .match import Matcher, scalar_compatible
from .model import Action, ActionKind, Alignment, ContainerChoice, ModuleInit, Plan, SkipUse
from .prefix import transform
from .rules import Rules, matches_any
from .sources import SourceKey
from .spec import ModelEntry, ModelSpec

__all__ = ["assemble"]


def _in_custom_module(name: str, custom: Sequence[str]) -> bool:
    return bool(custom) and any(m == "" or name == m or name.startswith(m + ".") for m in custom)


def _is_batch_counter(name: str) -> bool:
    return name.rpartition(".")[2] == "num_batches_tracked"


def _load_action(
    target: ModelEntry,
    source: SourceKey,
    key: str,
    via: tuple[str, ...],
    rules: Rules,
    spec: ModelSpec,
    stored_skips: Sequence[str] = (),
    adapting: _Adapting | None = None,
) -> Action:
    """The verdict for a model key that has a source: load (maybe reshaped, adapted or cast), skip, or mismatch.

    ``stored_skips``: the skip patterns that match no model key, matched against the source's names instead.
    ``adapting``: the model's adapter context and the hints gathered so far (shapes that differ)."""
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
        step, hint = (None, None)
        if adapting is not None and not fallback and not scalar_compatible(source.shape, dst_shape):
            step, hint = reshape_step(target.name, source.shape, dst_shape, rules, adapting.context())
            if hint is not None:
                adapting.hints.append(hint)
        if step is not None:
            step = replace(step, sources=(source.record,))
            common["via"] = (*via, f"adapt: {step.adapter}")
            return Action(ActionKind.LOAD, dst_dtype=_stored_dtype(target, source.dtype, rules), adapt=step, **common)
        if scalar_compatible(source.shape, dst_shape):
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
            if hint is not None:
                why += f"; adapt=[{hint[0]!r}] would load it ({hint[1].partition(': ')[2]})"
            return Action(ActionKind.MISMATCH, dst_dtype=target.dtype, reason=why, **common)
    if source.dtype.startswith(("qint", "quint")) != target.dtype.startswith(("qint", "quint")):
        # A quantized tensor and a plain one: no cast turns one into the other (its integers are not its values).
        why = "one is quantized and the other is not; no cast converts them"
        if rules.on_mismatch == "skip":
            return Action(ActionKind.SKIP, dst_dtype=target.dtype, reason=f"{why} (on_mismatch='skip')", **common)
        return Action(ActionKind.MISMATCH, dst_dtype=target.dtype, reason=why, **common)
    dst_dtype = _stored_dtype(target, source.dtype, rules)
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


class _Adapting:
    """The model's context for ``reshape`` adapters (worked out on first use), and the hints naming adapters that
    were not asked for."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.found: Context | None = None
        self.hints: list[Hint] = []

    def context(self) -> Context:
        if self.found is None:
            self.found = context_of(self.spec)
        return self.found


def _adapted_action(target: ModelEntry, step: Step, fit: Fit, rules: Rules) -> Action:
    """The load of a model key that a group adapter fills from several container keys (``step.sources``)."""
    first = fit.keys[step.sources[0]]
    records = tuple(fit.keys[k].record for k in step.sources)
    dst_dtype = _stored_dtype(target, first.dtype, rules)
    return Action(
        ActionKind.LOAD,
        target=target.name,
        source=records[0],
        key=step.sources[0],
        src_shape=first.shape,
        dst_shape=target.shape,
        src_dtype=first.dtype,
        dst_dtype=dst_dtype,
        via=(f"adapt: {step.adapter}",),
        reason=step.detail,
        adapt=replace(step, sources=records),
    )


def _stored_dtype(target: ModelEntry, source_dtype: str, rules: Rules) -> str:
    """The dtype a loaded key is stored in: the model's (``dtype="model"``) or the checkpoint's."""
    return target.dtype if rules.dtype == "model" else source_dtype


def _is_float(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat", "complex")) or dtype in ("half", "double")


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


def assemble(
    source: str,
    spec: ModelSpec,
    rules: Rules,
    fit: Fit,
    runner: RunnerUp | None,
    outside: list[SourceKey],
    matcher: Matcher,
    extras: Mapping[str, Any] | None = None,
    *,
    alignment: Alignment | None = None,
    hints: Sequence[Hint] = (),
) -> Plan:
    """The plan named ``source``: a verdict for every model key, every key of the container ``fit`` (paired by
    ``matcher``), every checkpoint key ``outside`` it, and every extra state (tensors among the container's keys,
    other values in ``extras``, by dotted name); with the runner-up container (``runner``) in the container's
    description."""
    entries = spec.entries
    extra_keys = set(spec.extra_states)
    extra_done: set[str] = set()
    source_of = matcher.source_of
    verdicts: dict[str, Action] = {}
    stored_skips = _stored_skips(rules, entries)
    adapting = _Adapting(spec)
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
            action = _load_action(root_entry, fit.keys[key], key, via, rules, spec, stored_skips, adapting)
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
                if src.shape == entry.shape or scalar_compatible(src.shape, entry.shape):
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
            step = matcher.adapted.get(entry.name)
            if bound is not None:
                key, via = bound
                verdict = _load_action(entry, fit.keys[key], key, via, rules, spec, stored_skips, adapting)
            elif step is not None:
                verdict = _adapted_action(entry, step, fit, rules)
            else:
                verdict = _unsourced(entry, rules)
        actions.append(verdict)
    _counters_of_absent_modules(actions, entries)
    actions.extend(stray)
    target_of = matcher.target_of
    for key, src in fit.keys.items():
        if key in target_of or key in matcher.consumed:
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
        final = transform(key, fit.prefix.strip, fit.prefix.add)
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
        alignment=alignment,
        adapter_hints=tuple(dict.fromkeys((*hints, *adapting.hints))),
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
    """The skip patterns that match no model key: they apply to the checkpoint's names (see
    :class:`~torchweights.plan.model.SkipUse`)."""
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


def _describe_container(fit: Fit, runner: RunnerUp | None, rules: Rules) -> ContainerChoice:
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


def _applied(fit: Fit, rules: Rules, extra: list[str], skips: Sequence[SkipUse]) -> list[str]:
    out = [use.describe() for use in fit.uses]
    if fit.prefix.strip or fit.prefix.add:
        out.append(fit.prefix.evidence)
    out.extend(extra)
    out.extend(use.describe() for use in skips if use.names != "model")
    return out

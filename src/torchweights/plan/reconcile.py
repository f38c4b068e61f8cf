"""Reconciliation: decide, from names, shapes and dtypes alone, what happens to every key. Pure data, no I/O.

:func:`reconcile` takes the checkpoint's records, a :class:`~torchweights.plan.spec.ModelSpec` and the user's
:class:`~torchweights.plan.rules.Rules`, and returns a frozen :class:`~torchweights.plan.model.Plan` in which every
model key and every checkpoint key appears in exactly one :class:`~torchweights.plan.model.Action`. This module
only runs the steps, each in its own module:

1. **container** (:mod:`~torchweights.plan.container`): the dict of tensors inside the file that fits the model
   best (by matched names after renames and prefix handling, then matched shapes; never by size, so an optimizer's
   larger state does not win). On a tie: not training state, then not an EMA copy (EMA copies win only on a
   strictly better fit, or when asked), then the smaller, then the deeper dict. The best disjoint container that
   matches anything is the runner-up;
2. **renames** the user gave, in order, on the container's keys (:mod:`~torchweights.plan.renames`);
3. **prefix** (:mod:`~torchweights.plan.prefix`): the strip/add transform that maximises exact name+shape matches,
   then name matches, without collisions; no change unless strictly better. Candidates: known wrapper prefixes,
   prefixes shared by several keys or by all, and prefix pairs that turn individual keys into model keys;
4. **matching** (:mod:`~torchweights.plan.match`), then built-in legacy renames that turn a leftover mismatch into a
   match;
5. **shapes, skips, dtypes, tied weights, custom loaders** (:mod:`~torchweights.plan.verdicts`): the per-key
   verdicts;
6. **suggestion**: when missing and unexpected keys pair up module by module, the same load with the renames that
   pair them (:attr:`~torchweights.plan.model.Plan.suggestion`), kept only if it loads more, loses nothing, and
   loads at least half the model.

Containers whose keys cannot reach the best match count (an upper bound from the keys' last dotted parts) are
never scored, and prefix transforms are scored with set operations, so 20,000 keys next to 40,000 optimizer
tensors take a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from ..records import Checkpoint
from ..text import quote
from .adapters import Hint, group_fits, module_map
from .container import Fit, best_container
from .match import Matcher
from .model import Alignment, Plan, PrefixChoice, RenameUse
from .prefix import ModelIndex
from .renames import paired_renames
from .rules import RuleError, Rules, matches_any
from .sources import SourceKey, extra_state_values, source_keys
from .spec import ModelSpec
from .verdicts import assemble

__all__ = ["reconcile"]


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
            are walked; values without ``shape`` and ``dtype`` are not tensors), or
            :class:`~torchweights.plan.sources.SourceKey` items.
        spec: the model side.
        rules: the user's options (defaults: strict, auto container, auto prefix).
        source: what to call the checkpoint in messages (defaults to its path).
        suggest: look for renames that pair missing and unexpected keys
            (:attr:`~torchweights.plan.model.Plan.suggestion`).

    Returns:
        A frozen :class:`~torchweights.plan.model.Plan`. It never raises for mismatches; check
        :attr:`~torchweights.plan.model.Plan.ok`.

    Raises:
        RuleError: a rule cannot be followed (unknown container, renames that collide).
    """
    rules = rules or Rules.make()
    keys = source_keys(checkpoint)
    plan, final = _reconcile(keys, checkpoint, spec, rules, source)
    if suggest:
        pairs = paired_renames(plan, final)
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
        empty = Fit((), {}, {}, PrefixChoice(), 0, 0, uses=tuple(RenameUse(p, r, 0, "none") for p, r in rules.rename))
        extras = extra_state_values(checkpoint)
        return assemble(name, spec, rules, empty, None, [], Matcher(empty, spec, rules), extras), {}
    index = ModelIndex(spec)
    fit, runner = best_container(keys, index, rules)
    matcher = Matcher(fit, spec, rules)
    matcher.match()
    if rules.align == "auto":
        matcher, alignment, hints = _aligned(matcher, spec, rules)
    else:
        alignment, hints = None, _groups(matcher, spec, rules, None)
    inside = {k.record for k in fit.keys.values()}
    outside = [k for k in keys if k.record not in inside]
    extras = extra_state_values(checkpoint)
    plan = assemble(name, spec, rules, fit, runner, outside, matcher, extras, alignment=alignment, hints=hints)
    return plan, matcher.final


def _leftovers(matcher: Matcher, spec: ModelSpec, rules: Rules) -> tuple[dict[str, str], list[str]]:
    """``({final name: container key}, [model key])`` of the keys still without a counterpart: not skipped, not a
    module's extra state, not a tied copy (loaded through the first key of its storage)."""
    fit = matcher.fit
    src = {
        matcher.final[key]: key
        for key in fit.keys
        if key not in matcher.target_of
        and key not in matcher.consumed
        and not key.endswith("_extra_state")
        and matches_any(matcher.final[key], rules.skip) is None
        and matches_any(key, rules.skip) is None
    }
    dst = [
        name
        for name, entry in spec.entries.items()
        if name not in matcher.source_of
        and name not in matcher.adapted
        and entry.tied_to is None
        and matches_any(name, rules.skip) is None
    ]
    return src, dst


def _aligned(matcher: Matcher, spec: ModelSpec, rules: Rules) -> tuple[Matcher, Alignment, list[Hint]]:
    """``align="auto"``: align the leftovers, let group adapters join what the alignment's module map places
    (q, k, v under a renamed attention block), align what they left; then the coverage rule over all of it
    (:data:`~torchweights.plan.align.MIN_COVERAGE`: what was paired, adapted or found ambiguous against the
    model's unmatched tensors). Below it nothing of the alignment stays: the matching starts again without it."""
    from .align import covers, refusal_note

    considered = _leftovers(matcher, spec, rules)[1]
    alignment = _align(matcher, spec, rules, loose=False)
    hints = _groups(matcher, spec, rules, alignment)
    # Then what is left: what group adapters took out (q, k, v) may have kept other modules from pairing, and only
    # now may what remains pair with shapes ignored (a fused qkv is the adapter's, not a mismatched q).
    alignment = _align(matcher, spec, rules, after=alignment)
    found = alignment.aligned + alignment.undecided + len(matcher.adapted)
    if not considered or covers(found, len(considered)):
        return matcher, alignment, hints
    fresh = Matcher(matcher.fit, spec, rules)
    fresh.match()
    note = refusal_note(found, len(considered))
    refused = Alignment(considered=alignment.considered, seconds=alignment.seconds, note=note)
    return fresh, refused, _groups(fresh, spec, rules, None)


def _align(
    matcher: Matcher, spec: ModelSpec, rules: Rules, after: Alignment | None = None, *, loose: bool = True
) -> Alignment:
    """Pair the leftover keys by structure (:mod:`~torchweights.plan.align`) and bind the pairs; ``after``: a
    first pass, whose pairs this second one adds to; ``loose``: pair what remains with shapes ignored too."""
    from .align import align, mean_confidence  # (only for align="auto": not on every load's path)

    src, dst = _leftovers(matcher, spec, rules)
    if not src or not dst:
        if after is not None:
            return replace(after, ambiguous=(), undecided=0)  # (nothing left on a side: nothing to guess)
        return Alignment(considered=(len(src), len(dst)), note="nothing left to align" if not dst else "")
    fit = matcher.fit
    shapes = {final: fit.keys[key].shape for final, key in src.items()}
    order = [matcher.final[k] for k in fit.keys if matcher.final[k] in src]
    mapping, alignment = align(
        shapes,
        {n: spec.entries[n].shape for n in dst},
        src_order=order,
        dst_order=list(spec.entries),
        gate=False,  # (the coverage rule is decided once adapters have had their say: _aligned)
        loose=loose,
    )
    for final, target in mapping.items():
        matcher.bind_aligned(src[final], target)
    if after is None:
        return alignment
    pairs = (*after.pairs, *alignment.pairs)
    return replace(
        after,
        pairs=pairs,
        ambiguous=alignment.ambiguous,
        confidence=mean_confidence(pairs),
        aligned=after.aligned + alignment.aligned,
        undecided=alignment.undecided,
        unequal=alignment.unequal,
        seconds=after.seconds + alignment.seconds,
    )


def _groups(matcher: Matcher, spec: ModelSpec, rules: Rules, alignment: Alignment | None) -> list[Hint]:
    """Group adapters (``qkv``) over the keys still left over: bind those asked for; hints for the others."""
    src, dst = _leftovers(matcher, spec, rules)
    if not src or not dst:
        return []
    fit = matcher.fit
    fits, hints = group_fits(
        {n: spec.entries[n].shape for n in dst},
        {final: fit.keys[key].shape for final, key in src.items()},
        module_map(alignment, dst, src),
        rules,
    )
    for found in fits:
        matcher.bind_group(found, src)
    return hints


def _with_suggestion(plan: Plan, keys: list[SourceKey], spec: ModelSpec, pairs: list[tuple[str, str]]) -> Plan:
    """``plan`` with :attr:`~torchweights.plan.model.Plan.suggestion` set, when the renames load every key they pair
    and keep every key that loaded loading."""
    rules = plan.rules
    try:
        trial = replace(rules, rename=(*rules.rename, *pairs), compiled_rename=())
        again, _ = _reconcile(keys, keys, spec, trial, plan.source)
    except RuleError:
        return plan
    before = {a.target for a in plan.actions if a.kind in ("load", "tied")}
    after = {a.target for a in again.actions if a.kind in ("load", "tied")}
    gained = after - before
    if not before <= after or not gained or 2 * len(after) < len(spec.entries):
        return plan  # (a few modules that happen to pair up between unrelated models are no rename to suggest)
    if any(use.matched == 0 for use in again.renames[len(rules.rename) :]):
        return plan
    return replace(plan, suggestion=again)

"""The planner's side of adapters (:mod:`torchweights.adapt`): which pairs a ``reshape`` adapter loads, which
missing and unexpected keys a ``group`` adapter joins, and the hints that name an adapter the user did not ask for
but that would make the load fit. Pure data, no torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from ..adapt.base import Context, GroupFit, Step
from .model import Alignment
from .rules import Rules
from .spec import ModelSpec

__all__ = ["Hint", "context_of", "group_fits", "module_map", "reshape_step"]

#: ``(adapter name, what it would do)``.
Hint = tuple[str, str]


def context_of(spec: ModelSpec) -> Context:
    """What ``reshape`` adapters may ask about the model: its first kernel (the input convolution's weight)."""
    first = next((e.name for e in spec.entries.values() if e.kind == "parameter" and len(e.shape) >= 3), None)
    return Context(first_kernel=first, keys=frozenset(spec.entries))


def reshape_step(
    target: str, src_shape: tuple[int, ...], dst_shape: tuple[int, ...], rules: Rules, context: Context
) -> tuple[Step | None, Hint | None]:
    """The step of the first asked-for ``reshape`` adapter that loads a ``src_shape`` tensor into model key
    ``target``; else, the hint naming an adapter that would (None, None when none would)."""
    from ..adapt.registry import ADAPTERS  # (only for keys whose shapes differ)

    hint: Hint | None = None
    for name, adapter in ADAPTERS.items():
        if adapter.fit is None:
            continue
        step = adapter.fit(target, src_shape, dst_shape, context)
        if step is None:
            continue
        if name in rules.adapt:
            return step, None
        if hint is None:
            hint = (name, f"{target}: {step.detail}")
    return None, hint


def module_map(
    alignment: Alignment | None, missing: Iterable[str] = (), unexpected: Iterable[str] = ()
) -> dict[str, str]:
    """Checkpoint module paths -> model module paths, from an alignment's pairs and the parents they agree on
    (``h.0.attn.c_proj`` -> ``layers.0.attn.out`` maps ``h.0.attn`` -> ``layers.0.attn``); then, for the modules
    above ``unexpected`` keys that are still unmapped, the one candidate :func:`_guess_holders` finds (``h.0.attn``,
    above an unexpected ``c_attn``, -> ``layers.0.self_attention``, above missing ``q``/``k``/``v``). Group
    adapters check names and shapes before using any of it."""
    if alignment is None:
        return {}
    out: dict[str, str] = {}
    parents: dict[str, set[str]] = {}
    for pair in alignment.pairs:
        source, target = pair.source, pair.target
        if not pair.tensor:
            out[source] = target
        source, target = source.rpartition(".")[0], target.rpartition(".")[0]
        while source and target:
            parents.setdefault(source, set()).add(target)
            source, target = source.rpartition(".")[0], target.rpartition(".")[0]
    for source, targets in parents.items():
        if len(targets) == 1 and source not in out:
            out[source] = next(iter(targets))
    _guess_holders(out, list(missing), unexpected)
    return out


def _guess_holders(out: dict[str, str], missing: Sequence[str], unexpected: Iterable[str]) -> None:
    """Map the unmapped module holding each unexpected key's module (``h.0.attn`` for ``h.0.attn.c_attn.weight``;
    ``P`` itself for ``P.in_proj_weight``) when one model module alone can be its counterpart: below the
    counterpart of its nearest mapped ancestor, at its depth or deeper (``encoder.layer.0.attention.attention``),
    holding :data:`HOLDER_CHILDREN` or more modules with missing keys, and not yet a target (in place)."""
    taken = set(out.values())
    holders: dict[str, set[str]] = {}
    for name in missing:
        module = name.rpartition(".")[0]
        holder, _, child = module.rpartition(".")
        holders.setdefault(holder, set()).add(child)
    full = [h for h, children in holders.items() if len(children) >= HOLDER_CHILDREN and h not in taken]
    for key in unexpected:
        parts = key.split(".")
        above = parts[:-1] if parts[-1].startswith("in_proj_") else parts[:-2]
        module = ".".join(above)
        if not above or module in out:
            continue
        cut = next((c for c in range(len(above) - 1, 0, -1) if ".".join(above[:c]) in out), 0)
        if not cut:
            continue  # nothing above it is placed: no counterpart to look under
        base = out[".".join(above[:cut])]
        depth = base.count(".") + 1 + len(above) - cut
        candidates = [h for h in full if h.startswith(base + ".") and h.count(".") + 1 >= depth]
        if len(candidates) == 1:
            out[module] = candidates[0]
            full.remove(candidates[0])


#: A module holding this many modules with missing keys (q, k, v) can be the counterpart of an unplaced one.
HOLDER_CHILDREN = 3


def group_fits(
    missing: Mapping[str, tuple[int, ...]],
    unexpected: Mapping[str, tuple[int, ...]],
    modules: Mapping[str, str],
    rules: Rules,
) -> tuple[list[GroupFit], list[Hint]]:
    """The ``group`` adapters' fits over the keys left over: those of asked-for adapters (no key in two of them),
    and hints for the others."""
    from ..adapt.registry import ADAPTERS

    fits: list[GroupFit] = []
    hints: list[Hint] = []
    taken: set[str] = set()
    for name, adapter in ADAPTERS.items():
        if adapter.fit_groups is None:
            continue
        found = adapter.fit_groups(missing, unexpected, modules)
        for fit in found:
            keys = {*fit.steps, *fit.consumed}
            if name not in rules.adapt:
                hints.append((name, _describe(fit)))
            elif not keys & taken:
                taken |= keys
                fits.append(fit)
    return fits, hints


def _describe(fit: GroupFit) -> str:
    """``q.weight, k.weight, v.weight from qkv.weight: <detail>``: every key the group fills (the report counts
    them from this text: one per comma-separated name before ``from``)."""
    steps: Sequence[tuple[str, Step]] = list(fit.steps.items())
    detail = steps[0][1].detail
    return f"{', '.join(t for t, _ in steps)} from {', '.join(fit.consumed)}: {detail}"

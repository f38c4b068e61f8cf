"""Renames: the user's, applied to a container's keys in order (with the error when two keys end up under one
name), the ones a plan suggests when its missing and unexpected keys pair up one module to one
(:attr:`~torchweights.plan.model.Plan.suggestion`), and module pairs (an alignment's) written as renames to keep in
code (:func:`rename_mapping`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..text import quote, shorten_list
from .model import Alignment, Plan
from .rules import RuleError

__all__ = ["apply_rename", "module_renames", "paired_renames", "rename_clash", "rename_mapping"]


def apply_rename(names: dict[str, str], pattern: re.Pattern[str], replacement: str) -> int:
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


def rename_clash(out: dict[str, str]) -> RuleError | None:
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


def paired_renames(plan: Plan, final: Mapping[str, str]) -> list[tuple[str, str]]:
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


def _template(path: str) -> tuple[str, ...]:
    return tuple("{}" if part.isdigit() else part for part in path.split(".")) if path else ()


def _numbers(path: str) -> list[str]:
    return [part for part in path.split(".") if part.isdigit()]


def _one(source: str, target: str, tensor: bool) -> tuple[str, str, tuple[str, ...]]:
    """The rename of one module (its tensors keep their leaf names) or one tensor, and a name it produces."""
    if tensor:
        return "^" + re.escape(source) + "$", target, (target,)
    if not source:
        return "^", target + ".", (target + ".weight",)
    return "^" + re.escape(source) + r"\.", (target + "." if target else ""), (f"{target}.weight".lstrip("."),)


def _family(members: list[tuple[str, str, bool]]) -> tuple[str, str, tuple[str, ...]] | None:
    """One regex for modules that differ only by their layer indices, the same on both sides (``h.{i}.attn`` ->
    ``layers.{i}.attn``), when their indices form a full grid (the regex matches no other index); else None."""
    source, target, tensor = members[0]
    if len(members) < 2 or not _numbers(source) or any(_numbers(s) != _numbers(t) for s, t, _ in members):
        return None
    width = len(_numbers(source))
    values = [sorted({_numbers(s)[i] for s, _, _ in members}, key=int) for i in range(width)]
    if math.prod(len(v) for v in values) != len(members):
        return None
    pattern, position = "^", 0
    for part in _template(source):
        if part == "{}":
            pattern += "(" + "|".join(values[position]) + r")\."
            position += 1
        else:
            pattern += re.escape(part) + r"\."
    replacement, group = "", 0
    for part in _template(target):
        if part == "{}":
            group += 1
            replacement += f"\\g<{group}>."
        else:
            replacement += part + "."
    if tensor:
        pattern, replacement = pattern[: -len(r"\.")] + "$", replacement[:-1]
    produced = tuple(t if tensor else t + ".weight" for _, t, _ in members)
    return pattern, replacement, produced


def module_renames(pairs: Sequence[tuple[str, str, bool]]) -> list[tuple[str, str, tuple[str, ...]]]:
    r"""``(source module, target module, is a single tensor)`` pairs as anchored renames ``(pattern, replacement,
    names it produces)``: one regex per family that differs only by layer indices kept as they are
    (``^h\.(0|1|2)\.attn\.`` -> ``layers.\g<1>.attn.``), one per module otherwise (``layer1.0`` ->
    ``stages.0.blocks.0`` renumbers)."""
    groups: dict[tuple[Any, ...], list[tuple[str, str, bool]]] = {}
    for source, target, tensor in pairs:
        groups.setdefault((_template(source), _template(target), tensor), []).append((source, target, tensor))
    out = []
    for members in groups.values():
        family = _family(members)
        out.extend([family] if family is not None else [_one(*m) for m in members])
    return out


def rename_mapping(alignment: Alignment) -> dict[str, str]:
    """An alignment's pairs as a ``rename`` mapping to keep in code (anchored regexes: one per family of layers
    where indices are kept, one per module otherwise), ordered so that no rename's output is renamed again by a
    later one. Empty when no such order exists (a swap)."""
    items = module_renames([(p.source, p.target, p.tensor) for p in alignment.pairs if p.source != p.target])
    # A rename can run after every other one when none of theirs matches what it produces: pick those from the end.
    remaining = list(items)
    last_first: list[tuple[str, str]] = []
    while remaining:
        ready = [
            item
            for item in remaining
            if not any(other is not item and any(re.match(other[0], name) for name in item[2]) for other in remaining)
        ]
        if not ready:
            return {}
        for item in ready:
            last_first.append((item[0], item[1]))
            remaining.remove(item)
    return dict(reversed(last_first))

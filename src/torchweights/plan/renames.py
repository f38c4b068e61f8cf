"""Renames: the user's, applied to a container's keys in order (with the error when two keys end up under one
name), and the ones a plan suggests when its missing and unexpected keys pair up one module to one
(:attr:`~torchweights.plan.model.Plan.suggestion`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from ..text import quote, shorten_list
from .model import Plan
from .rules import RuleError

__all__ = ["apply_rename", "paired_renames", "rename_clash"]


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

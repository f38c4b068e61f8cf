"""The checkpoint side as the planner sees it: its tensors as :class:`SourceKey` (name, path, shape, dtype), from
a :class:`~torchweights.records.Checkpoint`, a plain (nested) dict of tensors or ``SourceKey`` items, and the
modules' extra state saved as values that are not tensors.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ..records import Checkpoint
from ..structs import structure
from .spec import EXTRA_STATE

__all__ = ["SourceKey", "extra_state_values", "mapping_tensors", "source_keys"]


@structure(frozen=True)
class SourceKey:
    """One tensor of the checkpoint as the planner sees it."""

    record: str
    path: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str


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


def source_keys(checkpoint: Checkpoint | Mapping[str, Any] | Iterable[SourceKey]) -> list[SourceKey]:
    """Every tensor of ``checkpoint`` as a :class:`SourceKey`, in checkpoint order: a checkpoint's records, a plain
    dict's tensors (see :func:`mapping_tensors`), or the given items (a path defaults to the record's name)."""
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

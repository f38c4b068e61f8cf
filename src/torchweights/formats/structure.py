"""The unpickled root of a pickle-based checkpoint, kept for what the flat records cannot say.

A :class:`PickleTree` holds the object tree a checkpoint's pickle built (dicts, lists, tuples, extras, inert stubs,
pickled tensor descriptions) and, for every pickled tensor in it, the :class:`~torchweights.records.TensorRecord`
that reads it: the records the checkpoint lists (by name) and the tensors ``state_dict()`` leaves out (non-persistent
buffers, tensors kept as plain module attributes), which get records of their own here only. From it come the
module tree of a pickled model (:meth:`PickleTree.modules`, nothing imported) and the file's original structure with
tensors in place (``tw.load(path, nested=True)``, built by :mod:`torchweights.nested`).

Nothing is copied: the tree is the one the unpickler made, which the checkpoint's extras already share.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..limits import Limits
from ..records import TensorRecord
from ..unpickle.values import PickledTensor
from .modules import ModuleNode, contents, module_trees

__all__ = ["PickleTree", "keep_tree"]


class PickleTree:
    """The root a checkpoint's pickle built, and a record for every pickled tensor in it.

    Attributes:
        root: the unpickled object (tensors as :class:`~torchweights.unpickle.values.PickledTensor`).
        records: ``id(pickled tensor) -> record`` for every tensor reachable from ``root`` (within
            ``limits.max_depth`` levels).
        limits: the bounds the checkpoint was read with.
    """

    def __init__(self, root: Any, records: dict[int, TensorRecord], limits: Limits) -> None:
        self.root = root
        self.records = records
        self.limits = limits
        self._modules: dict[str, ModuleNode] | None = None

    def modules(self) -> dict[str, ModuleNode]:
        """``{where: module tree}`` of every pickled ``nn.Module`` in the file, outermost first (``""`` for a file
        that is a model, ``"model"`` for ``{"model": model, ...}``); empty for a state dict."""
        if self._modules is None:
            self._modules = module_trees(self.root, self.limits)
        return self._modules


def keep_tree(
    root: Any,
    named: dict[int, str],
    records: dict[str, TensorRecord],
    make_record: Callable[[str, tuple[str, ...], PickledTensor], TensorRecord],
    limits: Limits,
) -> PickleTree:
    """The :class:`PickleTree` of ``root``: each pickled tensor gets the record ``named`` gives it (the checkpoint's
    own), or one ``make_record`` makes (tensors ``state_dict()`` leaves out, named by where they were found).

    Each object is visited once (shared parts and cycles cost nothing more), parts deeper than ``limits.max_depth``
    are not searched, and the walk keeps its own stack.
    """
    found: dict[int, TensorRecord] = {}
    seen: set[int] = set()
    stack: list[tuple[Any, tuple[str, ...]]] = [(root, ())]
    while stack:
        obj, path = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, PickledTensor):
            name = named.get(id(obj))
            found[id(obj)] = records[name] if name is not None else make_record(".".join(path), path, obj)
            continue
        children = contents(obj)
        if children is None or len(path) >= limits.max_depth:
            continue
        stack.extend((value, (*path, key)) for key, value in reversed(list(children)))
    return PickleTree(root, found, limits)

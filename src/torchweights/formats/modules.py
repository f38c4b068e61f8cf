"""The module tree of a pickled ``nn.Module``, read from its inert stubs: nothing imported, no torch needed.

``torch.save(model)`` pickles each module's ``__dict__``: ``_parameters``, ``_buffers``, ``_modules`` and the plain
attributes its constructor set (``in_features``, ``kernel_size``, ``num_layers``, ``eps``...). A
:class:`ModuleNode` describes one module from that state: its class, those attributes, its tensors (shape and dtype)
and its children; :func:`module_trees` finds every module a checkpoint holds. ``str(node)`` prints it the way
``print(model)`` does (:mod:`torchweights.formats.module_repr`).
"""

from __future__ import annotations

import argparse
import collections
import types
from collections.abc import Iterator
from dataclasses import field
from typing import Any

from ..errors import ResourceLimitError
from ..limits import Limits
from ..structs import structure
from ..unpickle.values import PickledTensor, Stub, TorchValue
from .tree import is_module_stub, short_repr

__all__ = ["ModuleNode", "TensorInfo", "contents", "module_trees", "plain_value"]

#: Longest list or tuple kept as a plain attribute value, and longest string.
_PLAIN_ITEMS = 64
_PLAIN_CHARS = 200


def contents(obj: Any) -> Iterator[tuple[str, Any]] | None:
    """Every ``(key, value)`` an unpickled container holds, stub arguments and state included (None for a leaf).

    Wider than the walk that names tensors (:func:`~torchweights.formats.tree.flatten`), which follows only what
    ``state_dict()`` would: this one reaches every object the pickle built.
    """
    if isinstance(obj, dict):
        return ((str(k), v) for k, v in obj.items())
    if isinstance(obj, (list, tuple, collections.deque)):
        return ((str(i), v) for i, v in enumerate(obj))
    if isinstance(obj, (argparse.Namespace, types.SimpleNamespace)):
        return iter(vars(obj).items())
    if isinstance(obj, Stub):
        parts: list[tuple[str, Any]] = [(str(i), v) for i, v in enumerate(obj.args)]
        parts.extend((str(k), v) for k, v in obj.kwargs.items())
        state = obj.attributes
        if state:
            parts.extend((str(k), v) for k, v in state.items())
        elif obj.state is not None:
            parts.append(("state", obj.state))
        parts.extend((str(i), v) for i, v in enumerate(obj.items))
        parts.extend((str(k), v) for k, v in obj.dictitems.items())
        return iter(parts)
    return None


_MISSING = object()


def plain_value(value: Any, depth: int = 0) -> Any:
    """``value`` if it is plain data that defines a layer (None, bool, int, float, str, a torch constant, or a short
    tuple or list of those; a ``torch.Size`` as a tuple), else a sentinel (:data:`_MISSING`)."""
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, int):
        return value if value.bit_length() <= 64 else _MISSING
    if isinstance(value, str):
        return value if len(value) <= _PLAIN_CHARS else _MISSING
    if isinstance(value, TorchValue):
        return value
    if isinstance(value, Stub) and value.cls == "torch.Size" and len(value.args) == 1:
        value = tuple(value.args[0]) if isinstance(value.args[0], (list, tuple)) else _MISSING
    if isinstance(value, (tuple, list)) and depth < 3 and len(value) <= _PLAIN_ITEMS:
        items = [plain_value(v, depth + 1) for v in value]
        return _MISSING if any(v is _MISSING for v in items) else type(value)(items)
    return _MISSING


def _json_value(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_json_value(v) for v in value]
    if isinstance(value, TorchValue):
        return repr(value)
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return repr(value)
    return value


@structure(frozen=True)
class TensorInfo:
    """A parameter, buffer or tensor attribute of a module, as the file describes it (no bytes read)."""

    dtype: str
    shape: tuple[int, ...]
    requires_grad: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {"dtype": self.dtype, "shape": list(self.shape), "requires_grad": self.requires_grad}


def _info(value: Any) -> TensorInfo | None:
    if isinstance(value, PickledTensor):
        return TensorInfo(value.dtype, value.shape, value.requires_grad)
    return None


@structure(eq=False)
class ModuleNode:
    """One pickled ``nn.Module``, from its saved ``__dict__``.

    Attributes:
        cls: ``module.qualname`` of its class (``"torch.nn.modules.linear.Linear"``).
        attributes: the plain public attributes that define the layer (``{"in_features": 3, ...}``), in saved
            order; ``training`` is :attr:`training`.
        training: the saved train/eval flag (None when absent).
        parameters: ``{name: TensorInfo or None}`` (``bias=False`` layers keep ``"bias": None``), as
            ``_parameters``.
        buffers: ``{name: TensorInfo or None}``, as ``_buffers``; :attr:`non_persistent` names those
            ``state_dict()`` leaves out.
        tensors: tensors kept as plain attributes (``self.anchors = torch.tensor(...)``).
        children: ``{name: ModuleNode or None}``, as ``_modules`` (indices for ``Sequential``/``ModuleList``). A
            module reached twice (shared) is the same node; a cycle refers back to a node above.
        other: other public attributes that are not plain data (configs, dicts, stubs, functions), as short
            descriptions.
    """

    cls: str
    attributes: dict[str, Any] = field(default_factory=dict)
    training: bool | None = None
    parameters: dict[str, TensorInfo | None] = field(default_factory=dict)
    buffers: dict[str, TensorInfo | None] = field(default_factory=dict)
    non_persistent: tuple[str, ...] = ()
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    children: dict[str, ModuleNode | None] = field(default_factory=dict)
    other: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The class name alone (``"Linear"``), as ``print(model)`` shows it."""
        return self.cls.rsplit(".", 1)[-1]

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, ModuleNode]]:
        """``(dotted name, node)`` for this module and every one below, each once, as ``model.named_modules()``."""
        seen: set[int] = set()
        stack: list[tuple[str, ModuleNode]] = [(prefix, self)]
        while stack:
            name, node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            yield name, node
            below = [(f"{name}.{k}" if name else k, c) for k, c in node.children.items() if c is not None]
            stack.extend(reversed(below))

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON: a node reached again (shared or in a cycle) is ``{"same_as": "dotted.name"}``."""
        first: dict[int, str] = {}

        def build(node: ModuleNode, where: str, depth: int) -> dict[str, Any]:
            if id(node) in first:
                return {"class": node.cls, "same_as": first[id(node)]}
            first[id(node)] = where
            out: dict[str, Any] = {"class": node.cls}
            if node.training is not None:
                out["training"] = node.training
            out["attributes"] = {k: _json_value(v) for k, v in node.attributes.items()}
            for kind in ("parameters", "buffers", "tensors"):
                table = getattr(node, kind)
                if table:
                    out[kind] = {k: (v.to_dict() if v is not None else None) for k, v in table.items()}
            if node.non_persistent:
                out["non_persistent"] = list(node.non_persistent)
            if node.other:
                out["other"] = dict(node.other)
            out["children"] = {
                k: (build(c, f"{where}.{k}" if where else k, depth + 1) if c is not None else None)
                for k, c in node.children.items()
            }
            return out

        return build(self, "", 0)

    def __str__(self) -> str:
        from .module_repr import render

        return render(self)


class _Builder:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.nodes: dict[int, ModuleNode] = {}

    def node(self, stub: Stub, depth: int) -> ModuleNode:
        made = self.nodes.get(id(stub))
        if made is not None:
            return made
        if depth > self.limits.max_depth:
            raise ResourceLimitError(
                f"the pickled model nests modules more than {self.limits.max_depth} levels deep; no real model "
                "does. If you trust the file, raise the limit: tw.open(path, limits=Limits(max_depth=...)).",
                code="limit-depth",
            )
        node = self.nodes[id(stub)] = ModuleNode(stub.cls)
        attrs = stub.attributes
        training = attrs.get("training")
        node.training = training if isinstance(training, bool) else None
        for table, target in (("_parameters", node.parameters), ("_buffers", node.buffers)):
            saved = attrs.get(table)
            if isinstance(saved, dict):
                for key, value in saved.items():
                    target[str(key)] = _info(value)
        skip = attrs.get("_non_persistent_buffers_set")
        if isinstance(skip, (set, frozenset, list, tuple)):
            node.non_persistent = tuple(sorted(str(name) for name in skip if str(name) in node.buffers))
        for key, value in attrs.items():
            if not isinstance(key, str) or key.startswith("_") or key == "training":
                continue
            plain = plain_value(value)
            if plain is not _MISSING:
                node.attributes[key] = plain
            elif isinstance(value, PickledTensor):
                node.tensors[key] = TensorInfo(value.dtype, value.shape, value.requires_grad)
            else:
                node.other[key] = short_repr(value, 80)
        modules = attrs.get("_modules")
        if isinstance(modules, dict):
            for key, child in modules.items():
                node.children[str(key)] = self.node(child, depth + 1) if is_module_stub(child) else None
        return node


def module_trees(root: Any, limits: Limits) -> dict[str, ModuleNode]:
    """``{where: ModuleNode}`` of every pickled module in ``root`` that is not inside another one, in file order:
    ``""`` when the root is a model, dotted keys (``"model"``, ``"ema.module"``) for models inside containers."""
    builder = _Builder(limits)
    found: dict[str, ModuleNode] = {}
    seen: set[int] = set()
    stack: list[tuple[Any, tuple[str, ...]]] = [(root, ())]
    while stack:
        obj, path = stack.pop()
        if is_module_stub(obj):  # a model saved twice ({"model": m, "ema": m}) is listed twice, as one node
            found.setdefault(".".join(path), builder.node(obj, 0))
            continue
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, PickledTensor) or len(path) >= limits.max_depth:
            continue
        children = contents(obj)
        if children is not None:
            stack.extend((value, (*path, key)) for key, value in reversed(list(children)))
    return found

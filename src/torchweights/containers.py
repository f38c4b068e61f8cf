"""Turn an unpickled object tree into named tensor records and plain-data extras.

Every tensor anywhere in the tree becomes a :class:`~torchweights.records.TensorRecord` with a dotted name
(``state_dict.encoder.weight``, list indices as ``.0``). A pickled ``nn.Module`` (an inert stub) is named the way
``model.state_dict()`` would name it: ``_parameters``, persistent ``_buffers``, then ``_modules`` recursively.
Non-tensor leaves (epoch, hyper-parameters, numpy scalars, ``argparse.Namespace``...) go to ``extras``; containers
that hold no tensor at all are kept whole as one extra.

The walk is depth-limited and budgeted by the number of objects the pickle created, so shared sub-trees
(memo reuse) and cycles cannot make it explode.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import dtypes
from .errors import CorruptCheckpointError, ResourceLimitError
from .limits import Limits
from .records import StorageRef, TensorRecord
from .unpickle import PickledTensor, Stub

__all__ = ["Flattened", "check_view", "flatten", "is_module_stub", "record_maker"]

_MODULE_KEYS = ("_parameters", "_buffers", "_modules")


@dataclass
class Flattened:
    """Records and extras found in one object tree."""

    records: dict[str, TensorRecord] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def is_module_stub(obj: Any) -> bool:
    """True for an inert stub whose state looks like an ``nn.Module`` ``__dict__``."""
    return isinstance(obj, Stub) and any(isinstance(obj.attributes.get(k), dict) for k in _MODULE_KEYS)


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, (int, float, bool)) or key is None:
        return str(key)
    if isinstance(key, tuple):
        return ".".join(_key(k) for k in key)
    return repr(key)


def _module_children(obj: Stub) -> Iterator[tuple[str, Any]]:
    """(name, child) pairs of a module stub, in ``state_dict`` order."""
    attrs = obj.attributes
    params = attrs.get("_parameters")
    if isinstance(params, dict):
        for name, value in params.items():
            if value is not None:
                yield _key(name), value
    buffers = attrs.get("_buffers")
    non_persistent = attrs.get("_non_persistent_buffers_set")
    skip = set(non_persistent) if isinstance(non_persistent, (set, frozenset, list, tuple)) else set()
    if isinstance(buffers, dict):
        for name, value in buffers.items():
            if value is not None and name not in skip:
                yield _key(name), value
    modules = attrs.get("_modules")
    if isinstance(modules, dict):
        for name, value in modules.items():
            if value is not None:
                yield _key(name), value


def _children(obj: Any) -> Iterator[tuple[str, Any]] | None:
    """The named children of a container, or None when ``obj`` is a leaf."""
    if isinstance(obj, dict):
        return ((_key(k), v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return ((str(i), v) for i, v in enumerate(obj))
    if isinstance(obj, argparse.Namespace):
        return iter(vars(obj).items())
    if isinstance(obj, Stub):
        if is_module_stub(obj):
            return _module_children(obj)
        parts: list[tuple[str, Any]] = []
        if obj.attributes:
            parts.extend((_key(k), v) for k, v in obj.attributes.items())
        elif obj.state is not None:
            parts.append(("state", obj.state))
        parts.extend((_key(k), v) for k, v in obj.dictitems.items())
        parts.extend((str(i), v) for i, v in enumerate(obj.items))
        if not parts and obj.args:
            parts.extend((str(i), v) for i, v in enumerate(obj.args))
        return iter(parts)
    return None


class _Walker:
    def __init__(
        self,
        make_record: Callable[[str, tuple[str, ...], PickledTensor], TensorRecord],
        limits: Limits,
        budget: int,
    ) -> None:
        self.make_record = make_record
        self.limits = limits
        self.budget = budget
        self.out = Flattened()
        self._has_tensor: dict[int, bool] = {}
        self._active: set[int] = set()

    def spend(self) -> None:
        self.budget -= 1
        if self.budget < 0:
            raise ResourceLimitError(
                "the checkpoint's object tree reuses shared parts so often that naming its tensors would not end "
                "in reasonable time (a 'billion laughs' pickle). The file is malformed or hostile.",
                code="limit-expansion",
            )

    def has_tensor(self, obj: Any, depth: int = 0) -> bool:
        if isinstance(obj, PickledTensor):
            return True
        if isinstance(obj, Stub) and obj.cls.startswith("torch._utils._rebuild_"):
            return True  # an unsupported tensor kind: walk to it so it is reported
        key = id(obj)
        cached = self._has_tensor.get(key)
        if cached is not None:
            return cached
        children = _children(obj)
        if children is None or key in self._active or depth > self.limits.max_depth:
            return False
        self._active.add(key)
        try:
            result = False
            for _, child in children:
                self.spend()
                if self.has_tensor(child, depth + 1):
                    result = True
                    break
        finally:
            self._active.discard(key)
        self._has_tensor[key] = result
        return result

    def walk(self, obj: Any, path: tuple[str, ...]) -> None:
        self.spend()
        name = ".".join(path)
        if isinstance(obj, PickledTensor):
            self.add_record(name, path, obj)
            return
        if isinstance(obj, Stub) and obj.cls.startswith("torch._utils._rebuild_"):
            kind = obj.cls.rsplit("._rebuild_", 1)[1]
            self.out.warnings.append(f"'{name}' is a {kind.replace('_', ' ')}, which torchweights does not read yet")
            self.out.extras[name] = obj
            return
        if len(path) > self.limits.max_depth:
            raise ResourceLimitError(
                f"'{name[:200]}' is nested more than {self.limits.max_depth} levels deep; no real checkpoint is. "
                "If you trust the file, raise the limit: tw.open(path, limits=Limits(max_depth=...)).",
                code="limit-depth",
            )
        if not self.has_tensor(obj):
            if path:
                self.out.extras[name] = obj
            elif obj is not None:
                self.out.extras[""] = obj
            return
        key = id(obj)
        if key in self._active:
            self.out.warnings.append(f"'{name}' refers back to one of its parents (a cycle); not followed")
            return
        self._active.add(key)
        try:
            for child_name, child in _children(obj) or ():
                self.walk(child, (*path, child_name))
        finally:
            self._active.discard(key)

    def add_record(self, name: str, path: tuple[str, ...], tensor: PickledTensor) -> None:
        if name in self.out.records:
            n = 2
            while f"{name}#{n}" in self.out.records:
                n += 1
            self.out.warnings.append(f"two tensors are both named '{name}'; the second is listed as '{name}#{n}'")
            name = f"{name}#{n}"
        self.out.records[name] = self.make_record(name, path, tensor)


def flatten(
    root: Any,
    make_record: Callable[[str, tuple[str, ...], PickledTensor], TensorRecord],
    *,
    limits: Limits,
    budget: int,
) -> Flattened:
    """Name every tensor in ``root`` and collect the non-tensor leaves.

    Args:
        root: the unpickled object.
        make_record: turns a pickled tensor into a record (the format reader validates its storage there).
        limits: depth bound.
        budget: most objects to visit (a multiple of the pickle's opcode count).
    """
    walker = _Walker(make_record, limits, budget)
    walker.walk(root, ())
    return walker.out


def check_view(name: str, tensor: PickledTensor, storage_nbytes: int, where: str) -> None:
    """Check that a tensor view fits its storage: sizes and strides non-negative, the last element inside.

    Raises:
        CorruptCheckpointError: naming the tensor, its view and the storage size.
    """
    try:
        size = dtypes.itemsize(tensor.dtype)
    except KeyError:
        raise CorruptCheckpointError(
            f"tensor '{name}' in {where} has unknown dtype '{tensor.dtype}'", code="bad-record"
        ) from None
    shape, stride = tensor.shape, tensor.stride
    problem = None
    if len(shape) != len(stride):
        problem = f"has {len(shape)} sizes but {len(stride)} strides"
    elif any(n < 0 for n in shape) or any(s < 0 for s in stride) or tensor.storage_offset < 0:
        problem = (
            f"has a negative size, stride or offset: size {shape}, stride {stride}, offset {tensor.storage_offset}"
        )
    elif len(shape) > 64:
        problem = f"has {len(shape)} dimensions"
    elif 0 not in shape:
        last = tensor.storage_offset + sum((n - 1) * s for n, s in zip(shape, stride))
        if (last + 1) * size > storage_nbytes:
            problem = (
                f"reaches byte {(last + 1) * size} of a {storage_nbytes}-byte storage "
                f"(size {shape}, stride {stride}, offset {tensor.storage_offset}, {tensor.dtype})"
            )
    elif tensor.storage_offset * size > storage_nbytes:
        problem = f"starts at byte {tensor.storage_offset * size} of a {storage_nbytes}-byte storage"
    if problem:
        raise CorruptCheckpointError(
            f"tensor '{name}' in {where} {problem}. The file is corrupt or was crafted; re-download or re-save it.",
            code="bad-record",
        )


def record_maker(
    where: str, resolve: Callable[[PickledTensor], tuple[StorageRef, int]] | None = None
) -> Callable[[str, tuple[str, ...], PickledTensor], TensorRecord]:
    """The usual ``make_record`` for pickle-based formats: validate the view, then describe it.

    Args:
        where: the file (and member) for error messages.
        resolve: maps a pickled tensor to its final storage and an extra element offset, for formats whose byte
            positions are only known after the whole pickle was read (legacy streams).
    """

    def make(name: str, path: tuple[str, ...], tensor: PickledTensor) -> TensorRecord:
        ref: StorageRef | None = None
        offset = tensor.storage_offset
        if tensor.storage is not None:
            ref = tensor.storage.ref
            if resolve is not None:
                ref, extra = resolve(tensor)
                offset += extra
            view = PickledTensor(tensor.storage, tensor.dtype, offset, tensor.shape, tensor.stride)
            check_view(name, view, ref.nbytes, where)
        return TensorRecord(
            name=name,
            path=path,
            dtype=tensor.dtype,
            shape=tensor.shape,
            stride=tensor.stride,
            storage_offset=offset,
            storage=ref,
            requires_grad=tensor.requires_grad,
            is_parameter=tensor.is_parameter,
        )

    return make

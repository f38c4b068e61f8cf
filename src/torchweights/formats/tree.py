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
import collections
import math
import types
from collections.abc import Callable, Iterator
from dataclasses import field, replace
from typing import Any

from .. import dtypes
from ..errors import CorruptCheckpointError, ResourceLimitError, UnsupportedCheckpointError
from ..limits import Limits
from ..records import StorageRef, TensorRecord
from ..structs import structure
from ..unpickle.values import PickledQTensor, PickledSparse, PickledTensor, Stub, bounded_repr

__all__ = [
    "Flattened",
    "check_view",
    "flatten",
    "is_module_stub",
    "record_maker",
    "refuse_unreadable",
    "short_repr",
    "unreadable_tensors",
]

_MODULE_KEYS = ("_parameters", "_buffers", "_modules")


@structure
class Flattened:
    """Records and extras found in one object tree."""

    records: dict[str, TensorRecord] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: ``id(pickled tensor) -> name of its record`` (the first name of a tensor reachable by several), for
    #: rebuilding the tree with tensors in place (:mod:`torchweights.formats.structure`)
    names: dict[int, str] = field(default_factory=dict)


def is_module_stub(obj: Any) -> bool:
    """True for an inert stub whose state looks like an ``nn.Module`` ``__dict__``."""
    return isinstance(obj, Stub) and any(isinstance(obj.attributes.get(k), dict) for k in _MODULE_KEYS)


_OPEN_CLOSE: dict[type, tuple[str, str]] = {
    list: ("[", "]"),
    tuple: ("(", ")"),
    set: ("{", "}"),
    frozenset: ("frozenset({", "})"),
    collections.deque: ("deque([", "])"),
}


def short_repr(value: Any, limit: int = 200, depth: int = 6) -> str:
    """A repr of an extras value cut to about ``limit`` characters, computed in bounded time and stack.

    ``repr()`` itself is unsafe on unpickled data: a list of shared lists 60 levels deep has a repr of 2**60
    characters, a list nested 100 000 deep exhausts the stack, an int of a million digits refuses to print. This
    walks at most ``depth`` levels and stops as soon as ``limit`` characters are written.
    """
    out: list[str] = []
    room = [limit]

    def emit(text: str) -> bool:
        out.append(text[: room[0] + 3])
        room[0] -= len(text)
        return room[0] > 0

    def leaf(obj: Any) -> str:
        if isinstance(obj, (str, bytes, bytearray, int, float, complex, type(None), Stub)):
            return bounded_repr(obj, limit)
        if type(obj).__module__.startswith("numpy") and hasattr(obj, "shape") and hasattr(obj, "dtype"):
            if getattr(obj.dtype, "hasobject", True) or getattr(obj, "size", 0) > 64:
                return f"<{type(obj).__name__} shape={tuple(obj.shape)} dtype={obj.dtype}>"
        try:
            return repr(obj)[: limit + 3]
        except Exception:  # a foreign object with a broken or refusing __repr__
            return bounded_repr(obj, limit)

    def pairs(items: Any, level: int, sep: str, quote_keys: bool) -> bool:
        for n, (key, val) in enumerate(items):
            if n > limit // 2 or not emit(", " if n else ""):
                return emit(", ...") and False
            ok = emit(repr(key[:limit]) if quote_keys else key) if isinstance(key, str) else visit(key, level)
            if not (ok and emit(sep) and visit(val, level)):
                return False
        return True

    def visit(obj: Any, level: int) -> bool:
        if isinstance(obj, (argparse.Namespace, types.SimpleNamespace)):
            opening, closing = f"{type(obj).__name__}(", ")"
        elif isinstance(obj, dict):
            opening, closing = ("{", "}") if type(obj) is dict else (f"{type(obj).__name__}({{", "})")
        elif isinstance(obj, tuple(_OPEN_CLOSE)):
            opening, closing = next(oc for t, oc in _OPEN_CLOSE.items() if isinstance(obj, t))
        else:
            return emit(leaf(obj))
        if level >= depth:
            return emit(opening + "..." + closing)
        if not emit(opening):
            return False
        if isinstance(obj, (argparse.Namespace, types.SimpleNamespace)):
            ok = pairs(vars(obj).items(), level + 1, "=", False)
        elif isinstance(obj, dict):
            ok = pairs(obj.items(), level + 1, ": ", True)
        else:
            ok = True
            for n, item in enumerate(obj):
                if n > limit // 2 or not emit(", " if n else ""):
                    return emit(", ...") and False
                if not visit(item, level + 1):
                    return False
            if type(obj) is tuple and len(obj) == 1:
                ok = emit(",")
        return ok and emit(closing)

    complete = visit(value, 0)
    text = "".join(out)
    return text if complete and len(text) <= limit else text[: max(limit - 3, 0)] + "..."


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, (int, float, bool)) or key is None:
        return str(key) if not isinstance(key, int) or key.bit_length() <= 256 else bounded_repr(key)
    if isinstance(key, tuple) and len(key) <= 16 and all(isinstance(k, (str, int, float, bool)) for k in key):
        return ".".join(_key(k) for k in key)
    return bounded_repr(key)


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
    skip: set[str] = set()
    if isinstance(non_persistent, (set, frozenset, list, tuple)):
        skip = {name for name in non_persistent if isinstance(name, str)}
    if isinstance(buffers, dict):
        for name, value in buffers.items():
            if value is not None and not (isinstance(name, str) and name in skip):
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
    if isinstance(obj, (argparse.Namespace, types.SimpleNamespace)):
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


def _unread_kind(obj: Any) -> str | None:
    """``"nested tensor"`` for a tensor kind the unpickler kept inert (``torch._utils._rebuild_nested_tensor``)."""
    if isinstance(obj, Stub) and obj.cls.startswith("torch._utils._rebuild_"):
        return obj.cls.rsplit("._rebuild_", 1)[1].replace("_", " ")
    if isinstance(obj, Stub) and obj.cls == "numpy.object_array":
        return "NumPy object array, whose data is a pickle"
    if isinstance(obj, Stub) and obj.cls == "numpy.unsupported_array" and len(obj.args) == 3:
        return f"NumPy array of {obj.args[2]}"
    return None


def unreadable_tensors(extras: dict[str, Any]) -> dict[str, str]:
    """``{name: kind}`` of the tensors a checkpoint holds that cannot be rebuilt (kept in ``extras`` as stubs)."""
    return {name: kind for name, value in extras.items() if (kind := _unread_kind(value)) is not None}


def refuse_unreadable(path: str, extras: dict[str, Any]) -> None:
    """Raise ``UnsupportedCheckpointError`` (code ``unsupported-tensor``) naming every tensor of a checkpoint that
    cannot be rebuilt, as ``tw.load`` does: a state dict silently shorter than the file is never returned."""
    from ..text import plural, quote, shorten_list

    unread = unreadable_tensors(extras)
    if unread:
        listed = shorten_list(f"{quote(name)} ({kind})" for name, kind in unread.items())
        raise UnsupportedCheckpointError(
            f"{quote(path)} holds {plural(len(unread), 'tensor')} that torchweights cannot rebuild: {listed}. "
            "Nothing was loaded. tw.open(path) lists them; pass unsupported='skip' to load every other tensor.",
            code="unsupported-tensor",
            path=path,
        )


def _is_tensor(obj: Any) -> bool:
    """A tensor, or an unsupported tensor kind (walked to, so that it is reported)."""
    return isinstance(obj, PickledTensor) or (isinstance(obj, Stub) and obj.cls.startswith("torch._utils._rebuild_"))


_END = object()


class _Walker:
    """Names tensors depth-first, in container order, without recursion.

    Both passes keep explicit stacks, so a pickle nested a million levels deep costs memory, never the Python stack.
    ``has_tensor`` is memoised per object, so shared sub-trees are searched once; ``walk`` is not (a shared tensor
    gets every name it is reachable by, as ``state_dict`` does for tied weights), so every visit is paid from
    ``budget``: a "billion laughs" tree of shared lists ends with :class:`ResourceLimitError`, not a hang.
    """

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

    def has_tensor(self, root: Any) -> bool:
        """True when a tensor is reachable from ``root`` (a cycle back to an object being searched is not followed)."""
        if _is_tensor(root):
            return True
        cached = self._has_tensor.get(id(root))
        if cached is not None:
            return cached
        children = _children(root)
        if children is None:
            return False
        on_path = {id(root)}
        frames: list[list[Any]] = [[root, children, False]]  # [object, its children, found a tensor]
        while frames:
            frame = frames[-1]
            step: Any = _END if frame[2] else next(frame[1], _END)
            if step is _END:
                frames.pop()
                on_path.discard(id(frame[0]))
                self._has_tensor[id(frame[0])] = frame[2]
                if frame[2] and frames:
                    frames[-1][2] = True
                continue
            self.spend()
            child = step[1]
            if _is_tensor(child):
                frame[2] = True
                continue
            key = id(child)
            cached = self._has_tensor.get(key)
            if cached is not None:
                frame[2] = cached
                continue
            if key in on_path:
                continue
            grandchildren = _children(child)
            if grandchildren is not None:
                on_path.add(key)
                frames.append([child, grandchildren, False])
        return self._has_tensor[id(root)]

    def walk(self, root: Any) -> None:
        # One frame per container being walked; ``names`` holds the path to the top frame's children, so a path
        # is only spelled out (in O(depth)) for what gets a name: records, extras and warnings.
        frames: list[tuple[Any, Iterator[tuple[str, Any]], bool]] = []  # (container, its children, is a module)
        names: list[str] = []
        if self._enter(root, names):
            frames.append((root, _children(root) or iter(()), is_module_stub(root)))
        while frames:
            obj, children, in_module = frames[-1]
            step = next(children, None)
            if step is None:
                frames.pop()
                self._active.discard(id(obj))
                if names:
                    names.pop()
                continue
            child_name, child = step
            if in_module and is_module_stub(child) and not self.has_tensor(child):
                continue  # a stateless submodule (ReLU, Dropout): not in state_dict, and not data either
            names.append(child_name)
            if self._enter(child, names):
                frames.append((child, _children(child) or iter(()), is_module_stub(child)))
            else:
                names.pop()

    def _enter(self, obj: Any, names: list[str]) -> bool:
        """Visit one object at path ``names``: record a tensor or keep a leaf as an extra (False), or return True
        for a container holding tensors, to be walked."""
        self.spend()
        if isinstance(obj, PickledTensor):
            path = tuple(names)
            self.add_record(".".join(path), path, obj)
            return False
        kind = _unread_kind(obj)
        if kind is not None:
            name = ".".join(names)
            self.out.warnings.append(f"'{name}' is a {kind}, which torchweights does not read yet")
            self.out.extras[name] = obj
            return False
        if not self.has_tensor(obj):
            if names or obj is not None:
                self.out.extras[".".join(names)] = obj
            return False
        if len(names) > self.limits.max_depth:
            raise ResourceLimitError(
                f"'{'.'.join(names[:20])}...' holds tensors more than {self.limits.max_depth} levels deep; no real "
                "checkpoint does. If you trust the file, raise the limit: tw.open(path, limits=Limits(max_depth=...)).",
                code="limit-depth",
            )
        key = id(obj)
        if key in self._active:
            self.out.warnings.append(f"'{'.'.join(names)}' refers back to one of its parents (a cycle); not followed")
            return False
        self._active.add(key)
        return True

    def add_record(self, name: str, path: tuple[str, ...], tensor: PickledTensor) -> None:
        if name in self.out.records:
            n = 2
            while f"{name}#{n}" in self.out.records:
                n += 1
            self.out.warnings.append(f"two tensors are both named '{name}'; the second is listed as '{name}#{n}'")
            name = f"{name}#{n}"
        self.out.records[name] = self.make_record(name, path, tensor)
        self.out.names.setdefault(id(tensor), name)


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
    walker.walk(root)
    return walker.out


_INT64_MAX = 2**63 - 1


def _view_problem(tensor: PickledTensor, size: int, storage_nbytes: int | None) -> str | None:
    shape, stride, offset = tensor.shape, tensor.stride, tensor.storage_offset
    if len(shape) != len(stride):
        return f"has {len(shape)} sizes but {len(stride)} strides"
    if len(shape) > 64:
        return f"has {len(shape)} dimensions"
    if any(n < 0 for n in shape) or any(s < 0 for s in stride) or offset < 0:
        return f"has a negative size, stride or offset: size {shape}, stride {stride}, offset {offset}"
    numel = math.prod(shape)
    if any(v > _INT64_MAX for v in (*shape, *stride, offset, numel, numel * size)):
        return f"has sizes, strides or an offset beyond what torch can represent (size {shape}, stride {stride})"
    if storage_nbytes is None:
        return None  # saved without data (meta): nothing to fit into
    if numel:
        last = offset + sum((n - 1) * s for n, s in zip(shape, stride))
        if (last + 1) * size > storage_nbytes:
            return (
                f"reaches byte {(last + 1) * size} of a {storage_nbytes}-byte storage "
                f"(size {shape}, stride {stride}, offset {offset}, {tensor.dtype})"
            )
    # an empty view reads nothing, so its offset may lie past the storage's end: torch saves and loads
    # ``torch.empty(2, 0)[1:]`` (offset 1 of a 0-byte storage) and so does torchweights
    return None


def check_view(name: str, tensor: PickledTensor, storage_nbytes: int | None, where: str) -> None:
    """Check that a tensor view is one torch can represent and that it fits its storage.

    Sizes, strides and offset must be non-negative and fit in int64, with at most 64 dimensions; with a storage
    (``storage_nbytes`` not None) the last element must lie inside it. Tensors saved without data (meta) are
    checked for the first part only.

    Raises:
        CorruptCheckpointError: naming the tensor, its view and the storage size.
    """
    try:
        size = dtypes.itemsize(tensor.dtype)
    except KeyError:
        raise CorruptCheckpointError(
            f"tensor '{name}' in {where} has unknown dtype '{tensor.dtype}'", code="bad-record"
        ) from None
    problem = _view_problem(tensor, size, storage_nbytes)
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
        elif isinstance(tensor, PickledSparse):
            # no strides: only the dense size, checked as torch would (the components are checked on their own)
            check_view(name, replace(tensor, stride=(1,) * len(tensor.shape)), None, where)
        else:
            check_view(name, tensor, None, where)
        record = TensorRecord(
            name=name,
            path=path,
            dtype=tensor.dtype,
            shape=tensor.shape,
            stride=tensor.stride,
            storage_offset=offset,
            storage=ref,
            requires_grad=tensor.requires_grad,
            is_parameter=tensor.is_parameter,
            conj=tensor.conj,
            neg=tensor.neg,
            attributes=tensor.attributes,
        )
        if isinstance(tensor, PickledQTensor):
            record = _quantized(record, tensor, make, where)
        if isinstance(tensor, PickledSparse):
            sparse: dict[str, Any] = {"layout": tensor.layout}
            for part, value in tensor.components.items():
                sparse[part] = make(f"{name}.{part}", (*path, part), value)
            if tensor.is_coalesced is not None:
                sparse["is_coalesced"] = tensor.is_coalesced
            record = replace(record, sparse=sparse)
        return record

    return make


def _quantized(
    record: TensorRecord,
    tensor: PickledQTensor,
    make: Callable[[str, tuple[str, ...], PickledTensor], TensorRecord],
    where: str,
) -> TensorRecord:
    """A quantized tensor's record with its quantization. Per-channel scales and zero points saved as tensors become
    records of their own (named ``<name>.q_per_channel_scales`` / ``..._zero_points``, not listed in the checkpoint);
    either way they must hold one value per channel along the quantization axis."""
    quant = dict(tensor.quantization)
    problem = None
    if "axis" in quant:
        axis, shape = quant["axis"], record.shape
        if not 0 <= axis < len(shape):
            problem = f"has {len(shape)} dimensions but its per-channel quantization axis is {axis}"
        for key in ("scales", "zero_points") if problem is None else ():
            label = key.replace("_", " ")
            value = quant[key]
            if isinstance(value, PickledTensor):
                value = quant[key] = make(f"{record.name}.q_per_channel_{key}", (*record.path, key), value)
                allowed = ("float",) if key == "scales" else ("int", "float")
                if dtypes.get(value.dtype).kind not in allowed:
                    problem = f"has per-channel {label} of dtype {value.dtype}"
                elif value.shape != (shape[axis],):
                    problem = (
                        f"has {shape[axis]} channels along axis {axis} but per-channel {label} of size {value.shape}"
                    )
            elif len(value) != shape[axis]:
                problem = f"has {shape[axis]} channels along axis {axis} but {len(value)} per-channel {label}"
            if problem:
                break
    if problem:
        raise CorruptCheckpointError(
            f"quantized tensor '{record.name}' in {where} {problem}. The file is corrupt or was crafted; re-download "
            "or re-save it.",
            code="bad-record",
        )
    return replace(record, quantization=quant)

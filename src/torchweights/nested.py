"""``tw.load(path, nested=True)``: the file's original structure with tensors where they were.

The unpickled root a pickle-based checkpoint keeps (:class:`~torchweights.formats.structure.PickleTree`) is copied
with every pickled tensor replaced by the tensor the read engine made of it: dicts (``OrderedDict``,
``defaultdict``, ``Counter`` keep their type), lists, tuples, sets, deques, ``argparse.Namespace``, plain extras
(numbers, strings, numpy scalars and arrays) as they were unpickled, torch constants (``torch.float16``,
``torch.device("cuda:0")``) and ``torch.Size`` as the real thing. Objects of classes that were not allowed stay inert
:class:`~torchweights.unpickle.values.Stub` objects (``.cls``, ``.args``, ``.state``, ``.attributes``) with tensors
inside them in place. A tensor reachable from several places is one tensor object, and tensors that shared a storage
in the file share it, as with ``torch.load``.
"""

from __future__ import annotations

import argparse
import collections
import types
from typing import TYPE_CHECKING, Any

from .errors import ResourceLimitError
from .unpickle.values import PickledTensor, Stub, TorchValue

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .formats.structure import PickleTree
    from .records import TensorRecord

__all__ = ["read_nested", "rebuild"]

#: Deepest nesting copied on the Python stack, whatever ``Limits.max_depth`` says.
_MAX_STACK_DEPTH = 800


def _torch_value(value: TorchValue) -> Any:
    """The torch object a :class:`TorchValue` names, or the value itself when torch has no such constant."""
    import torch

    if value.kind == "device":
        try:
            return torch.device(value.value)
        except (RuntimeError, TypeError):
            return value
    real = getattr(torch, value.value, None)
    wanted = {"dtype": torch.dtype, "layout": torch.layout, "memory_format": torch.memory_format}.get(value.kind)
    return real if wanted is not None and isinstance(real, wanted) else value


def read_nested(tree: PickleTree, **options: Any) -> Any:
    """Read every tensor of ``tree`` (``options`` as :func:`~torchweights.storage.read.materialize` takes them)
    and return the root with each in place: parameters as ``nn.Parameter`` and tensors saved with
    ``requires_grad=True`` requiring grad, as ``torch.load`` rebuilds them."""
    from dataclasses import replace

    from .storage.read import materialize

    chosen: dict[int, TensorRecord] = {}  # one record per distinct record object, each under a name of its own
    taken: set[str] = set()
    for record in tree.records.values():
        if id(record) in chosen:
            continue
        name, n = record.name, 2
        while name in taken:
            name, n = f"{record.name}#{n}", n + 1
        taken.add(name)
        chosen[id(record)] = record if name == record.name else replace(record, name=name)
    read = materialize(list(chosen.values()), **options)
    made = {key: _as_saved(record, read[record.name]) for key, record in chosen.items()}
    return rebuild(tree, {key: made[id(record)] for key, record in tree.records.items()})


def _as_saved(record: TensorRecord, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` with the flags it was saved with: an ``nn.Parameter`` (keeping its Python attributes) or a
    tensor that requires grad."""
    import torch

    if record.is_parameter and not isinstance(tensor, torch.nn.Parameter):
        param = torch.nn.Parameter(tensor, requires_grad=record.requires_grad)
        vars(param).update(vars(tensor))
        return param
    if record.requires_grad and not tensor.requires_grad:
        tensor.requires_grad_(True)
    return tensor


_CONTAINERS = (dict, list, tuple, set, frozenset, collections.deque, Stub, argparse.Namespace, types.SimpleNamespace)


def rebuild(tree: PickleTree, tensors: dict[int, Any]) -> Any:
    """A copy of ``tree.root`` with each pickled tensor replaced by ``tensors[id(pickled tensor)]``.

    Every container is copied once (shared parts stay shared, cycles stay cycles); leaves are kept as they are.

    Raises:
        ResourceLimitError: code ``limit-depth`` for containers nested deeper than ``tree.limits.max_depth``.
    """
    import torch

    memo: dict[int, Any] = {}
    deepest = min(tree.limits.max_depth, _MAX_STACK_DEPTH)

    def copy(obj: Any, depth: int) -> Any:
        key = id(obj)
        if key in memo:
            return memo[key]
        if isinstance(obj, PickledTensor):
            return tensors.get(key, obj)
        if isinstance(obj, TorchValue):
            return _torch_value(obj)
        if isinstance(obj, (str, bytes, int, float, complex, type(None))):
            return obj
        if isinstance(obj, Stub) and obj.cls == "torch.Size" and len(obj.args) == 1:
            size = obj.args[0]
            if isinstance(size, (tuple, list)) and all(type(n) is int for n in size):
                memo[key] = torch.Size(size)
                return memo[key]
        if not isinstance(obj, _CONTAINERS):
            return obj
        if depth > deepest:
            raise ResourceLimitError(
                f"the checkpoint nests containers more than {deepest} levels deep, too deep to rebuild with "
                "nested=True. Load it flat (tw.load(path)), or, if you trust the file, raise the limit: "
                "tw.load(path, nested=True, limits=Limits(max_depth=...)).",
                code="limit-depth",
            )
        below = depth + 1
        if isinstance(obj, dict):
            if isinstance(obj, collections.defaultdict):
                new_dict: dict[Any, Any] = collections.defaultdict(obj.default_factory)
            else:
                new_dict = type(obj)() if type(obj) in (dict, collections.OrderedDict, collections.Counter) else {}
            memo[key] = new_dict
            for k, v in obj.items():
                new_dict[k] = copy(v, below)
            if type(new_dict) is not dict and getattr(obj, "__dict__", None):
                vars(new_dict).update({k: copy(v, below) for k, v in vars(obj).items()})  # state_dict's _metadata
            return new_dict
        if isinstance(obj, list):
            new_list: list[Any] = []
            memo[key] = new_list
            new_list.extend(copy(v, below) for v in obj)
            return new_list
        if isinstance(obj, collections.deque):
            new_deque: collections.deque[Any] = collections.deque(maxlen=obj.maxlen)
            memo[key] = new_deque
            new_deque.extend(copy(v, below) for v in obj)
            return new_deque
        if isinstance(obj, (set, frozenset)):
            return set(obj) if isinstance(obj, set) else obj  # hashable leaves only: no tensor inside
        if isinstance(obj, (argparse.Namespace, types.SimpleNamespace)):
            space = type(obj)()
            memo[key] = space
            for k, v in vars(obj).items():
                setattr(space, k, copy(v, below))
            return space
        if isinstance(obj, Stub):
            stub = Stub(obj.cls)
            memo[key] = stub
            stub.args = tuple(copy(v, below) for v in obj.args)
            stub.kwargs = {k: copy(v, below) for k, v in obj.kwargs.items()}
            stub.state = copy(obj.state, below)
            stub.items = [copy(v, below) for v in obj.items]
            stub.dictitems = {k: copy(v, below) for k, v in obj.dictitems.items()}
            return stub
        items = tuple(copy(v, below) for v in obj)  # a tuple
        if key in memo:  # reached again through a list or dict inside it (a cycle): that copy is the one
            return memo[key]
        memo[key] = items
        return items

    return copy(tree.root, 0)

"""The only code in torchweights that reads pickle.

A small pickle virtual machine that decodes every opcode itself and never calls anything named by the file,
except entries of one fixed table of pure data reconstructors (:data:`SAFE_GLOBALS`) and the globals the user
explicitly allowed by name. Everything else becomes inert data:

* a global not in the table becomes a :class:`Global` reference; calling it (``REDUCE``, ``NEWOBJ``, ``INST``)
  makes a :class:`Stub` that records the class name, the arguments and the state, so a pickled ``nn.Module``
  still yields its parameters without its class being imported;
* globals known to run code, touch files, processes or the network, or import modules are refused with
  :class:`~torchweights.errors.UnsafeCheckpointError` once the whole stream has been read, naming every one;
* ``builtins.getattr`` (how pickle spells bound methods and enum members by name) is answered without looking
  anything up: ``getattr(<stub Net>, 'hook')`` is the inert global ``pkg.Net.hook``, classified like any other, so
  ``getattr(<global torch.os>, 'system')`` is refused as ``torch.os.system``;
* tensors and storages become :class:`PickledTensor` / :class:`PickledStorage` descriptions; their bytes are
  located by the format reader through ``persistent_load``.

Every failure is a :class:`~torchweights.errors.CorruptCheckpointError` (``bad-pickle``, ``truncated``) or a
:class:`~torchweights.errors.ResourceLimitError` (``limit-*``): the machine never recurses, never hashes a key
nested deeper than :data:`_MAX_KEY_DEPTH`, never builds chains of deques or object arrays that CPython would free
recursively, never prints a value it cannot bound, and never lets ``bytes(n)`` or ``list(range(n))`` allocate.

The same table classifies globals for ``scan`` (:func:`classify_global`), so loading and scanning never disagree.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import codecs
import collections
import contextvars
import copyreg
import datetime
import decimal
import fractions
import importlib
import math
import pathlib
import re
import struct
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import dtypes
from ..errors import (
    CorruptCheckpointError,
    ResourceLimitError,
    TorchWeightsError,
    UnsafeCheckpointError,
    UnsupportedCheckpointError,
    pass_through,
)
from ..limits import DEFAULT_LIMITS
from ..records import StorageRef
from ..text import plural, quote
from .known_enums import KNOWN_ENUMS
from .torch_classes import TORCH_CLASSES

__all__ = [
    "FIRST_OPCODES",
    "Global",
    "EmbeddedStorage",
    "PickledSparse",
    "PickledStorage",
    "PickledTensor",
    "Reference",
    "SAFE_GLOBALS",
    "StorageType",
    "Stub",
    "TorchValue",
    "StreamScan",
    "UnpickleResult",
    "bounded_repr",
    "classify_global",
    "scan_stream",
    "unpickle",
]


# --------------------------------------------------------------------------------------------------------------
# Inert values the machine produces
# --------------------------------------------------------------------------------------------------------------


class Global:
    """An inert reference to a global the file names but that is not called (not in the table, not allowed)."""

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name

    @property
    def qualname(self) -> str:
        """``module.name``."""
        return f"{self.module}.{self.name}"

    def __repr__(self) -> str:
        return f"<global {self.qualname}>"


class Stub:
    """An inert object standing in for an instance of a class that was not imported.

    Attributes:
        cls: qualified name of the class or callable (``"my_project.config.TrainConfig"``).
        args: positional arguments it was created with.
        kwargs: keyword arguments (``NEWOBJ_EX``).
        state: what ``BUILD`` set (usually the instance ``__dict__``), or None.
        items: elements appended to it (``APPEND``), for list subclasses.
        dictitems: items set on it (``SETITEM``), for dict subclasses.
    """

    __slots__ = ("args", "cls", "dictitems", "items", "kwargs", "state")

    def __init__(self, cls: str, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> None:
        self.cls = cls
        self.args = args
        self.kwargs = kwargs or {}
        self.state: Any = None
        self.items: list[Any] = []
        self.dictitems: dict[Any, Any] = {}

    @property
    def attributes(self) -> dict[str, Any]:
        """The instance attributes restored by ``BUILD`` (a dict state, or the dict half of ``(dict, slots)``)."""
        state = self.state
        if isinstance(state, tuple) and len(state) == 2:
            merged: dict[str, Any] = {}
            for part in state:
                if isinstance(part, dict):
                    merged.update(part)
            return merged
        return state if isinstance(state, dict) else {}

    def __repr__(self) -> str:
        return f"<stub {self.cls}>"


@dataclass(frozen=True)
class TorchValue:
    """A torch constant named by the file (``torch.float32``, ``torch.device('cuda:0')``, ``torch.strided``)."""

    kind: str  # dtype | device | layout | memory_format
    value: str

    def __repr__(self) -> str:
        return f"torch.device({self.value!r})" if self.kind == "device" else f"torch.{self.value}"


@dataclass(frozen=True)
class StorageType:
    """A storage class named by the file: ``torch.FloatStorage`` (dtype ``float32``) or untyped (dtype None)."""

    name: str
    dtype: str | None


@dataclass(frozen=True)
class PickledStorage:
    """A storage as the format reader located it: bytes, element dtype, and element offset for legacy views."""

    ref: StorageRef
    dtype: str
    offset: int = 0


@dataclass
class PickledTensor:
    """A tensor described by the pickle: which storage, and the view of it."""

    storage: PickledStorage | None
    dtype: str
    storage_offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    requires_grad: bool = False
    is_parameter: bool = False
    subclass: str | None = None
    conj: bool = False
    neg: bool = False
    attributes: dict[str, Any] | None = None


@dataclass
class PickledSparse(PickledTensor):
    """A sparse tensor (``torch._utils._rebuild_sparse_tensor``): its layout, dense size and component tensors.

    ``components`` holds ``indices`` and ``values`` (COO) or ``compressed_indices``, ``plain_indices`` and
    ``values`` (CSR, CSC, BSR, BSC), each a :class:`PickledTensor`; ``dtype`` is the values' dtype and ``shape`` the
    dense size. ``is_coalesced`` is the COO flag torch saved (None in files older than it).
    """

    layout: str = "sparse_coo"
    components: dict[str, PickledTensor] = field(default_factory=dict)
    is_coalesced: bool | None = None


@dataclass(frozen=True)
class EmbeddedStorage(PickledStorage):
    """A storage pickled on its own (``pickle.dumps(tensor)``: ``torch.storage._load_from_bytes(b)``), where ``b``
    is a legacy ``torch.save`` stream. ``ref.offset`` is the offset of the elements inside ``blob``; the format
    reader finds ``blob`` in its file (identical bytes anywhere hold the same elements) to make the reference
    absolute."""

    blob: bytes = b""


@dataclass(frozen=True)
class Reference:
    """One place where a pickle stream names a global, or sets attributes the way an exploit would.

    Attributes:
        name: what is referenced, as ``module.qualname`` (a ``getattr`` chain spelled out: ``torch.os.system``).
        offset: byte offset of the opcode, from the start of the buffer the stream was read from.
        how: the opcode that made the reference: ``GLOBAL``, ``STACK_GLOBAL``, ``INST``, ``EXT``, ``getattr``
            (a dotted name built by calling ``builtins.getattr``), or ``BUILD`` (attributes set on a global, or
            behaviour-changing attributes such as ``__reduce__`` set on an object).
        verdict: ``"safe"``, ``"known"``, ``"dangerous"`` or ``"unknown"``, from :func:`classify_global`, or
            ``"allowed"`` for a global the caller allowed by name.
        arguments: for a call that ``pickle.load`` would make (``how`` is then the calling opcode: ``REDUCE``,
            ``INST`` or ``OBJ``), a bounded description of its arguments (``"1 argument: 'touch x'"``); None for a
            reference by name.
    """

    name: str
    offset: int
    how: str
    verdict: str
    arguments: str | None = None


@dataclass
class UnpickleResult:
    """What one pickle stream held.

    Attributes:
        value: the root object.
        end: offset just past the ``STOP`` opcode.
        globals: every global referenced, as ``module.qualname``.
        opcodes: number of opcodes executed (a bound for later traversals).
        references: where each global was referenced (at most :data:`MAX_REFERENCES` of them).
    """

    value: Any
    end: int
    globals: set[str] = field(default_factory=set)
    opcodes: int = 0
    references: list[Reference] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------------------
# The table of reconstructors: the only callables a file can reach
# --------------------------------------------------------------------------------------------------------------


class _Ctor:
    """A safe reconstructor: ``call`` on REDUCE, ``new`` on NEWOBJ, ``build`` on BUILD of what it made."""

    def __init__(
        self,
        name: str,
        call: Callable[..., Any],
        new: Callable[..., Any] | None = None,
    ) -> None:
        self.name = name
        self.call = call
        self.new = new or call

    def __repr__(self) -> str:
        return f"<reconstructor {self.name}>"


class _Pending:
    """A value that only becomes itself on BUILD (numpy arrays and dtypes, uuid-like objects)."""

    def __init__(self, finish: Callable[[Any], Any], what: str) -> None:
        self.finish = finish
        self.what = what

    def __repr__(self) -> str:
        return f"<incomplete {self.what}>"


def _bad(message: str, code: str = "bad-pickle") -> CorruptCheckpointError:
    return CorruptCheckpointError(message, code=code)


_SHORT_REPR = (type(None), bool, int, float, complex, str, bytes, bytearray)


def bounded_repr(value: Any, limit: int = 60) -> str:
    """A bounded description of a value for error messages.

    Never the full ``repr`` of a container: a hostile pickle can build structures whose repr is exponentially large
    (shared sub-lists), infinitely deep, or an integer too long to print.
    """
    if isinstance(value, _SHORT_REPR):
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
            return f"<int of {value.bit_length()} bits>"
        if isinstance(value, (str, bytes, bytearray)) and len(value) > limit:
            value = value[:limit]
            return repr(value) + "..."
        return repr(value)
    if isinstance(value, (Global, Stub, TorchValue, StorageType, _Ctor, _Pending)):
        return repr(value)[:limit]
    if isinstance(value, (tuple, list, dict, set, frozenset)):
        return f"<{type(value).__name__} of {len(value)} items>"
    return f"<{type(value).__module__}.{type(value).__qualname__} object>"


def _int(value: Any, what: str) -> int:
    if type(value) is not int and type(value) is not bool:
        raise _bad(f"{what} must be an integer, found {type(value).__name__}")
    return int(value)


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if isinstance(value, Stub) and value.cls == "torch.Size":
        value = value.args[0] if value.args else ()
    if not isinstance(value, (tuple, list)):
        raise _bad(f"{what} must be a tuple of integers, found {type(value).__name__}")
    return tuple(_int(v, what) for v in value)


def _storage_of(value: Any) -> PickledStorage:
    if not isinstance(value, PickledStorage):
        raise _bad(f"a tensor was rebuilt from {bounded_repr(value)}, which is not a storage saved in this file")
    return value


def _tensor(
    storage: Any, offset: Any, size: Any, stride: Any, dtype: str | None = None, requires_grad: Any = False
) -> PickledTensor:
    st = _storage_of(storage)
    return PickledTensor(
        storage=st,
        dtype=dtype or st.dtype,
        storage_offset=_int(offset, "storage offset") + (st.offset if dtype is None else 0),
        shape=_int_tuple(size, "tensor size"),
        stride=_int_tuple(stride, "tensor stride"),
        requires_grad=bool(requires_grad),
    )


#: The tensor metadata torch saves (``torch._utils.get_tensor_metadata``: the conjugate and negative bits).
TENSOR_FLAGS = ("conj", "neg")


def _unsupported_flag(what: str) -> UnsupportedCheckpointError:
    return UnsupportedCheckpointError(
        f"a tensor in this file carries {what}, which torchweights does not know how to apply, so its values could "
        "come out wrong. Load it with the torch version that saved it and re-save it, or report the file.",
        code="unsupported-tensor-flag",
    )


def _check_hooks(hooks: Any) -> None:
    """``backward_hooks``: torch saves an empty ``OrderedDict`` (hooks are never serialised); anything else is
    something the file wants run."""
    if hooks is not None and not (isinstance(hooks, dict) and not hooks):
        raise _unsupported_flag(f"backward hooks {bounded_repr(hooks)}")


def _apply_metadata(tensor: PickledTensor, metadata: Any) -> PickledTensor:
    """The conjugate and negative bits (``{'conj': True}``, ``{'neg': True}``); an unknown key is an error."""
    if metadata is None or (isinstance(metadata, dict) and not metadata):
        return tensor
    if not isinstance(metadata, dict):
        raise _unsupported_flag(f"tensor metadata {bounded_repr(metadata)} (not a dict)")
    for key, value in metadata.items():
        if key not in TENSOR_FLAGS or type(value) is not bool:
            raise _unsupported_flag(f"the tensor metadata {bounded_repr(key)}: {bounded_repr(value)}")
        if key == "conj" and value and dtypes.get(tensor.dtype).kind != "complex":
            raise _bad(f"a {tensor.dtype} tensor has the conjugate bit set, which only complex tensors have")
        setattr(tensor, key, value)
    return tensor


def _apply_state(tensor: Any, state: Any) -> Any:
    """Python attributes saved with a tensor (``_rebuild_parameter_with_state``, ``_rebuild_from_type_v2``): a
    ``__dict__`` or ``(__dict__, slots)``, kept as data for :mod:`torchweights.storage.tensors` to set."""
    if not isinstance(tensor, PickledTensor) or state is None:
        return tensor
    parts = state if isinstance(state, tuple) else (state,)
    if len(parts) not in (1, 2) or not all(p is None or isinstance(p, dict) for p in parts):
        raise _unsupported_flag(f"a saved state {bounded_repr(state)} (not a dict or a (dict, slots) pair)")
    attributes: dict[str, Any] = {}
    for part in parts:
        for key, value in (part or {}).items():
            if not isinstance(key, str) or not key.isidentifier():
                raise _unsupported_flag(f"a saved attribute named {bounded_repr(key)}")
            attributes[key] = value
    if attributes:
        tensor.attributes = {**(tensor.attributes or {}), **attributes}
    return tensor


def _no_extra(name: str, extra: tuple[Any, ...]) -> None:
    if extra:
        raise _unsupported_flag(f"{len(extra)} argument(s) to {name} beyond those torch passes ({bounded_repr(extra)})")


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *extra: Any) -> PickledTensor:
    _no_extra("torch._utils._rebuild_tensor", extra)
    return _tensor(storage, offset, size, stride)


def _rebuild_tensor_v2(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    hooks: Any = None,
    metadata: Any = None,
    *extra: Any,
) -> PickledTensor:
    _no_extra("torch._utils._rebuild_tensor_v2", extra)
    _check_hooks(hooks)
    return _apply_metadata(_tensor(storage, offset, size, stride, requires_grad=requires_grad), metadata)


def _rebuild_tensor_v3(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any,
    hooks: Any,
    dtype: Any,
    metadata: Any = None,
    *extra: Any,
) -> PickledTensor:
    _no_extra("torch._utils._rebuild_tensor_v3", extra)
    if not (isinstance(dtype, TorchValue) and dtype.kind == "dtype"):
        raise _bad(f"_rebuild_tensor_v3 needs a torch dtype, found {bounded_repr(dtype)}")
    st = _storage_of(storage)
    if st.offset:
        raise _bad("_rebuild_tensor_v3 cannot use a legacy storage view")
    _check_hooks(hooks)
    return _apply_metadata(_tensor(st, offset, size, stride, dtype=dtype.value, requires_grad=requires_grad), metadata)


def _as_parameter(data: Any, requires_grad: Any = True, hooks: Any = None, *extra: Any) -> PickledTensor:
    _no_extra("torch._utils._rebuild_parameter", extra)
    if not isinstance(data, PickledTensor):
        raise _bad(f"a Parameter was rebuilt from {bounded_repr(data)}, which is not a tensor")
    _check_hooks(hooks)
    data.is_parameter = True
    data.requires_grad = bool(requires_grad)
    return data


def _as_parameter_with_state(data: Any, requires_grad: Any, hooks: Any, state: Any, *extra: Any) -> PickledTensor:
    _no_extra("torch._utils._rebuild_parameter_with_state", extra)
    return _apply_state(_as_parameter(data, requires_grad, hooks), state)  # type: ignore[no-any-return]


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any = None, *extra: Any) -> Any:
    _no_extra("torch._tensor._rebuild_from_type_v2", extra)
    if not isinstance(func, _Ctor) or not isinstance(args, tuple):
        raise _bad(f"_rebuild_from_type_v2 with {bounded_repr(func)}: only known tensor reconstructors are called")
    result = func.call(*args)
    if isinstance(result, PickledTensor):
        type_name = new_type.name if isinstance(new_type, _Ctor) else getattr(new_type, "qualname", None)
        if type_name in ("torch.nn.parameter.Parameter", "torch.nn.Parameter"):
            result.is_parameter = True
        elif type_name not in (None, "torch.Tensor", "torch._tensor.Tensor"):
            result.subclass = type_name
        _apply_state(result, state)
    return result


def _rebuild_meta(dtype: Any, size: Any, stride: Any, requires_grad: Any = False, *extra: Any) -> PickledTensor:
    _no_extra("torch._utils._rebuild_meta_tensor_no_storage", extra)
    if not (isinstance(dtype, TorchValue) and dtype.kind == "dtype"):
        raise _bad(f"a meta tensor needs a torch dtype, found {bounded_repr(dtype)}")
    return PickledTensor(
        None, dtype.value, 0, _int_tuple(size, "size"), _int_tuple(stride, "stride"), bool(requires_grad)
    )


def _rebuild_device_tensor(data: Any, dtype: Any = None, device: Any = None, requires_grad: Any = False) -> Any:
    if isinstance(data, PickledTensor):
        data.requires_grad = bool(requires_grad)
    return data


@dataclass(frozen=True)
class _Refused:
    """What a reconstructor returns for a call it will not make: the machine records ``names`` as dangerous
    references at the calling opcode (refused by loading once the stream is read, reported by scan) and keeps an
    inert stub in its place."""

    call: str
    names: tuple[str, ...]
    args: tuple[Any, ...] = ()


def _load_from_bytes(blob: Any, *extra: Any) -> Any:
    """``torch.storage._load_from_bytes(b)`` (how ``pickle.dumps(tensor)`` saves storages): ``b`` is a legacy
    ``torch.save`` stream, read by the legacy reader with this same machine; torch.load is never called. Anything
    else (or a stream naming dangerous globals) is a dangerous call."""
    from ..formats.legacy import read_embedded  # the reader sits above this module

    _no_extra("torch.storage._load_from_bytes", extra)
    try:
        return read_embedded(blob)
    except UnsafeCheckpointError as exc:
        return _Refused("torch.storage._load_from_bytes", exc.names, (blob,))


_SPARSE_PARTS = {
    "sparse_coo": ("indices", "values"),
    "sparse_csr": ("compressed_indices", "plain_indices", "values"),
    "sparse_csc": ("compressed_indices", "plain_indices", "values"),
    "sparse_bsr": ("compressed_indices", "plain_indices", "values"),
    "sparse_bsc": ("compressed_indices", "plain_indices", "values"),
}


def _rebuild_sparse(layout: Any, data: Any, *extra: Any) -> Any:
    """``torch._utils._rebuild_sparse_tensor(layout, data)``: the components as tensors, checked when loaded."""
    _no_extra("torch._utils._rebuild_sparse_tensor", extra)
    if not (isinstance(layout, TorchValue) and layout.kind == "layout" and layout.value in _SPARSE_PARTS):
        raise _unsupported_flag(f"a sparse layout {bounded_repr(layout)}")
    parts = _SPARSE_PARTS[layout.value]
    coalesced: Any = None
    if not isinstance(data, tuple):
        raise _bad(f"a {layout.value} tensor was saved with {bounded_repr(data)}, not a tuple of its parts")
    if layout.value == "sparse_coo" and len(data) == 4:
        *data, coalesced = data
        if type(coalesced) is not bool:
            raise _bad(f"a sparse_coo tensor has is_coalesced {bounded_repr(coalesced)}, not a bool")
    if len(data) != len(parts) + 1:
        raise _bad(f"a {layout.value} tensor was saved with {len(data)} parts, expected {len(parts) + 1}")
    components = dict(zip(parts, data[:-1]))
    for name, part in components.items():
        if type(part) is not PickledTensor or part.storage is None:
            raise _bad(f"the {name.replace('_', ' ')} of a {layout.value} tensor is {bounded_repr(part)}, not a tensor")
    values = components["values"]
    return PickledSparse(
        None,
        values.dtype,
        0,
        _int_tuple(data[-1], "sparse tensor size"),
        (),
        layout=layout.value,
        components=components,
        is_coalesced=coalesced,
    )


def _unsupported_tensor(name: str) -> Callable[..., Stub]:
    def make(*args: Any) -> Stub:
        return Stub(name, args)

    return make


# Values the machine itself produced from plain data; builtin types and stdlib value classes may be called on them.
_VALUE_TYPES: tuple[type, ...] = (
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    bytearray,
    datetime.date,
    datetime.time,
    datetime.timedelta,
    datetime.tzinfo,
    decimal.Decimal,
    fractions.Fraction,
)
# Containers whose iteration runs no code from the file (a ``range`` could make ``list`` allocate without bound).
_CONCRETE = (str, bytes, bytearray, tuple, list, set, frozenset, dict)


def _primitive(value: Any, depth: int = 0) -> bool:
    if isinstance(value, _VALUE_TYPES):
        return True
    if isinstance(value, (tuple, list, frozenset, set)) and depth < 4:
        return all(_primitive(v, depth + 1) for v in value)
    return False


def _arguments(args: tuple[Any, ...]) -> str:
    """``"2 arguments: 'touch x', 1"``: what a call receives, bounded."""
    shown = ", ".join(bounded_repr(a, 160) for a in args[:4]) + (", ..." if len(args) > 4 else "")
    return f"{plural(len(args), 'argument')}: {shown}" if args else "no arguments"


def _args_text(name: str, args: tuple[Any, ...]) -> str:
    return f"{name}({', '.join(bounded_repr(a, 40) for a in args[:4])}{', ...' if len(args) > 4 else ''})"


def _pure(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """Call a builtin type or stdlib value class only on plain-data arguments."""

    def call(*args: Any, **kwargs: Any) -> Any:
        if not all(_primitive(a) for a in args) or not all(_primitive(v) for v in kwargs.values()):
            return Stub(name, tuple(args), dict(kwargs))
        try:
            return fn(*args, **kwargs)
        except (TypeError, ValueError, OverflowError, ArithmeticError) as exc:
            raise _bad(f"{_args_text(name, args)} is invalid: {bounded_repr(str(exc), 200)}") from None

    return call


_MAX_NUMBER_TEXT = 10_000
_MAX_NUMBER_BITS = 8192


def _bounded_number(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """``Decimal`` / ``Fraction``: pickle writes them from their text; arithmetic on integers of any size (a
    ``Fraction`` reduces by their gcd) would make a few megabytes of pickle take minutes."""
    pure = _pure(fn, name)

    def call(*args: Any, **kwargs: Any) -> Any:
        for value in (*args, *kwargs.values()):
            too_long = isinstance(value, str) and len(value) > _MAX_NUMBER_TEXT
            too_big = type(value) is int and value.bit_length() > _MAX_NUMBER_BITS
            if too_long or too_big:
                raise _bad(f"{name} of a number {bounded_repr(value)} larger than pickle ever writes for one")
        return pure(*args, **kwargs)

    return call


def _collection(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """``set``, ``frozenset``, ``tuple``, ``list``, ``dict``: build from a container the machine made.

    Elements may be anything (stubs, dates, tensors...): building the container only hashes and compares them.
    """

    def call(*args: Any, **kwargs: Any) -> Any:
        if len(args) > 1 or (args and not isinstance(args[0], _CONCRETE)):
            return Stub(name, tuple(args), dict(kwargs))
        if args and fn in (set, frozenset, dict) and not isinstance(args[0], (dict, set, frozenset)):
            for item in args[0]:  # elements a set or dict will hash (a dict's come in pairs)
                _check_key(item[0] if fn is dict and isinstance(item, (tuple, list)) and item else item)
        try:
            return fn(*args, **kwargs)
        except (TypeError, ValueError) as exc:
            raise _bad(f"{_args_text(name, args)} is invalid: {bounded_repr(str(exc), 200)}") from None

    return call


def _byte_string(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """``bytes`` / ``bytearray`` from bytes, a list of ints or ``(text, encoding)``; never ``bytes(n)``.

    ``bytes(10**12)`` would make a few bytes of pickle allocate a terabyte; pickle never writes it.
    """
    pure = _pure(fn, name)

    def call(*args: Any, **kwargs: Any) -> Any:
        if args and not isinstance(args[0], (str, bytes, bytearray, list, tuple)):
            return Stub(name, tuple(args), dict(kwargs))
        return pure(*args, **kwargs)

    return call


def _timezone(*args: Any) -> Any:
    if not args or not isinstance(args[0], datetime.timedelta) or not all(isinstance(a, str) for a in args[1:]):
        return Stub("datetime.timezone", args)
    try:
        return datetime.timezone(*args)
    except (TypeError, ValueError) as exc:
        raise _bad(f"{_args_text('datetime.timezone', args)} is invalid: {exc}") from None


def _codecs_encode(text: Any, encoding: Any = "utf-8", *_: Any) -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise _bad(f"_codecs.encode({bounded_repr(text)}, {bounded_repr(encoding)}) is not a plain bytes literal")
    try:
        return codecs.encode(text, encoding)
    except UnicodeError as exc:
        raise _bad(f"_codecs.encode failed: {exc}") from None


def _ordered_dict(*args: Any) -> collections.OrderedDict[Any, Any]:
    result: collections.OrderedDict[Any, Any] = collections.OrderedDict()
    if args and isinstance(args[0], dict):
        result.update(args[0])
    elif args and isinstance(args[0], (list, tuple)):
        for pair in args[0]:
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise _bad("OrderedDict items must be pairs")
            _check_key(pair[0])
            result[pair[0]] = pair[1]
    return result


def _defaultdict(factory: Any = None, *args: Any) -> collections.defaultdict[Any, Any]:
    real = getattr(factory, "fn", None) if isinstance(factory, _Ctor) else None
    if isinstance(factory, _Allowed):
        real = factory.obj  # the user allowed this factory by name
    result: collections.defaultdict[Any, Any] = collections.defaultdict(real)
    if args and isinstance(args[0], dict):
        result.update(args[0])
    return result


def _counter(*args: Any) -> collections.Counter[Any]:
    result: collections.Counter[Any] = collections.Counter()
    if args and isinstance(args[0], dict):
        result.update(args[0])
    return result


def _deque(iterable: Any = (), maxlen: Any = None, *_: Any) -> collections.deque[Any]:
    if not isinstance(iterable, (list, tuple)) or not (maxlen is None or type(maxlen) is int):
        raise _bad("deque arguments must be a list and an optional int")
    return collections.deque(iterable, maxlen)


def _namespace(*args: Any, **kwargs: Any) -> argparse.Namespace:
    return argparse.Namespace(**{str(k): v for k, v in kwargs.items()})


def _simple_namespace(*args: Any, **kwargs: Any) -> types.SimpleNamespace:
    if args and isinstance(args[0], dict) and all(isinstance(k, str) for k in args[0]):
        kwargs = {**args[0], **kwargs}  # Python 3.13 accepts a mapping positionally
    return types.SimpleNamespace(**{str(k): v for k, v in kwargs.items()})


def _pure_path(cls: type[pathlib.PurePath]) -> Callable[..., Any]:
    def make(*parts: Any) -> pathlib.PurePath:
        if not all(isinstance(p, str) for p in parts):
            raise _bad("path parts must be strings")
        return cls(*parts)

    return make


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:  # pragma: no cover - numpy is optional
        return None
    return numpy


_NP_ALIGNED_STRUCT = 0x80  # numpy's NPY_ALIGNED_STRUCT dtype flag


def _np_fail(what: str, exc: BaseException) -> CorruptCheckpointError:
    """The error for numpy refusing ``what``; one of ours raised while checking it passes through unchanged."""
    pass_through(exc)
    return _bad(f"{what} is invalid: {bounded_repr(str(exc), 200)}")


def _np_datetime_unit(metadata: Any) -> str | None:
    """``[5s]`` from a datetime dtype's pickled metadata: ``(user metadata, (unit, num, 1, 1))``, where the user
    metadata is a dict up to numpy 2.3 and None from numpy 2.4 when there is none (``(None, (b's', 1, 1, 1))``);
    numpy before 1.7 wrote the tuple alone."""
    if isinstance(metadata, tuple) and len(metadata) == 2 and (metadata[0] is None or isinstance(metadata[0], dict)):
        metadata = metadata[1]
    if not (isinstance(metadata, tuple) and len(metadata) >= 2):
        return None
    unit, num = metadata[0], metadata[1]
    if isinstance(unit, (bytes, bytearray)):
        unit = bytes(unit).decode("ascii", "replace")
    if not isinstance(unit, str) or not unit.isalpha() or len(unit) > 8 or type(num) is not int or num < 1:
        raise _bad(f"numpy datetime unit {bounded_repr(metadata)} is invalid")
    return None if unit == "generic" else f"[{num}{unit}]"


def _np_struct(np: Any, names: Any, fields: Any, elsize: Any, flags: Any) -> Any:
    """A structured dtype from its pickled field table ``{name: (dtype, offset[, title])}``."""
    if not (isinstance(names, tuple) and isinstance(fields, dict) and type(elsize) is int):
        raise _bad("numpy structured dtype state is malformed")
    spec: dict[str, list[Any]] = {"names": [], "formats": [], "offsets": [], "titles": []}
    for name in names:
        field_info = fields.get(name) if isinstance(name, str) else None
        if not (
            isinstance(field_info, tuple)
            and len(field_info) in (2, 3)
            and isinstance(field_info[0], np.dtype)
            and type(field_info[1]) is int
        ):
            raise _bad(f"numpy structured dtype field {bounded_repr(name)} is malformed")
        title = field_info[2] if len(field_info) == 3 else None
        if title is not None and not isinstance(title, str):
            raise _bad(f"numpy structured dtype field {bounded_repr(name)} has a title that is not a string")
        spec["names"].append(name)
        spec["formats"].append(field_info[0])
        spec["offsets"].append(field_info[1])
        spec["titles"].append(title)
    aligned = type(flags) is int and bool(flags & _NP_ALIGNED_STRUCT)
    return np.dtype({**spec, "itemsize": elsize}, align=aligned)


def _np_dtype(spec: Any, align: Any = False, copy: Any = False, *_: Any) -> Any:
    if isinstance(spec, Global) and spec.name == "record" and spec.module.startswith("numpy"):
        spec = "V"  # np.rec arrays: a structured dtype of numpy.record scalars, read as a plain structured dtype
    if not isinstance(spec, str) or not (0 < len(spec) <= 16) or not spec.isalnum():
        raise _bad(f"numpy dtype spec {bounded_repr(spec)} is not a plain type code")

    def finish(state: Any) -> Any:
        # numpy's dtype state: (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata]).
        # It is interpreted here and rebuilt through numpy's public constructor, never handed to __setstate__.
        np = _numpy()
        if not isinstance(state, tuple) or len(state) < 2 or not isinstance(state[1], str):
            raise _bad(f"numpy dtype {spec!r} has a malformed state")
        order = state[1] if state[1] in ("<", ">", "|", "=") else "="
        if np is None:
            return Stub("numpy.dtype", (order + spec,))
        padded = (*state, None, None, None, None, None, None, None, None)
        subarray, names, fields, elsize, flags = padded[2], padded[3], padded[4], padded[5], padded[7]
        metadata = padded[8] if state[0] == 4 else None
        try:
            if spec[0] in "Mm" and metadata is not None:
                base = np.dtype(spec + (_np_datetime_unit(metadata) or ""))
            elif spec == "V" and type(elsize) is int and elsize > 0:
                base = np.dtype(f"V{elsize}")
            else:
                base = np.dtype(spec)
            if subarray is not None:
                if not (isinstance(subarray, tuple) and len(subarray) == 2 and isinstance(subarray[0], np.dtype)):
                    raise _bad(f"numpy dtype {spec!r} has a malformed sub-array")
                shape = subarray[1] if isinstance(subarray[1], tuple) else (subarray[1],)
                base = np.dtype((subarray[0], _int_tuple(shape, "numpy sub-array shape")))
            elif names is not None:
                base = _np_struct(np, names, fields, elsize, flags)
            native = "<" if sys.byteorder == "little" else ">"
            if order in "<>" and base.byteorder != "|" and order != native:
                base = base.newbyteorder(order)
            if isinstance(metadata, dict) and spec[0] not in "Mm" and metadata:
                base = np.dtype(base, metadata=dict(metadata))
        except (TypeError, ValueError, KeyError, OverflowError) as exc:
            raise _np_fail(f"numpy dtype {spec!r}", exc) from None
        return base

    return _Pending(finish, f"numpy.dtype({spec!r})")


def _np_bytes(raw: Any) -> bytes | None:
    """Array data as bytes. Python 2 pickles carry it as a ``str``: its bytes as the file holds them (the machine
    keeps them for a ``str`` it read as UTF-8, see :class:`_Stream`), else encoded with latin-1, as numpy does
    for pickles read with ``encoding='latin1'``."""
    if isinstance(raw, (bytes, bytearray)):
        return bytes(raw)
    if isinstance(raw, str):
        stream = _STREAM.get()
        kept = stream.py2_bytes.get(id(raw)) if stream is not None else None
        if kept is not None and kept[0] is raw:
            return kept[1]
        try:
            return raw.encode("latin-1")
        except UnicodeEncodeError:
            return None
    return None


def _np_array(np: Any, raw: Any, dt: Any, shape: tuple[int, ...], fortran: bool) -> Any:
    """A new writable array from pickled data, laid out in C or Fortran order as it was saved."""
    if any(n < 0 for n in shape):
        raise _bad(f"numpy array shape {shape} has a negative size")
    count = math.prod(shape)
    order = "F" if fortran else "C"
    if dt.hasobject and dt.kind != "O":
        return Stub("numpy.ndarray", (shape, dt, raw))  # a structured array holding objects: kept inert
    if dt.hasobject:
        # Object arrays are pickled as a list of their elements in C order, whatever their layout.
        if not isinstance(raw, list) or len(raw) != count:
            raise _bad("numpy object array data does not match its shape")
        arr = np.empty(count, dtype=object)
        arr[:] = raw
        return np.array(arr.reshape(shape), order=order)
    data = _np_bytes(raw)
    if data is None or len(data) != count * dt.itemsize:
        raise _bad(
            f"numpy array data holds {len(data) if data is not None else '?'} bytes, "
            f"shape {shape} x {dt.itemsize} needs {count * dt.itemsize}"
        )
    if count == 0 or dt.itemsize == 0:
        return np.zeros(shape, dtype=dt, order=order)
    return np.frombuffer(data, dtype=dt).reshape(shape, order=order).copy(order="K")


def _np_reconstruct(cls: Any, shape: Any = (0,), typecode: Any = b"b", *_: Any) -> Any:
    cls_name = _callable_name(cls)

    def finish(state: Any) -> Any:
        if not (isinstance(state, tuple) and len(state) == 5):
            # An ndarray subclass with a state of its own: keep it inert, with everything it carried.
            stub = Stub(cls_name, (shape, typecode))
            stub.state = state
            return stub
        _, shp, dt, fortran, raw = state
        shp = _int_tuple(shp, "numpy shape")
        np = _numpy()
        if np is None or not isinstance(dt, np.dtype):
            return Stub("numpy.ndarray", (shp, dt, raw))
        try:
            return _np_array(np, raw, dt, shp, bool(fortran))
        except (TypeError, ValueError, OverflowError) as exc:
            raise _np_fail("numpy array", exc) from None

    return _Pending(finish, "numpy.ndarray")


def _np_scalar(dtype: Any, data: Any = None, *_: Any) -> Any:
    np = _numpy()
    if np is None or not isinstance(dtype, np.dtype):
        return Stub("numpy.scalar", (dtype, data))
    if dtype.hasobject:
        return data
    raw = _np_bytes(data)
    if raw is None or len(raw) != dtype.itemsize:
        raise _bad("numpy scalar data does not match its dtype size")
    try:
        return np.frombuffer(raw, dtype=dtype)[0].copy()
    except (TypeError, ValueError) as exc:
        raise _np_fail("numpy scalar", exc) from None


def _np_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any = "C", *_: Any) -> Any:
    np = _numpy()
    shp = _int_tuple(shape, "numpy shape")
    if np is None or not isinstance(dtype, np.dtype) or dtype.hasobject:
        return Stub("numpy.ndarray", (buf, dtype, shp))
    try:
        return _np_array(np, buf, dtype, shp, order == "F")
    except (TypeError, ValueError, OverflowError) as exc:
        raise _np_fail("numpy array", exc) from None


def _getattr(obj: Any, name: Any, *default: Any) -> Any:
    """``builtins.getattr`` as pickle uses it (bound methods, enum members by name), answered without looking.

    The result is an inert reference named after what was asked for: ``getattr(<stub LazyLinear>, '_infer_parameters')``
    is the global ``torch.nn.modules.linear.LazyLinear._infer_parameters``. The machine classifies that name like any
    other global, so ``getattr(<global torch.os>, 'system')`` is refused as ``torch.os.system``.
    """
    if not isinstance(name, str) or not name:
        raise _bad(f"getattr with attribute name {bounded_repr(name)}")
    if isinstance(obj, Global):
        return Global(obj.module, f"{obj.name}.{name}")
    if isinstance(obj, (_Ctor, Stub)):
        owner = _callable_name(obj)
        module, _, qual = owner.rpartition(".")
        return Global(module or owner, f"{qual}.{name}" if module else name)
    if name.startswith("__") and name.endswith("__"):
        # a dunder of a real value (``().__class__``): the first step of every sandbox escape
        return Global(type(obj).__module__, f"{type(obj).__qualname__}.{name}")
    return Stub("builtins.getattr", (obj, name, *default))


def _copyreg_reconstructor(cls: Any, base: Any = None, state: Any = None) -> Any:
    """Protocol 0/1 objects: ``cls`` made from ``base(state)``; ``state`` is the builtin value of a subclass."""
    if isinstance(cls, _Ctor):
        return cls.new() if state is None else cls.new(state)
    if isinstance(cls, _Allowed):
        return cls.reconstruct(base, state)
    stub = Stub(_callable_name(cls))
    if isinstance(state, dict):
        stub.dictitems.update(state)  # a dict subclass: its items
    elif isinstance(state, list):
        stub.items.extend(state)  # a list subclass: its elements
    elif isinstance(state, tuple):
        stub.args = state  # a tuple subclass (a namedtuple): its fields, as NEWOBJ would pass them
    elif state is not None:
        stub.args = (state,)  # an int or str subclass: its value
    return stub


def _copyreg_newobj(cls: Any, *args: Any) -> Any:
    return _instantiate(cls, args, {}, new=True)


def _copyreg_newobj_ex(cls: Any, args: Any = (), kwargs: Any = None) -> Any:
    return _instantiate(cls, tuple(args or ()), dict(kwargs or {}), new=True)


#: Classes that only hold data (dataclasses, enums) that checkpoints name: inert references, never imported or
#: called (REDUCE/NEWOBJ of one makes a stub), and "safe" for scan. torch.distributed.checkpoint's ``.metadata``
#: consists of these.
_DATA_CLASSES: dict[str, tuple[str, ...]] = {
    "torch.distributed.checkpoint.metadata": (
        "Metadata",
        "TensorStorageMetadata",
        "TensorProperties",
        "ChunkStorageMetadata",
        "BytesStorageMetadata",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    ),
    "torch.distributed.checkpoint.filesystem": ("_StorageInfo", "_StoragePrefix"),
}


def _storage_types() -> dict[str, Any]:
    table: dict[str, Any] = {}
    for d in dtypes.DTYPES.values():
        if d.storage_class:
            for module in ("torch", "torch.cuda"):
                table[f"{module}.{d.storage_class}"] = StorageType(d.storage_class, d.name)
    for name in ("torch.UntypedStorage", "torch.storage.UntypedStorage", "torch.cuda.UntypedStorage"):
        table[name] = StorageType("UntypedStorage", None)
    for module, names in _DATA_CLASSES.items():
        for name in names:
            table[f"{module}.{name}"] = Global(module, name)
    for d in dtypes.DTYPES.values():
        if d.storage_class and d.storage_class.endswith("Storage") and d.kind != "quantized":
            # the legacy tensor classes (torch.FloatTensor) old files name as types: inert references, never called
            tensor_class = d.storage_class[: -len("Storage")] + "Tensor"
            for module in ("torch", "torch.cuda"):
                table.setdefault(f"{module}.{tensor_class}", Global(module, tensor_class))
    return table


def _torch_constants() -> dict[str, Any]:
    table: dict[str, Any] = {}
    for name in dtypes.DTYPES:
        table[f"torch.{name}"] = TorchValue("dtype", name)
    for alias in ("float", "double", "half", "long", "int", "short", "cfloat", "cdouble", "chalf"):
        table[f"torch.{alias}"] = TorchValue("dtype", dtypes.get(alias).name)
    for layout in (
        "strided",
        "sparse_coo",
        "sparse_csr",
        "sparse_csc",
        "sparse_bsr",
        "sparse_bsc",
        "_mkldnn",
        "jagged",
    ):
        table[f"torch.{layout}"] = TorchValue("layout", layout)
    for fmt in ("contiguous_format", "channels_last", "channels_last_3d", "preserve_format"):
        table[f"torch.{fmt}"] = TorchValue("memory_format", fmt)
    return table


def _torch_device(*args: Any) -> TorchValue:
    if not args or not isinstance(args[0], str) or len(args) > 2:
        raise _bad(f"torch.device({', '.join(bounded_repr(a) for a in args[:3])}) is not a device")
    text = args[0] if len(args) == 1 or args[1] is None else f"{args[0]}:{_int(args[1], 'device index')}"
    return TorchValue("device", text)


def _torch_size(*args: Any) -> tuple[int, ...]:
    return _int_tuple(args[0] if args else (), "torch.Size")


def _get_layout(name: Any) -> TorchValue:
    if not isinstance(name, str) or not name.startswith("torch."):
        raise _bad(f"unknown layout {bounded_repr(name)}")
    return TorchValue("layout", name.removeprefix("torch."))


# --------------------------------------------------------------------------------------------------------------
# TorchScript: the pure-data helpers its pickles call (torch.jit._pickle) and quantized tensors
# --------------------------------------------------------------------------------------------------------------


@dataclass
class PickledQTensor(PickledTensor):
    """A quantized tensor (``torch._utils._rebuild_qtensor``): its integer view and quantization parameters.

    ``quantization`` holds ``qscheme`` (``"per_tensor_affine"``, ``"per_channel_affine"`` or
    ``"per_channel_affine_float_qparams"``) and either ``scale`` and ``zero_point`` (numbers) or ``scales`` and
    ``zero_points`` (a :class:`PickledTensor` each, or a tuple of numbers in old files) and ``axis``.
    """

    quantization: dict[str, Any] = field(default_factory=dict)


_QSCHEMES = (
    "per_tensor_affine",
    "per_channel_affine",
    "per_channel_affine_float_qparams",
    "per_tensor_symmetric",
    "per_channel_symmetric",
)
_SAVED_QSCHEMES = ("per_tensor_affine", "per_channel_affine", "per_channel_affine_float_qparams")
_SUB_BYTE = ("quint4x2", "quint2x4")  # two or four elements per byte: views cannot be checked element-wise


def _ts_list(kinds: tuple[type, ...], what: str) -> Callable[..., list[Any]]:
    """``torch.jit._pickle.build_<what>list(data)``: the list itself, its elements checked to be ``kinds``."""

    def build(data: Any = None, *_: Any) -> list[Any]:
        if not isinstance(data, (list, tuple)):
            raise _bad(f"torch.jit._pickle.build_{what}list got {bounded_repr(data)}, not a list")
        if kinds and not all(type(v) in kinds for v in data):
            raise _bad(f"torch.jit._pickle.build_{what}list got a list holding something else than {what}s")
        return list(data)

    return build


def _ts_restore_type_tag(value: Any = None, type_str: Any = None, *_: Any) -> Any:
    """``torch.jit._pickle.restore_type_tag(value, "List[int]")``: the tag only matters to TorchScript's types."""
    if not isinstance(type_str, str):
        raise _bad(f"torch.jit._pickle.restore_type_tag with type {bounded_repr(type_str)}, not a type name")
    return value


def _ts_tensor_id(index: Any = None, *_: Any) -> Stub:
    """``torch.jit._pickle.build_tensor_from_id(i)``: entry ``i`` of model.json's tensor table, as an inert stub."""
    if type(index) is not int or index < 0:
        raise _bad(f"torch.jit._pickle.build_tensor_from_id got {bounded_repr(index)}, not a tensor table index")
    return Stub("torch.jit._pickle.build_tensor_from_id", (index,))


def _qparam_values(value: Any, what: str) -> Any:
    """Per-channel scales or zero points: a tensor saved in the file, or (old files) a sequence of numbers."""
    if isinstance(value, PickledTensor) and not isinstance(value, PickledQTensor):
        return value
    if isinstance(value, (list, tuple)) and all(type(v) in (int, float) for v in value):
        return tuple(value)
    raise _bad(f"a quantized tensor has per-channel {what} {bounded_repr(value)}, not a tensor or a list of numbers")


def _rebuild_qtensor(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    qparams: Any,
    requires_grad: Any = False,
    hooks: Any = None,
    *extra: Any,
) -> Any:
    """A quantized tensor as data: its integer storage view plus scale and zero point(s); nothing is called."""
    _no_extra("torch._utils._rebuild_qtensor", extra)
    _check_hooks(hooks)
    st = _storage_of(storage)
    if dtypes.get(st.dtype).kind != "quantized":
        raise _bad(f"a quantized tensor was rebuilt from a {st.dtype} storage, not a quantized one")
    if not isinstance(qparams, tuple) or not qparams:
        raise _bad(f"a quantized tensor has quantizer parameters {bounded_repr(qparams)}, not a tuple")
    head = qparams[0]
    saved = isinstance(head, TorchValue) and head.kind == "qscheme" and head.value in _SAVED_QSCHEMES
    scheme = head.value if saved else None
    quant: dict[str, Any]
    if scheme is None or st.dtype in _SUB_BYTE:
        # A scheme torch never saved, or elements packed several to a byte: kept inert, so that it is reported
        # (as a quantized tensor torchweights does not read), not guessed at.
        return Stub("torch._utils._rebuild_qtensor", (storage, offset, size, stride, qparams, requires_grad))
    if scheme == "per_tensor_affine":
        if len(qparams) != 3 or type(qparams[1]) not in (int, float) or type(qparams[2]) is not int:
            raise _bad(
                f"a per-tensor quantized tensor needs (qscheme, scale, zero_point), found {bounded_repr(qparams)}"
            )
        quant = {"qscheme": scheme, "scale": float(qparams[1]), "zero_point": qparams[2]}
    else:
        if len(qparams) != 4:
            raise _bad(
                "a per-channel quantized tensor needs (qscheme, scales, zero_points, axis), "
                f"found {bounded_repr(qparams)}"
            )
        quant = {
            "qscheme": scheme,
            "scales": _qparam_values(qparams[1], "scales"),
            "zero_points": _qparam_values(qparams[2], "zero points"),
            "axis": _int(qparams[3], "quantization axis"),
        }
    base = _tensor(st, offset, size, stride, requires_grad=requires_grad)
    return PickledQTensor(
        base.storage, base.dtype, base.storage_offset, base.shape, base.stride, base.requires_grad, quantization=quant
    )


def _build_table() -> dict[str, Any]:
    table: dict[str, Any] = {}

    def add(name: str, call: Callable[..., Any], new: Callable[..., Any] | None = None) -> None:
        table[name] = _Ctor(name, call, new)

    for module in ("torch._utils",):
        add(f"{module}._rebuild_tensor", _rebuild_tensor)
        add(f"{module}._rebuild_tensor_v2", _rebuild_tensor_v2)
        add(f"{module}._rebuild_tensor_v3", _rebuild_tensor_v3)
        add(f"{module}._rebuild_parameter", _as_parameter)
        add(f"{module}._rebuild_parameter_with_state", _as_parameter_with_state)
        add(f"{module}._rebuild_meta_tensor_no_storage", _rebuild_meta)
        add(f"{module}._rebuild_device_tensor_from_cpu_tensor", _rebuild_device_tensor)
        for kind in (
            "_rebuild_qtensor",
            "_rebuild_sparse_csr_tensor",
            "_rebuild_nested_tensor",
            "_rebuild_wrapper_subclass",
            "_rebuild_device_tensor_from_numpy",
            "_rebuild_xla_tensor",
            "_rebuild_mps_tensor",
            "_rebuild_mtia_tensor",
        ):
            add(f"{module}.{kind}", _unsupported_tensor(f"{module}.{kind}"))
    add("torch._tensor._rebuild_from_type_v2", _rebuild_from_type_v2)
    add("torch._tensor._rebuild_from_type", _rebuild_from_type_v2)
    add("torch.nn.parameter.Parameter", _as_parameter)
    add("torch.nn.parameter.Buffer", _rebuild_device_tensor)
    add("torch.Tensor", _rebuild_device_tensor)
    add("torch._tensor.Tensor", _rebuild_device_tensor)
    add("torch.Size", _torch_size)
    add("torch.device", _torch_device)
    add("torch.serialization._get_layout", _get_layout)
    table.update(_storage_types())
    table.update(_torch_constants())

    builtin_types: tuple[tuple[str, Any, Callable[[Callable[..., Any], str], Callable[..., Any]]], ...] = (
        ("set", set, _collection),
        ("frozenset", frozenset, _collection),
        ("tuple", tuple, _collection),
        ("list", list, _collection),
        ("dict", dict, _collection),
        ("bytearray", bytearray, _byte_string),
        ("bytes", bytes, _byte_string),
        ("complex", complex, _pure),
        ("slice", slice, _pure),
        ("range", range, _pure),
        ("int", int, _pure),
        ("float", float, _pure),
        ("str", str, _pure),
        ("bool", bool, _pure),
    )
    for name, fn, wrap in builtin_types:
        ctor = _Ctor(f"builtins.{name}", wrap(fn, f"builtins.{name}"))
        ctor.fn = fn  # type: ignore[attr-defined]
        table[f"builtins.{name}"] = ctor
    table["builtins.Ellipsis"] = Ellipsis
    table["builtins.NotImplemented"] = NotImplemented
    add("builtins.object", lambda *a: Stub("builtins.object", a))
    add("builtins.getattr", _getattr)
    add("_codecs.encode", _codecs_encode)
    add("copyreg._reconstructor", _copyreg_reconstructor)
    add("copyreg.__newobj__", _copyreg_newobj)
    add("copyreg.__newobj_ex__", _copyreg_newobj_ex)
    add("collections.OrderedDict", _ordered_dict)
    add("collections.defaultdict", _defaultdict)
    add("collections.Counter", _counter)
    add("collections.deque", _deque)
    add("argparse.Namespace", _namespace)
    add("types.SimpleNamespace", _simple_namespace)
    # Concrete paths come back as pure paths: same text and parts, no file system methods. Python 3.13 pickles them
    # from ``pathlib._local``.
    for cls_name, cls in (
        ("PosixPath", pathlib.PurePosixPath),
        ("PurePosixPath", pathlib.PurePosixPath),
        ("WindowsPath", pathlib.PureWindowsPath),
        ("PureWindowsPath", pathlib.PureWindowsPath),
        ("Path", pathlib.PurePosixPath),
        ("PurePath", pathlib.PurePosixPath),
    ):
        for module in ("pathlib", "pathlib._local"):
            add(f"{module}.{cls_name}", _pure_path(cls))
    value_classes: tuple[tuple[str, Callable[..., Any]], ...] = (
        ("datetime.datetime", datetime.datetime),
        ("datetime.date", datetime.date),
        ("datetime.time", datetime.time),
        ("datetime.timedelta", datetime.timedelta),
    )
    for name, value_cls in value_classes:
        add(name, _pure(value_cls, name))
    for name, value_cls in (("decimal.Decimal", decimal.Decimal), ("fractions.Fraction", fractions.Fraction)):
        add(name, _bounded_number(value_cls, name))
    add("datetime.timezone", _timezone)
    for np_core in ("numpy.core", "numpy._core"):
        add(f"{np_core}.multiarray._reconstruct", _np_reconstruct)
        add(f"{np_core}.multiarray.scalar", _np_scalar)
        add(f"{np_core}.numeric._frombuffer", _np_frombuffer)
    add("numpy.dtype", _np_dtype)
    add("numpy.ndarray", lambda *a: Stub("numpy.ndarray", a))
    # TorchScript: torch.jit._pickle's list builders and type tags (pure data; nothing else under torch.jit is
    # safe), quantized tensors (replacing the inert _rebuild_qtensor above) and the qschemes they name.
    for kind, types_ in (("int", (int,)), ("double", (float,)), ("bool", (bool,)), ("tensor", ())):
        add(f"torch.jit._pickle.build_{kind}list", _ts_list(types_, kind))
    add("torch.jit._pickle.restore_type_tag", _ts_restore_type_tag)
    # torch 1.1-1.2 attributes.pkl: a tensor of model.json's tensor table, by index (resolved by the TorchScript
    # reader); torch.package: the loader named in the persistent id of an embedded TorchScript module, an inert
    # reference the package reader resolves by reading the module's pickles (calling it only makes a stub).
    add("torch.jit._pickle.build_tensor_from_id", _ts_tensor_id)
    table["torch.jit._script.unpackage_script_module"] = Global("torch.jit._script", "unpackage_script_module")
    add("torch._utils._rebuild_qtensor", _rebuild_qtensor)
    add("torch._utils._rebuild_sparse_tensor", _rebuild_sparse)
    add("torch.storage._load_from_bytes", _load_from_bytes)
    for scheme in _QSCHEMES:
        table[f"torch.{scheme}"] = TorchValue("qscheme", scheme)
    return table


SAFE_GLOBALS: dict[str, Any] = _build_table()
"""Every global a file may use without being allowed: ``module.qualname`` -> reconstructor or constant."""

_DANGEROUS_MODULES = frozenset(
    """os posix nt subprocess sys socket shutil importlib runpy pickle _pickle cPickle marshal ctypes code codeop
    pty commands webbrowser multiprocessing asyncio signal tempfile urllib urllib2 urllib3 http httplib ftplib
    smtplib telnetlib requests pip setuptools pydoc timeit bdb pdb trace cProfile profile platform sysconfig
    _posixsubprocess _winapi msvcrt winreg gc inspect dill joblib cloudpickle shelve dbm sqlite3 zipimport pkgutil
    site imp types threading _thread io _io operator functools copy glob fileinput linecache tarfile zipfile
    builtins_danger paramiko fabric yaml jinja2 mako pexpect sh xmlrpc socketserver select selectors mmap
    resource fcntl termios ensurepip venv distutils zipapp compileall py_compile _operator _functools _imp
    _frozen_importlib _frozen_importlib_external _ctypes _socket _ssl ssl _multiprocessing _posixshmem _signal
    _winreg _sqlite3 tkinter _tkinter atexit faulthandler _osx_support smtpd nntplib poplib imaplib
    asynchat asyncore cgi cgitb _xxsubinterpreters _interpreters concurrent""".split()
)
_DANGEROUS_BUILTINS = frozenset(
    """eval exec execfile compile open __import__ getattr setattr delattr globals locals vars input breakpoint
    help exit quit apply memoryview type super classmethod staticmethod property reload file""".split()
)
# Modules that are dangerous wherever they appear in a dotted name, since packages re-export them (``torch.os``).
_DANGEROUS_COMPONENTS = frozenset(
    """os sys subprocess builtins __builtin__ importlib pickle _pickle cPickle shutil socket posix nt ctypes marshal
    runpy pty multiprocessing codeop pdb webbrowser _posixsubprocess""".split()
)
_DANGEROUS_PREFIXES = (
    "torch.load",
    "torch.save",
    "torch.from_file",
    "torch.compile",
    "torch.export",
    "torch.library",
    "torch._ops",
    "torch.utils._python_dispatch",
    "logging.config",
    "numpy.lib._npyio_impl",
    "numpy.lib._datasource",
    "numpy.DataSource",
    "numpy.fromregex",
    "numpy.core.multiarray.fromfile",
    "numpy._core.multiarray.fromfile",
    "numpy.core.records.fromfile",
    "numpy._core.records.fromfile",
    "torch.serialization",
    "torch.hub",
    "torch.jit",
    "torch.package",
    "torch._C",
    "torch.ops",
    "torch.classes",
    "torch.utils.cpp_extension",
    "torch.utils.data",
    "torch._dynamo",
    "torch._inductor",
    "torch.fx",
    "torch.storage._load_from_bytes",
    "torch.distributed",
    "torch.multiprocessing",
    "torch.cuda.memory",
    "numpy.load",
    "numpy.loadtxt",
    "numpy.fromfile",
    "numpy.save",
    "numpy.savez",
    "numpy.savetxt",
    "numpy.genfromtxt",
    "numpy.memmap",
    "numpy.ctypeslib",
    "numpy.f2py",
    "numpy.distutils",
    "numpy.testing",
    "numpy.lib.npyio",
    "numpy.lib.format",
    "numpy.lib.utils",
    "pandas.io",
    "pandas.read_",
    "scipy.io",
    "keras",
    "tensorflow",
    "huggingface_hub",
    "transformers.utils.hub",
)


def _anything(args: tuple[Any, ...]) -> bool:
    return True


#: numpy's bit generator classes, by the names their pickles use (``numpy.random._pickle.BitGenerators``).
_NUMPY_BIT_GENERATORS = frozenset(
    {
        "numpy.random._mt19937.MT19937",
        "numpy.random._pcg64.PCG64",
        "numpy.random._pcg64.PCG64DXSM",
        "numpy.random._philox.Philox",
        "numpy.random._sfc64.SFC64",
    }
)
_NUMPY_BIT_GENERATOR_NAMES = frozenset(name.rsplit(".", 1)[1] for name in _NUMPY_BIT_GENERATORS)


def _bit_generator_class(args: tuple[Any, ...]) -> bool:
    """``__bit_generator_ctor(bit_generator)`` calls ``bit_generator()`` when it is a class: only instantiation
    when it is one of numpy's bit generators (or a name numpy looks up in its own table)."""
    if not args:
        return True
    arg = args[0]
    return len(args) == 1 and (
        (isinstance(arg, Global) and arg.qualname in _NUMPY_BIT_GENERATORS)
        or (type(arg) is str and arg in _NUMPY_BIT_GENERATOR_NAMES)
    )


def _bit_generator(args: tuple[Any, ...]) -> bool:
    """``__randomstate_ctor(bit_generator, bit_generator_ctor)`` / ``__generator_ctor(...)``: given a bit generator
    (what ``__bit_generator_ctor`` returned) or a name, it only wraps it; a second argument is a callable the
    pickle chose, which it would call."""
    if not args:
        return True
    arg = args[0]
    return len(args) == 1 and (
        (isinstance(arg, Stub) and arg.cls in _NUMPY_BIT_GENERATORS | {"numpy.random._pickle.__bit_generator_ctor"})
        or (type(arg) is str and arg in _NUMPY_BIT_GENERATOR_NAMES)
    )


def _seed_sequence(args: tuple[Any, ...]) -> bool:
    """Cython's ``__pyx_unpickle_SeedSequence(type, checksum, state)``: ``SeedSequence.__new__(type)`` and its
    fields set from ``state``; instantiation when ``type`` is ``SeedSequence`` itself."""
    cls = args[0] if len(args) == 3 else None
    return isinstance(cls, Global) and cls.qualname == "numpy.random.bit_generator.SeedSequence"


#: Names of other packages, checked by hand in their sources, that pickle calls with arguments but that only
#: instantiate a class, as NEWOBJ does: "known" for scan, inert stubs for loading like every other global. Each maps
#: to the test its arguments must pass for the call to be only that; called any other way, it is a dangerous call.
#:
#: * ``numpy.ma.core._mareconstruct(subtype, baseclass, shape, dtype)``: ``ndarray.__new__(baseclass, ...)`` and
#:   ``subtype.__new__(subtype, data, mask=..., dtype=...)``.
#: * ``functools.partial(func, *args)``: makes a partial object; nothing is called until code calls the object
#:   (a pickle that calls it is a call of a stub: a dangerous call). ``func`` is a global named in the pickle,
#:   judged by its own name.
#: * ``numpy.random._pickle.__bit_generator_ctor`` / ``__randomstate_ctor`` / ``__generator_ctor`` (how
#:   ``RandomState`` and ``default_rng()`` pickle), numpy's bit generator classes and Cython's
#:   ``__pyx_unpickle_SeedSequence``: instantiation of numpy's own classes, with the arguments numpy writes
#:   (:func:`_bit_generator_class`, :func:`_bit_generator`, :func:`_seed_sequence`). ``__randomstate_ctor`` and
#:   ``__generator_ctor`` also accept a callable to call: that form is a dangerous call.
_KNOWN_CALLS: dict[str, Callable[[tuple[Any, ...]], bool]] = {
    "numpy.ma.core._mareconstruct": _anything,
    "functools.partial": _anything,
    "numpy.random._pickle.__bit_generator_ctor": _bit_generator_class,
    "numpy.random._pickle.__randomstate_ctor": _bit_generator,
    "numpy.random._pickle.__generator_ctor": _bit_generator,
    "numpy.random.bit_generator.__pyx_unpickle_SeedSequence": _seed_sequence,
    "numpy.random.bit_generator.SeedSequence": _anything,
    "numpy.random.mtrand.RandomState": _anything,
    "numpy.random._generator.Generator": _anything,
    **dict.fromkeys(_NUMPY_BIT_GENERATORS, _anything),
}

#: torch.package's mangle prefix (``<torch_package_0>.models.Net``)
_TORCH_PACKAGE_MANGLE = re.compile(r"^(<torch_package_\d+>\.)+")


def _enum_lookup(args: tuple[Any, ...]) -> bool:
    """``args`` are what ``Enum.__reduce_ex__`` gives its class: one plain value (``Color(1)``, ``Kind("a")``)."""
    return len(args) == 1 and (args[0] is None or type(args[0]) in (str, int, float, bool))


def classify_global(name: str) -> str:
    """Classify a pickle global (``module.qualname``) as ``"safe"``, ``"known"``, ``"dangerous"`` or ``"unknown"``.

    ``safe``: in :data:`SAFE_GLOBALS`; torchweights reconstructs it as data. ``dangerous``: runs code, touches
    files, processes, the network or the import machinery; it is refused. ``known``: one of torch's own module
    classes or the types and functions their pickles hold (:data:`~torchweights.unpickle.torch_classes.TORCH_CLASSES`):
    never imported, kept as an inert stub, and no warning. ``unknown``: any other class or function (for example a
    model class from the project that saved the file): never imported, kept as an inert stub.

    The name alone decides; what a pickle does with it is judged where it does it (a global *called* with
    arguments that is neither safe nor known is a dangerous call for ``scan``, whatever its name).
    """
    if name.startswith("<torch_package_"):
        # torch.package mangles its modules' names and demangles them before importing: judge what it imports
        demangled = _TORCH_PACKAGE_MANGLE.sub("", name)
        return "unknown" if demangled == name else classify_global(demangled)
    if name in SAFE_GLOBALS:
        return "safe"
    module, _, attr = name.partition(".")
    parts = name.split(".")
    if any(p.startswith("__") and p.endswith("__") and p not in ("__main__",) for p in parts[1:]):
        return "dangerous"
    if name in _KNOWN_CALLS:
        return "known"  # exact names checked by hand (``numpy.random._pickle`` is numpy's module, not ``_pickle``)
    if any(p in _DANGEROUS_COMPONENTS for p in parts[1:]):
        return "dangerous"  # a module re-exported by another (``torch.os.system``)
    if module in ("builtins", "__builtin__"):
        return "dangerous" if attr.split(".")[0] in _DANGEROUS_BUILTINS or "." in attr else "unknown"
    if name in TORCH_CLASSES:
        return "known"  # exact names generated from torch, before the broad prefixes (``torch._C._nn.gelu``)
    if module == "__torch__" and not name.startswith("__torch__.torch.classes."):
        # a TorchScript compiled type (the archive's own classes, compiled from its code/): no Python package is
        # imported for it. Custom C++ classes (``__torch__.torch.classes.NS.X``) stay unknown: a native library
        # defines them, and the archive's code is analysed on its own.
        return "known"
    if module in _DANGEROUS_MODULES or module == "copyreg" or module == "_codecs":
        return "dangerous"
    if any(
        name == p or name.startswith(p + ".") or (p.endswith("_") and name.startswith(p)) for p in _DANGEROUS_PREFIXES
    ):
        return "dangerous"
    if name in KNOWN_ENUMS:
        return "known"
    return "unknown"


# --------------------------------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------------------------------


def _callable_name(obj: Any) -> str:
    if isinstance(obj, _Ctor):
        return obj.name
    if isinstance(obj, Global):
        return obj.qualname
    if isinstance(obj, Stub):
        return obj.cls
    return type(obj).__name__


_CALL_ERRORS = (
    TypeError,
    ValueError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    ArithmeticError,
    UnicodeError,
)


def _instantiate(cls: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *, new: bool) -> Any:
    """REDUCE / NEWOBJ: call a table entry, make a stub of anything else; never call the file's code."""
    if isinstance(cls, _Ctor):
        fn = cls.new if new else cls.call
        try:
            return fn(*args, **kwargs)
        except TorchWeightsError:
            raise
        except _CALL_ERRORS as exc:
            raise _bad(f"{cls.name} called with unexpected arguments: {bounded_repr(str(exc), 200)}") from None
    if isinstance(cls, _Allowed):
        return cls.make(args, kwargs, new=new)
    if isinstance(cls, (Global, Stub)):
        return Stub(_callable_name(cls), args, kwargs)
    raise _bad(f"the pickle calls {bounded_repr(cls)}, which is not callable")


class _Allowed:
    """A global the user allowed by name: the real object, imported and called as pickle would.

    Every object it makes is remembered in ``created`` (shared by one machine), so that BUILD restores the state of
    exactly those objects for real and of nothing else.
    """

    __slots__ = ("created", "name", "obj")

    def __init__(self, name: str, obj: Any, created: dict[int, Any]) -> None:
        self.name = name
        self.obj = obj
        self.created = created

    def _fail(self, exc: Exception) -> CorruptCheckpointError:
        return _bad(
            f"allowed global '{self.name}' failed on this file's data: {type(exc).__name__}: "
            f"{bounded_repr(str(exc), 200)}"
        )

    def make(self, args: tuple[Any, ...], kwargs: dict[str, Any], *, new: bool) -> Any:
        try:
            obj = self.obj.__new__(self.obj, *args, **kwargs) if new else self.obj(*args, **kwargs)
        except TorchWeightsError:
            raise
        except Exception as exc:  # the user's own code, called because they allowed it
            raise self._fail(exc) from None
        self.created[id(obj)] = obj
        return obj

    def reconstruct(self, base: Any, state: Any) -> Any:
        """``copyreg._reconstructor(cls, base, state)`` for an allowed class (protocols 0 and 1)."""
        base_type = getattr(base, "fn", None) if isinstance(base, _Ctor) else None
        try:
            if base_type is None:
                obj = object.__new__(self.obj)
            else:
                obj = base_type.__new__(self.obj, state)
                if base_type.__init__ is not object.__init__:
                    base_type.__init__(obj, state)
        except Exception as exc:
            raise self._fail(exc) from None
        self.created[id(obj)] = obj
        return obj


def _import_allowed(module: str, name: str, created: dict[int, Any]) -> _Allowed:
    try:
        obj: Any = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
    except Exception as exc:  # ImportError, AttributeError, or whatever the allowed module raises on import
        from ..errors import UnsupportedCheckpointError

        raise UnsupportedCheckpointError(
            f"'{module}.{name}' was allowed but cannot be imported here: {type(exc).__name__}: "
            f"{bounded_repr(str(exc), 200)}. Install the package that defines it, or leave it out of allow_globals "
            "to load it as an inert stub.",
            code="allowed-global-missing",
        ) from None
    return _Allowed(f"{module}.{name}", obj, created)


def _build(obj: Any, state: Any, created: dict[int, Any]) -> Any:
    """BUILD: set the state of an object; returns the object that stands in its place afterwards."""
    if isinstance(obj, Stub):
        if isinstance(obj.state, dict) and isinstance(state, dict):
            obj.state.update(state)
        else:
            obj.state = state
        return obj
    if isinstance(obj, _Pending):
        return obj.finish(state)
    if created.get(id(obj)) is obj:
        # An object made by a global the user allowed: restore it as pickle would.
        try:
            _real_build(obj, state)
        except TorchWeightsError:
            raise
        except Exception as exc:  # the user's own __setstate__
            raise _bad(
                f"restoring the state of an allowed {type(obj).__qualname__} failed: {bounded_repr(str(exc), 200)}"
            ) from None
        return obj
    if isinstance(obj, (argparse.Namespace, types.SimpleNamespace)):
        attrs = state[0] if isinstance(state, tuple) and state and isinstance(state[0], dict) else state
        if isinstance(attrs, dict):
            for key, value in attrs.items():
                if not isinstance(key, str):
                    raise _bad(f"{type(obj).__name__} attribute named by {bounded_repr(key)}, not a string")
                vars(obj)[key] = value  # into the instance dict: no descriptor (__class__, __dict__) is invoked
        return obj
    if isinstance(obj, (dict, list, set, collections.deque, PickledTensor)) and not state:
        return obj  # dict subclasses pickle an empty instance state; tensors carry theirs as arguments
    if isinstance(obj, collections.OrderedDict) and isinstance(state, dict):
        # state_dict() sets ``_metadata`` (per-module versions) on its OrderedDict: keep it as an attribute.
        # Never one that shadows a method (``items``): code reading the dict must keep getting a dict.
        for key, value in state.items():
            if (
                isinstance(key, str)
                and key.isidentifier()
                and not key.startswith("__")
                and not hasattr(collections.OrderedDict, key)
            ):
                setattr(obj, key, value)
        return obj
    raise _bad(f"BUILD on {bounded_repr(obj)}: this object has no state to set")


def _real_build(inst: Any, state: Any) -> None:
    """pickle's own BUILD (``_Unpickler.load_build``), for objects made by allowed globals only."""
    setstate = getattr(inst, "__setstate__", None)
    if setstate is not None:
        setstate(state)
        return
    slotstate = None
    if isinstance(state, tuple) and len(state) == 2:
        state, slotstate = state
    if state:
        inst.__dict__.update(state)
    if slotstate:
        for key, value in slotstate.items():
            setattr(inst, key, value)


_MARK = object()

#: Opcodes a pickle stream can start with: Python's unpickler needs no PROTO opcode (protocols 0 and 1 have none),
#: so ``\x8c\x05posix\x8c\x06system\x93...`` runs under ``pickle.load`` as well as ``cos\nsystem\n...``.
FIRST_OPCODES = frozenset(b"(cNIJKLFSVUXTG]})iplgRhjqBCMPr\x80\x82\x83\x84\x88\x89\x8a\x8b\x8c\x8d\x8e\x8f\x95\x96")

#: Most references one stream records (each distinct global once, every dangerous one).
MAX_REFERENCES = 10_000
#: Attributes whose assignment by BUILD changes what an object does rather than what it holds: under
#: ``pickle.load`` they turn a harmless-looking object into a call of something else later.
_LAUNDERING_ATTRIBUTES = frozenset(
    """__class__ __dict__ __setstate__ __reduce__ __reduce_ex__ __getattr__ __getattribute__ __setattr__
    __delattr__ __del__ __init__ __new__ __call__ __get__ __set__ __getitem__ __builtins__ __globals__ __code__
    __import__ __init_subclass__ __class_getitem__ __enter__ __exit__ __iter__ __next__ __eq__ __hash__
    __repr__ __str__ __format__ __len__ __bool__ __index__ __fspath__""".split()
)


class _Reader:
    """Bounds-checked cursor over a bytes-like buffer."""

    __slots__ = ("data", "end", "find", "pos")

    def __init__(self, data: bytes | memoryview, start: int, end: int) -> None:
        self.data = data
        self.pos = start
        self.end = end
        #: ``find(sub, start, end)`` over the same offsets as ``data``, searching in place: bytes, or the mapping
        #: (or bytes) a whole-buffer memoryview shows; None for other views, searched in growing copies.
        self.find: Callable[[bytes, int, int], int] | None = None
        if isinstance(data, (bytes, bytearray)):
            self.find = data.find
        else:
            base: Any = data.obj
            if hasattr(base, "find") and data.contiguous and data.itemsize == 1 and len(base) == data.nbytes:
                self.find = base.find

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise _bad(
                f"pickle data is truncated: an opcode at byte {self.pos} needs {n} more bytes, "
                f"{self.end - self.pos} remain",
                code="truncated",
            )
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return out

    def line(self, limit: int = 1 << 16) -> bytes:
        """The text argument of a protocol-0 opcode: the bytes up to the next newline (at most ``limit``)."""
        data = self.data
        start = self.pos
        stop = min(self.end, start + limit)
        if self.find is not None:
            idx = self.find(b"\n", start, stop)
        else:  # copy what is searched, in growing steps: a short line costs a short copy
            idx, lo, step = -1, start, 32
            while lo < stop and idx < 0:
                hi = min(stop, lo + step)
                found = bytes(data[lo:hi]).find(b"\n")
                idx, lo, step = (lo + found if found >= 0 else -1), hi, step * 4
        if idx < 0:
            if stop == self.end:
                raise _bad(f"pickle data is truncated: the text argument at byte {start} has no end", code="truncated")
            raise _bad(f"pickle text argument at byte {start} has no end of line within {limit} bytes")
        self.pos = idx + 1
        return bytes(data[start:idx])

    def u1(self) -> int:
        if self.pos >= self.end:
            raise _bad("pickle data is truncated", code="truncated")
        value = self.data[self.pos]
        self.pos += 1
        return int(value)

    def unpack(self, fmt: struct.Struct) -> Any:
        pos = self.pos
        if pos + fmt.size > self.end:
            self.take(fmt.size)  # raises the truncation error
        self.pos = pos + fmt.size
        return fmt.unpack_from(self.data, pos)[0]


_U2 = struct.Struct("<H")
_U4 = struct.Struct("<I")
_I4 = struct.Struct("<i")
_U8 = struct.Struct("<Q")
_F8 = struct.Struct(">d")


class _Stream:
    """What the reconstructors of the table need to know of the stream being read (:data:`_STREAM`).

    Attributes:
        py2_bytes: the Python 2 ``str`` payloads (``STRING``, ``BINSTRING``, ``SHORT_BINSTRING``) decoded as UTF-8
            that are not ASCII, by id: ``(text, bytes in the file)``. Text is read as UTF-8 as torch reads it, but
            numpy's reconstructors need the bytes themselves (``'é'`` may have been ``c3 a9`` or ``e9``).
        hashed: items of tuples checked (and so about to be hashed) as dict keys or set elements so far.
        max_work: ``Limits.max_pickle_opcodes``: the bound on ``hashed`` (and, in the machine, on opcodes).
    """

    __slots__ = ("hashed", "max_work", "py2_bytes")

    def __init__(self, max_work: int) -> None:
        self.py2_bytes: dict[int, tuple[str, bytes]] = {}
        self.hashed = 0
        self.max_work = max_work


#: The stream the machine of this thread (context) is reading, for the module-level reconstructors.
_STREAM: contextvars.ContextVar[_Stream | None] = contextvars.ContextVar("_STREAM", default=None)


def _over_budget(what: str, limit: int) -> ResourceLimitError:
    return ResourceLimitError(
        f"the pickle stream {what} more than the {limit:,} allowed (Limits.max_pickle_opcodes): reading it would take "
        "minutes of CPU. torch.save writes about 30 opcodes per tensor, so no weights file comes near; the file is "
        "hostile or holds tens of millions of Python objects. If you trust it, raise the limit: "
        "tw.open(path, limits=Limits(max_pickle_opcodes=...)).",
        code="limit-pickle-opcodes",
    )


def _decode_py2_str(raw: bytes, kept: dict[int, tuple[str, bytes]]) -> str:
    """A Python 2 ``str`` as text: UTF-8 when it is valid UTF-8 (its bytes then kept in ``kept``), else latin-1
    (which gives the bytes back)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")
    if not raw.isascii():
        kept[id(text)] = (text, raw)
    return text


def _text_int(raw: bytes) -> int:
    try:
        return int(raw.rstrip(b"L") or b"0")
    except ValueError:
        raise _bad(f"bad integer literal {raw[:40]!r} in pickle") from None


_MAX_KEY_DEPTH = 100
_MAX_KEY_NODES = 100_000


def _check_key(value: Any) -> None:
    """Refuse a dict key or set element whose hash would recurse too deep or take too long.

    Python hashes a tuple by hashing every element, recursively and without a depth guard: a key nested a million
    tuples deep crashes the interpreter, and a key of shared tuples nested 60 deep takes 2**60 steps.
    """
    if type(value) is not tuple:
        return
    pending = [(value, 1)]
    seen = 0
    stream = _STREAM.get()
    if stream is not None and stream.hashed > stream.max_work:
        raise _over_budget("hashes tuple items in dict keys and set elements", stream.max_work)
    while pending:
        tup, depth = pending.pop()
        seen += len(tup)
        if depth > _MAX_KEY_DEPTH or seen > _MAX_KEY_NODES:
            raise ResourceLimitError(
                f"a dict key or set element in the pickle is a tuple nested more than {_MAX_KEY_DEPTH} levels deep or "
                f"holding more than {_MAX_KEY_NODES} items; no real checkpoint has one. The file is malformed or "
                "hostile.",
                code="limit-depth",
            )
        for item in tup:
            if type(item) is tuple:
                pending.append((item, depth + 1))
    if stream is not None:
        stream.hashed += seen


_MAX_NESTING = 16


class _Nesting:
    """Bounds chains of deques, defaultdicts and numpy object arrays nested directly in one another.

    CPython frees those recursively in C, without the "trashcan" guard that lists, dicts, tuples and instances of
    Python classes have: a chain a few thousand deep crashes the interpreter when it is freed, whoever frees it.
    Guarded containers in between only help so much (the guard lets 50 of them nest before it defers), so direct
    chains are kept short: 50 x 16 unguarded frames stay far from the C stack's end. Every such container the
    machine makes is registered with its depth (and kept alive until the stream is read, so ids stay unique); one
    that grows deeper after being nested in another is refused, so no recorded depth can go stale.
    """

    def __init__(self) -> None:
        self.entries: dict[int, list[Any]] = {}  # id -> [object, depth, nested in another]

    @staticmethod
    def _items(obj: Any) -> Any:
        if isinstance(obj, collections.deque):
            return obj
        if isinstance(obj, collections.defaultdict):
            return list(obj.values())
        np = sys.modules.get("numpy")
        if np is not None and isinstance(obj, np.ndarray) and obj.dtype.hasobject:
            return obj.ravel()
        return None

    def _entry(self, obj: Any) -> list[Any] | None:
        entry = self.entries.get(id(obj))
        return entry if entry is not None and entry[0] is obj else None

    def _depth(self, items: Any, parent: Any) -> int:
        depth = 1
        for item in items:
            entry = self._entry(item) if item is not parent else None
            if entry is not None:
                entry[2] = True
                depth = max(depth, entry[1] + 1)
        if depth > _MAX_NESTING:
            raise ResourceLimitError(
                f"the pickle nests deques or numpy object arrays directly in one another more than {_MAX_NESTING} "
                "levels deep; no real checkpoint does. The file is malformed or hostile.",
                code="limit-depth",
            )
        return depth

    def note(self, obj: Any) -> Any:
        """Register ``obj`` if it is a new deque or object array; returns it."""
        items = self._items(obj)
        if items is not None and self._entry(obj) is None:
            self.entries[id(obj)] = [obj, self._depth(items, obj), False]
        return obj

    def grow(self, target: Any, items: list[Any]) -> None:
        """``items`` are about to be added to the deque or defaultdict ``target``."""
        entry = self._entry(target)
        if entry is None:
            self.note(target)
            entry = self._entry(target)
            assert entry is not None
        depth = self._depth(items, target)
        if depth > entry[1]:
            if entry[2]:
                raise _bad(
                    f"a {type(target).__name__} grew deeper after it was nested in another container; pickle never "
                    "writes that"
                )
            entry[1] = depth


class _Machine:
    def __init__(
        self,
        persistent_load: Callable[[Any], Any] | None,
        allow_globals: frozenset[str],
    ) -> None:
        self.persistent_load = persistent_load
        self.allow_globals = allow_globals
        self.globals: set[str] = set()
        self.dangerous: list[str] = []
        self.references: list[Reference] = []
        self.calls: list[Reference] = []  # calls pickle.load would make of dangerous or unvetted callables
        self.called: set[str] = set()
        self.at = 0  # offset of the opcode being executed, for references
        self.how = "GLOBAL"
        self.proto = 0
        self.created: dict[int, Any] = {}  # objects made by allowed globals, by id
        self.nesting = _Nesting()

    # -- globals ---------------------------------------------------------------------------------------------
    def find_global(self, module: str, name: str) -> Any:
        if not isinstance(module, str) or not isinstance(name, str):
            raise _bad("a pickle global must be named by two strings")
        if self.proto < 3:
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        qual = f"{module}.{name}"
        self.refer(qual, verdict="allowed" if qual in self.allow_globals else None)
        if qual in self.allow_globals:
            allowed = _import_allowed(module, name, self.created)
            return allowed if callable(allowed.obj) else allowed.obj
        entry = SAFE_GLOBALS.get(qual)
        if entry is not None:
            return entry
        return self.note(Global(module, name))

    def refer(
        self,
        qual: str,
        how: str | None = None,
        verdict: str | None = None,
        *,
        refuse: bool = True,
        arguments: str | None = None,
    ) -> None:
        """Record that the opcode at ``self.at`` references ``qual``; flag it if dangerous (and ``refuse``: a
        reference the stream fails on anyway is an alarm for scan, and a malformed pickle for loading)."""
        verdict = verdict or classify_global(qual)
        how = how or self.how
        if qual not in self.globals or verdict == "dangerous":
            if len(self.references) < MAX_REFERENCES:
                self.references.append(Reference(qual, self.at, how, verdict, arguments))
        self.globals.add(qual)
        if verdict == "dangerous" and refuse and qual not in self.dangerous:
            self.dangerous.append(qual)

    def note(self, value: Any) -> Any:
        """Record a global reference the stream made (by name, or through ``getattr``); flag it if dangerous."""
        if type(value) is _Refused:
            # the call itself is the danger: reported where the stream named the callable (inner names: at the call)
            at = self.at
            self.at = next((r.offset for r in reversed(self.references) if r.name == value.call), at)
            self.refer(value.call, verdict="dangerous")
            self.at = at
            for name in value.names:
                self.refer(name, verdict="dangerous")
            return Stub(value.call, value.args)
        if type(value) is Global:
            qual = value.qualname
            if qual not in self.globals:
                self.refer(qual, "getattr" if self.how in ("REDUCE", "NEWOBJ", "NEWOBJ_EX", "OBJ") else None)
        else:
            self.nesting.note(value)
        return value

    def call(self, fn: Any, args: tuple[Any, ...], op: str) -> None:
        """A calling opcode (``REDUCE``, ``INST``, ``OBJ``, ``NEWOBJ``, ``NEWOBJ_EX``) applies ``fn`` to ``args``:
        record what ``pickle.load`` would run there. Loading itself never calls it (a stub is made).

        Every call of a dangerous callable is kept in :attr:`calls` (scan's evidence that bytes which merely
        might be a pickle really are an exploit). A global *called as a function with arguments* (``REDUCE``,
        ``INST``, ``OBJ``) that is neither in the table nor one of torch's known classes is an allow-list miss:
        it is recorded as a dangerous reference (with its arguments) whatever its name, since no deny list names
        every function that runs commands or reads files. Class instantiation (``NEWOBJ``, ``NEWOBJ_EX``,
        ``copyreg.__newobj__``, ``copyreg._reconstructor`` of a builtin base) is not a call of that kind, nor is
        ``BUILD``. The refusal list is untouched: loading behaves as it always did.
        """
        if isinstance(fn, _Ctor):
            if fn.name == "copyreg._reconstructor" and len(args) >= 3 and isinstance(args[1], (Global, Stub)):
                # copyreg._reconstructor(cls, base, state) runs base.__new__(cls, state) and base.__init__(obj, state)
                if args[2] is not None:
                    self.unvetted(_callable_name(args[1]), op, (args[2],))
            elif fn.name in ("copyreg.__newobj__", "copyreg.__newobj_ex__") and args:
                self.call(args[0], (), "NEWOBJ")
            return
        if isinstance(fn, Global):
            if classify_global(fn.qualname) == "dangerous":
                self.calls.append(Reference(fn.qualname, self.at, op, "dangerous", _arguments(args)))
            elif args and op in ("REDUCE", "INST", "OBJ"):
                self.unvetted(fn.qualname, op, args)
        elif isinstance(fn, Stub) and op in ("REDUCE", "INST", "OBJ"):
            # calling what an earlier call returned, even without arguments (a ``functools.partial`` runs its
            # function with the arguments it holds)
            self.unvetted(f"{fn.cls}(...)", op, args)

    def unvetted(self, name: str, op: str, args: tuple[Any, ...]) -> None:
        """``name`` is called with ``args`` where ``pickle.load`` runs the file: dangerous unless safe or known."""
        verdict = classify_global(name)
        if verdict == "safe" or (
            verdict == "known"
            and (
                (name in _KNOWN_CALLS and _KNOWN_CALLS[name](args))  # a reconstructor that only instantiates
                or TORCH_CLASSES.get(name, "function") != "function"  # a torch class
                or (name in KNOWN_ENUMS and _enum_lookup(args))  # an Enum member by value: a lookup, nothing else
            )
        ):
            return
        text = _arguments(args)
        self.calls.append(Reference(name, self.at, op, "dangerous", text))
        # a dangerous name was flagged where it was named (and a call of what it returned with it)
        if name.removesuffix("(...)") not in self.dangerous and name not in self.called:
            self.called.add(name)
            self.refer(name, op, "dangerous", refuse=False, arguments=text)

    def laundering(self, obj: Any, state: Any) -> bool:
        """BUILD that would change code rather than data under ``pickle.load``: flag it; True when ``obj`` is a
        global (a module, class or function), whose attributes BUILD would overwrite."""
        if isinstance(obj, (Global, _Ctor, _Allowed, type, types.ModuleType)):
            name = f"{_callable_name(obj)} (attributes set by BUILD)"
            self.refer(name, "BUILD", "dangerous")
            self.calls.append(Reference(name, self.at, "BUILD", "dangerous"))
            return True
        # ``(state, slotstate)``: pickle sets slot state with ``setattr`` (descriptors run; ``__class__`` swaps the
        # class), while a dict state only fills the instance ``__dict__``.
        slots = state[1] if isinstance(state, tuple) and len(state) == 2 else None
        if isinstance(slots, dict):
            for key in slots:
                if isinstance(key, str) and key in _LAUNDERING_ATTRIBUTES:
                    owner = _callable_name(obj)
                    if not isinstance(obj, (Global, Stub, _Ctor)):
                        owner = f"{type(obj).__module__}.{type(obj).__qualname__}"
                    self.refer(f"{owner}.{key} (set by BUILD)", "BUILD", "dangerous")
                    self.calls.append(Reference(f"{owner}.{key} (set by BUILD)", self.at, "BUILD", "dangerous"))
        return False

    def extension(self, code: int) -> Any:
        key = copyreg._inverted_registry.get(code)  # type: ignore[attr-defined]
        if key is None:
            # ``pickle.load`` resolves it through the loading process's copyreg registry, which we cannot know: any
            # process where a library registered the code would call whatever it names. torch never writes these.
            self.refer(f"copyreg extension code {code}", "EXT", "dangerous", refuse=False)
            raise _bad(f"pickle uses extension code {code}, which is not registered")
        return self.find_global(*key)

    # -- run ---------------------------------------------------------------------------------------------------
    def run(self, data: bytes | memoryview, start: int, end: int, stream: _Stream) -> UnpickleResult:
        r = _Reader(data, start, end)
        stack: list[Any] = []
        metastack: list[list[Any]] = []
        memo: dict[int, Any] = {}
        pending_memo: dict[int, list[int]] = {}
        count = 0

        def pop_mark() -> list[Any]:
            # Rebinds ``stack``: never call it inside an expression that already looked ``stack`` up.
            nonlocal stack
            if not metastack:
                raise _bad(f"pickle opcode at byte {r.pos - 1} needs a MARK that is not there")
            items = stack
            stack = metastack.pop()
            return items

        def top() -> Any:
            if not stack:
                raise _bad(f"pickle stack underflow at byte {r.pos - 1}")
            return stack[-1]

        def pop() -> Any:
            if not stack:
                raise _bad(f"pickle stack underflow at byte {r.pos - 1}")
            return stack.pop()

        def replace(old: Any, new: Any) -> None:
            # BUILD may turn a pending value into a new object: update the memo slots that hold the old one.
            for key in pending_memo.pop(id(old), ()):
                if memo.get(key) is old:
                    memo[key] = new

        def setitems(target: Any, items: list[Any]) -> None:
            if len(items) % 2:
                raise _bad("SETITEMS needs key/value pairs")
            dest = target.dictitems if isinstance(target, Stub) else target
            if not isinstance(dest, dict):
                raise _bad(f"SETITEM on {type(target).__name__}, which is not a dict")
            if isinstance(dest, collections.defaultdict):
                self.nesting.grow(dest, items[1::2])
            try:
                for i in range(0, len(items), 2):
                    _check_key(items[i])
                    dest[items[i]] = items[i + 1]
            except TypeError as exc:
                raise _bad(f"bad dict key in pickle: {bounded_repr(str(exc), 200)}") from None

        def extend(target: Any, items: list[Any]) -> None:
            if isinstance(target, Stub):
                target.items.extend(items)
            elif isinstance(target, list):
                target.extend(items)
            elif isinstance(target, collections.deque):
                self.nesting.grow(target, items)
                target.extend(items)
            else:
                raise _bad(f"APPEND on {type(target).__name__}, which is not a list")

        def push_memo(key: int, value: Any) -> None:
            memo[key] = value
            if isinstance(value, _Pending):
                pending_memo.setdefault(id(value), []).append(key)

        data, end = r.data, r.end
        py2_bytes, max_opcodes = stream.py2_bytes, stream.max_work
        while True:
            pos = r.pos
            if pos >= end:
                raise _bad("pickle data ended without a STOP opcode: the file is truncated", code="truncated")
            op = data[pos]
            r.pos = pos + 1
            count += 1
            if count > max_opcodes:
                raise _over_budget("executes opcodes", max_opcodes)
            # The most frequent opcodes of torch.save pickles come first (an if chain is tested in order).
            if op == 0x72 or op == 0x71 or op == 0x70:  # LONG_BINPUT, BINPUT, PUT
                key = r.unpack(_U4) if op == 0x72 else r.u1() if op == 0x71 else _text_int(r.line())
                push_memo(key, top())
            elif op == 0x68 or op == 0x6A or op == 0x67:  # BINGET, LONG_BINGET, GET
                key = r.u1() if op == 0x68 else r.unpack(_U4) if op == 0x6A else _text_int(r.line())
                if key not in memo:
                    raise _bad(f"pickle reads memo slot {key}, which was never written")
                stack.append(memo[key])
            elif op == 0x4D:  # BININT2
                stack.append(r.unpack(_U2))
            elif op in (0x58, 0x8C, 0x8D):  # BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
                n = r.unpack(_U4) if op == 0x58 else r.u1() if op == 0x8C else r.unpack(_U8)
                try:
                    stack.append(r.take(n).decode("utf-8", "surrogatepass"))
                except UnicodeDecodeError:
                    raise _bad(f"pickle string at byte {r.pos - n} is not valid UTF-8") from None
            elif op == 0x28:  # MARK
                metastack.append(stack)
                stack = []
            elif op == 0x74:  # TUPLE
                items = pop_mark()
                stack.append(tuple(items))
            elif op == 0x4B:  # BININT1
                stack.append(r.u1())
            elif op == 0x52:  # REDUCE
                self.at, self.how = r.pos - 1, "REDUCE"
                args = pop()
                fn = pop()
                if not isinstance(args, tuple):
                    raise _bad("REDUCE arguments are not a tuple")
                if type(fn) is not _Ctor or fn.name.startswith("copyreg."):
                    self.call(fn, args, "REDUCE")
                stack.append(self.note(_instantiate(fn, args, {}, new=False)))
            elif op in (0x85, 0x86, 0x87):  # TUPLE1..3
                n = op - 0x84
                if len(stack) < n:
                    raise _bad("pickle stack underflow building a tuple")
                items = stack[-n:]
                del stack[-n:]
                stack.append(tuple(items))
            elif op == 0x51:  # BINPERSID
                stack.append(self.persistent(pop()))
            elif op == 0x89:
                stack.append(False)
            elif op == 0x29:  # EMPTY_TUPLE
                stack.append(())
            elif op == 0x4A:  # BININT
                stack.append(r.unpack(_I4))
            elif op == 0x94:  # MEMOIZE
                push_memo(len(memo), top())
            elif op == 0x7D:  # EMPTY_DICT
                stack.append({})
            elif op == 0x75:  # SETITEMS
                items = pop_mark()
                setitems(top(), items)
            elif op == 0x73:  # SETITEM
                value = pop()
                key = pop()
                setitems(top(), [key, value])
            elif op == 0x5D:  # EMPTY_LIST
                stack.append([])
            elif op == 0x65:  # APPENDS
                items = pop_mark()
                extend(top(), items)
            elif op == 0x61:  # APPEND
                item = pop()
                extend(top(), [item])
            elif op == 0x4E:  # NONE
                stack.append(None)
            elif op == 0x88:
                stack.append(True)
            elif op == 0x62:  # BUILD
                self.at, self.how = r.pos - 1, "BUILD"
                state = pop()
                obj = pop()
                if self.laundering(obj, state):
                    stack.append(obj)  # nothing is set: the stream is refused once it has been read
                    continue
                new = _build(obj, state, self.created)
                if new is not obj:
                    self.nesting.note(new)
                    replace(obj, new)
                stack.append(new)
            elif op == 0x63:  # GLOBAL
                self.at, self.how = r.pos - 1, "GLOBAL"
                module = r.line().decode("utf-8", "replace")
                name = r.line().decode("utf-8", "replace")
                stack.append(self.find_global(module, name))
            elif op == 0x93:  # STACK_GLOBAL
                self.at, self.how = r.pos - 1, "STACK_GLOBAL"
                name = pop()
                module = pop()
                stack.append(self.find_global(module, name))
            elif op == 0x81:  # NEWOBJ
                self.at, self.how = r.pos - 1, "NEWOBJ"
                args = pop()
                cls = pop()
                if not isinstance(args, tuple):
                    raise _bad("NEWOBJ arguments are not a tuple")
                self.call(cls, args, "NEWOBJ")
                stack.append(self.note(_instantiate(cls, args, {}, new=True)))
            elif op == 0x95:  # FRAME
                r.take(8)
            elif op in (0x42, 0x43, 0x8E):  # BINBYTES, SHORT_BINBYTES, BINBYTES8
                n = r.unpack(_U4) if op == 0x42 else r.u1() if op == 0x43 else r.unpack(_U8)
                stack.append(r.take(n))
            elif op == 0x47:  # BINFLOAT
                stack.append(r.unpack(_F8))
            elif op == 0x80:  # PROTO
                self.proto = r.u1()
                if self.proto > 5:
                    raise _bad(f"unsupported pickle protocol {self.proto}")
            elif op == 0x2E:  # STOP '.'
                if not stack:
                    raise _bad("pickle STOP with an empty stack")
                value = stack.pop()
                return UnpickleResult(value, r.pos, self.globals, count)
            elif op == 0x30:  # POP
                if stack:
                    stack.pop()
                else:
                    pop_mark()
            elif op == 0x31:  # POP_MARK
                pop_mark()
            elif op == 0x32:  # DUP
                stack.append(top())
            elif op == 0x49:  # INT
                raw = r.line()
                stack.append(True if raw == b"01" else False if raw == b"00" else _text_int(raw))
            elif op == 0x4C:  # LONG
                stack.append(_text_int(r.line()))
            elif op == 0x8A:  # LONG1
                stack.append(int.from_bytes(r.take(r.u1()), "little", signed=True))
            elif op == 0x8B:  # LONG4
                n = r.unpack(_I4)
                if n < 0:
                    raise _bad("LONG4 with a negative length")
                stack.append(int.from_bytes(r.take(n), "little", signed=True))
            elif op == 0x46:  # FLOAT
                try:
                    stack.append(float(r.line()))
                except ValueError:
                    raise _bad("bad float literal in pickle") from None
            elif op == 0x53:  # STRING
                raw = r.line()
                if len(raw) < 2 or raw[0] != raw[-1] or raw[:1] not in (b"'", b'"'):
                    raise _bad("STRING opcode argument is not quoted")
                try:
                    decoded: Any = codecs.escape_decode(raw[1:-1])[0]
                except ValueError as exc:
                    raise _bad(f"STRING opcode argument has a bad escape: {exc}") from None
                stack.append(_decode_py2_str(decoded, py2_bytes))
            elif op == 0x54:  # BINSTRING
                n = r.unpack(_I4)
                if n < 0:
                    raise _bad("BINSTRING with a negative length")
                stack.append(_decode_py2_str(r.take(n), py2_bytes))
            elif op == 0x55:  # SHORT_BINSTRING
                stack.append(_decode_py2_str(r.take(r.u1()), py2_bytes))
            elif op == 0x56:  # UNICODE
                try:
                    stack.append(r.line().decode("raw-unicode-escape"))
                except UnicodeDecodeError as exc:
                    raise _bad(f"UNICODE opcode argument has a bad escape: {exc.reason}") from None
            elif op == 0x96:  # BYTEARRAY8
                stack.append(bytearray(r.take(r.unpack(_U8))))
            elif op in (0x97, 0x98):  # NEXT_BUFFER, READONLY_BUFFER
                raise _bad("pickle uses out-of-band buffers (protocol 5), which a checkpoint file cannot carry")
            elif op == 0x6C:  # LIST
                items = pop_mark()
                stack.append(items)
            elif op == 0x64:  # DICT
                items = pop_mark()
                d: dict[Any, Any] = {}
                setitems(d, items)
                stack.append(d)
            elif op == 0x8F:  # EMPTY_SET
                stack.append(set())
            elif op == 0x90:  # ADDITEMS
                items = pop_mark()
                target = top()
                if isinstance(target, Stub):  # a set subclass
                    target.items.extend(items)
                    continue
                if not isinstance(target, set):
                    raise _bad("ADDITEMS on something that is not a set")
                try:
                    for item in items:
                        _check_key(item)
                    target.update(items)
                except TypeError as exc:
                    raise _bad(f"bad set item in pickle: {exc}") from None
            elif op == 0x91:  # FROZENSET
                try:
                    items = pop_mark()
                    for item in items:
                        _check_key(item)
                    stack.append(frozenset(items))
                except TypeError as exc:
                    raise _bad(f"bad set item in pickle: {exc}") from None
            elif op in (0x82, 0x83, 0x84):  # EXT1, EXT2, EXT4
                self.at, self.how = r.pos - 1, "EXT"
                code = r.u1() if op == 0x82 else r.unpack(_U2) if op == 0x83 else r.unpack(_I4)
                stack.append(self.extension(code))
            elif op == 0x92:  # NEWOBJ_EX
                self.at, self.how = r.pos - 1, "NEWOBJ_EX"
                kwargs = pop()
                args = pop()
                cls = pop()
                if not isinstance(args, tuple) or not isinstance(kwargs, dict):
                    raise _bad("NEWOBJ_EX arguments are not a tuple and a dict")
                if not all(isinstance(k, str) for k in kwargs):
                    raise _bad("NEWOBJ_EX keyword arguments are not named by strings")
                self.call(cls, args, "NEWOBJ_EX")
                stack.append(self.note(_instantiate(cls, args, kwargs, new=True)))
            elif op == 0x69:  # INST
                self.at, self.how = r.pos - 1, "INST"
                module = r.line().decode("utf-8", "replace")
                name = r.line().decode("utf-8", "replace")
                cls = self.find_global(module, name)
                items = pop_mark()
                self.call(cls, tuple(items), "INST")
                stack.append(self.note(_instantiate(cls, tuple(items), {}, new=False)))
            elif op == 0x6F:  # OBJ
                self.at, self.how = r.pos - 1, "OBJ"
                items = pop_mark()
                if not items:
                    raise _bad("OBJ without a class")
                self.call(items[0], tuple(items[1:]), "OBJ")
                stack.append(self.note(_instantiate(items[0], tuple(items[1:]), {}, new=False)))
            elif op == 0x50:  # PERSID
                stack.append(self.persistent(r.line().decode("ascii", "replace")))
            else:
                raise _bad(f"unknown pickle opcode 0x{op:02x} at byte {r.pos - 1}: this is not a valid pickle")

    def persistent(self, pid: Any) -> Any:
        if self.persistent_load is None:
            raise _bad("the pickle refers to external data (persistent id) but this format has none")
        return self.persistent_load(pid)


def _execute(
    data: bytes | memoryview,
    start: int,
    end: int | None,
    persistent_load: Callable[[Any], Any] | None,
    allow_globals: frozenset[str],
    max_bytes: int,
    where: str,
    max_opcodes: int = DEFAULT_LIMITS.max_pickle_opcodes,
) -> tuple[_Machine, UnpickleResult | None, TorchWeightsError | None]:
    """Run one stream; every failure comes back as a torchweights error, never raised."""
    result: UnpickleResult | None = None
    stop = len(data) if end is None else min(end, len(data))
    if stop - start > max_bytes:
        # A pickle may legitimately be followed by other data (legacy format); only refuse if it runs past.
        stop_limit = start + max_bytes
    else:
        stop_limit = stop
    machine = _Machine(persistent_load, allow_globals)
    context = f" {where}" if where else ""
    failure: TorchWeightsError | None = None
    stream = _Stream(max_opcodes)
    token = _STREAM.set(stream)
    try:
        result = machine.run(data, start, stop_limit, stream)
        result.references = machine.references
    except CorruptCheckpointError as exc:
        if stop_limit < stop and exc.code == "truncated":
            failure = ResourceLimitError(
                f"pickle stream{context} is longer than the {max_bytes}-byte limit. If you trust the file, raise "
                "the limit: tw.open(path, limits=Limits(max_pickle_bytes=...)).",
                code="limit-pickle-size",
            )
        else:
            exc.message = f"{exc.message} (in {where})" if where else exc.message
            failure = exc
    except TorchWeightsError as exc:  # from persistent_load or an allowed global's import
        failure = exc
    except RecursionError:
        failure = ResourceLimitError(f"pickle stream{context} nests too deeply", code="limit-depth")
    except MemoryError:
        failure = ResourceLimitError(f"pickle stream{context} asks for more memory than available", code="limit-memory")
    except (*_CALL_ERRORS, struct.error) as exc:
        # Every opcode validates its operands; this is the backstop that keeps a malformed stream a
        # CorruptCheckpointError whatever slipped through.
        failure = _bad(f"malformed pickle stream{context}: {type(exc).__name__}: {bounded_repr(str(exc), 200)}")
    finally:
        _STREAM.reset(token)
    return machine, result, failure


def unpickle(
    data: bytes | memoryview,
    *,
    start: int = 0,
    end: int | None = None,
    persistent_load: Callable[[Any], Any] | None = None,
    allow_globals: frozenset[str] = frozenset(),
    max_bytes: int = 1 << 30,
    where: str = "",
    max_opcodes: int = DEFAULT_LIMITS.max_pickle_opcodes,
) -> UnpickleResult:
    """Run one pickle stream from ``data[start:end]`` without calling anything the file names.

    Args:
        data: the buffer (bytes or a memoryview over an mmap).
        start: offset of the first opcode.
        end: end of the readable region (default: end of ``data``).
        persistent_load: the format's resolver for persistent ids (storages); receives the id as unpickled.
        allow_globals: ``module.qualname`` names the user trusts: imported and called for real.
        max_bytes: refuse pickles longer than this.
        where: description of the stream for error messages (``"'model.pt' member 'archive/data.pkl'"``).
        max_opcodes: the CPU budget (:attr:`~torchweights.limits.Limits.max_pickle_opcodes`).

    Returns:
        The root object (with :class:`Stub`, :class:`PickledTensor` ... inside), where the stream ended, and
        every global referenced.

    Raises:
        UnsafeCheckpointError: the stream references known-dangerous globals (all of them are named).
        CorruptCheckpointError: the stream is not a valid pickle.
        ResourceLimitError: the stream is longer than ``max_bytes`` or needs more than ``max_opcodes`` of work.
    """
    machine, result, failure = _execute(data, start, end, persistent_load, allow_globals, max_bytes, where, max_opcodes)
    if machine.dangerous:
        # Refusing for safety takes precedence over any other problem: it is the one the user must know about.
        names = ", ".join(quote(n) for n in machine.dangerous)
        also = f" (The stream is also malformed: {failure.message})" if failure is not None else ""
        raise UnsafeCheckpointError(
            f"{where or 'the pickle'} references {plural(len(machine.dangerous), 'global')} that can run code or "
            f"touch the system: {names}. Nothing was executed. A weights file has no reason to call these; do not "
            "load it with torch.load either. If you wrote this file yourself and trust it, allow exactly these: "
            f"tw.load(path, allow_globals=[...])  (CLI: --allow-global NAME){also}",
            code="unsafe-global",
            names=tuple(machine.dangerous),
        ) from None
    if failure is not None:
        raise failure from None
    assert result is not None
    return result


@dataclass
class StreamScan:
    """What :func:`scan_stream` saw in one pickle stream.

    Attributes:
        references: every global named and every attribute-laundering BUILD, with opcode offsets.
        dangerous: the dangerous names among them, as ``unpickle`` would refuse them.
        value: the root object (inert), or None when the stream could not be read to its end.
        end: offset just past ``STOP``, or None.
        opcodes: opcodes executed.
        protocol: the pickle protocol the stream declared (0 when it has no PROTO opcode).
        error: why the stream could not be read to its end, or None.
        calls: the calls ``pickle.load`` would make of dangerous or unvetted callables (see ``_Machine.call``),
            in the order it would make them, each at its calling opcode; those the stream reached before any error.
    """

    references: list[Reference]
    dangerous: list[str]
    value: Any = None
    end: int | None = None
    opcodes: int = 0
    protocol: int = 0
    error: TorchWeightsError | None = None
    calls: list[Reference] = field(default_factory=list)


def scan_stream(
    data: bytes | memoryview,
    *,
    start: int = 0,
    end: int | None = None,
    persistent_load: Callable[[Any], Any] | None = None,
    max_bytes: int = 1 << 30,
    where: str = "",
    max_opcodes: int = DEFAULT_LIMITS.max_pickle_opcodes,
) -> StreamScan:
    """Read one pickle stream with the same machine and table as :func:`unpickle`, for ``scan``: nothing is
    imported (no global is allowed), dangerous references are reported instead of refused, and a malformed
    stream returns what was seen before the error together with the error."""
    machine, result, failure = _execute(data, start, end, persistent_load, frozenset(), max_bytes, where, max_opcodes)
    return StreamScan(
        references=machine.references,
        dangerous=list(machine.dangerous),
        value=None if result is None else result.value,
        end=None if result is None else result.end,
        opcodes=0 if result is None else result.opcodes,
        protocol=machine.proto,
        error=failure,
        calls=machine.calls,
    )

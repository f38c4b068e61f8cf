"""The safe reconstructors of Python's own globals: builtin types, stdlib value classes, ``copyreg`` and ``getattr``.

Builtin types and value classes (``datetime``, ``Decimal``, paths, namespaces, ``collections``) are called only on
plain data the machine made itself, never on a ``range`` or anything whose iteration or hashing could run code or
allocate without bound; ``builtins.getattr`` answers with an inert name instead of looking anything up; ``copyreg``'s
reconstructors instantiate the way ``NEWOBJ`` does (:func:`~.calls.instantiate`).
"""

from __future__ import annotations

import argparse
import codecs
import collections
import datetime
import importlib
import pathlib
import sys
import types
from collections.abc import Callable
from typing import Any

from .calls import Allowed, instantiate
from .guards import check_key
from .values import Ctor, Global, Stub, bad_pickle, bounded_repr, callable_name

__all__ = ["entries"]


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
)

#: Value classes of modules imported only when a file names them (``decimal`` and ``fractions`` cost ~2 ms to import,
#: on every load otherwise): ``(module, class)``.
_LAZY_VALUE_TYPES = (("decimal", "Decimal"), ("fractions", "Fraction"))


def _lazy_value(value: Any) -> bool:
    """Whether ``value`` is a ``Decimal`` or ``Fraction`` (its module imported already, or it could not exist)."""
    for module, name in _LAZY_VALUE_TYPES:
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(value, getattr(loaded, name)):
            return True
    return False


# Containers whose iteration runs no code from the file (a ``range`` could make ``list`` allocate without bound).
_CONCRETE = (str, bytes, bytearray, tuple, list, set, frozenset, dict)


def _primitive(value: Any, depth: int = 0) -> bool:
    if isinstance(value, _VALUE_TYPES) or _lazy_value(value):
        return True
    if isinstance(value, (tuple, list, frozenset, set)) and depth < 4:
        return all(_primitive(v, depth + 1) for v in value)
    return False


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
            raise bad_pickle(f"{_args_text(name, args)} is invalid: {bounded_repr(str(exc), 200)}") from None

    return call


_MAX_NUMBER_TEXT = 10_000
_MAX_NUMBER_BITS = 8192


def _bounded_number(module: str, attr: str, name: str) -> Callable[..., Any]:
    """``Decimal`` / ``Fraction``: pickle writes them from their text; arithmetic on integers of any size (a
    ``Fraction`` reduces by their gcd) would make a few megabytes of pickle take minutes. The class's module is
    imported on the first call (a file that names it), not with the table."""

    def call(*args: Any, **kwargs: Any) -> Any:
        for value in (*args, *kwargs.values()):
            too_long = isinstance(value, str) and len(value) > _MAX_NUMBER_TEXT
            too_big = type(value) is int and value.bit_length() > _MAX_NUMBER_BITS
            if too_long or too_big:
                raise bad_pickle(f"{name} of a number {bounded_repr(value)} larger than pickle ever writes for one")
        return _pure(getattr(importlib.import_module(module), attr), name)(*args, **kwargs)

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
                check_key(item[0] if fn is dict and isinstance(item, (tuple, list)) and item else item)
        try:
            return fn(*args, **kwargs)
        except (TypeError, ValueError) as exc:
            raise bad_pickle(f"{_args_text(name, args)} is invalid: {bounded_repr(str(exc), 200)}") from None

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
        raise bad_pickle(f"{_args_text('datetime.timezone', args)} is invalid: {exc}") from None


def _codecs_encode(text: Any, encoding: Any = "utf-8", *_: Any) -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise bad_pickle(f"_codecs.encode({bounded_repr(text)}, {bounded_repr(encoding)}) is not a plain bytes literal")
    try:
        return codecs.encode(text, encoding)
    except UnicodeError as exc:
        raise bad_pickle(f"_codecs.encode failed: {exc}") from None


def _ordered_dict(*args: Any) -> collections.OrderedDict[Any, Any]:
    result: collections.OrderedDict[Any, Any] = collections.OrderedDict()
    if args and isinstance(args[0], dict):
        result.update(args[0])
    elif args and isinstance(args[0], (list, tuple)):
        for pair in args[0]:
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise bad_pickle("OrderedDict items must be pairs")
            check_key(pair[0])
            result[pair[0]] = pair[1]
    return result


def _defaultdict(factory: Any = None, *args: Any) -> collections.defaultdict[Any, Any]:
    real = getattr(factory, "fn", None) if isinstance(factory, Ctor) else None
    if isinstance(factory, Allowed):
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
        raise bad_pickle("deque arguments must be a list and an optional int")
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
            raise bad_pickle("path parts must be strings")
        return cls(*parts)

    return make


def _getattr(obj: Any, name: Any, *default: Any) -> Any:
    """``builtins.getattr`` as pickle uses it (bound methods, enum members by name), answered without looking.

    The result is an inert reference named after what was asked for: ``getattr(<stub LazyLinear>, '_infer_parameters')``
    is the global ``torch.nn.modules.linear.LazyLinear._infer_parameters``. The machine classifies that name like any
    other global, so ``getattr(<global torch.os>, 'system')`` is refused as ``torch.os.system``.
    """
    if not isinstance(name, str) or not name:
        raise bad_pickle(f"getattr with attribute name {bounded_repr(name)}")
    if isinstance(obj, Global):
        return Global(obj.module, f"{obj.name}.{name}")
    if isinstance(obj, (Ctor, Stub)):
        owner = callable_name(obj)
        module, _, qual = owner.rpartition(".")
        return Global(module or owner, f"{qual}.{name}" if module else name)
    if name.startswith("__") and name.endswith("__"):
        # a dunder of a real value (``().__class__``): the first step of every sandbox escape
        return Global(type(obj).__module__, f"{type(obj).__qualname__}.{name}")
    return Stub("builtins.getattr", (obj, name, *default))


def _copyreg_reconstructor(cls: Any, base: Any = None, state: Any = None) -> Any:
    """Protocol 0/1 objects: ``cls`` made from ``base(state)``; ``state`` is the builtin value of a subclass."""
    if isinstance(cls, Ctor):
        return cls.new() if state is None else cls.new(state)
    if isinstance(cls, Allowed):
        return cls.reconstruct(base, state)
    stub = Stub(callable_name(cls))
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
    return instantiate(cls, args, {}, new=True)


def _copyreg_newobj_ex(cls: Any, args: Any = (), kwargs: Any = None) -> Any:
    return instantiate(cls, tuple(args or ()), dict(kwargs or {}), new=True)


def entries() -> dict[str, Any]:
    """Python's part of :data:`~torchweights.unpickle.table.SAFE_GLOBALS`: ``module.qualname`` -> reconstructor or
    constant."""
    table: dict[str, Any] = {}

    def add(name: str, call: Callable[..., Any]) -> None:
        table[name] = Ctor(name, call)

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
        ctor = Ctor(f"builtins.{name}", wrap(fn, f"builtins.{name}"))
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
    for module, attr in _LAZY_VALUE_TYPES:
        add(f"{module}.{attr}", _bounded_number(module, attr, f"{module}.{attr}"))
    add("datetime.timezone", _timezone)
    return table

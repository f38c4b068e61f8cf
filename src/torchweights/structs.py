"""``@structure``: torchweights' record classes, made without compiling code at import.

``dataclasses.dataclass`` writes each class's ``__init__``, ``__repr__``, ``__eq__``, ``__hash__`` (and, frozen,
``__setattr__``/``__delattr__``) as source text and compiles it when the class is defined: about 0.7-1 ms a class on
a small machine. The first ``load_into`` of a process defines about 30 such classes, which cost more than the rest of
the call (issue 14: the fixed cost of one call). ``@structure`` lets :mod:`dataclasses` do only the bookkeeping
(fields, defaults, ``__dataclass_fields__``, ``__match_args__``; about 0.05 ms a class), so ``dataclasses.fields``,
``replace``, ``asdict`` and ``is_dataclass`` work on these classes exactly as before, and installs shared, generic
methods built from the fields instead of compiled ones:

- ``__init__(*args, **kwargs)``: the fields in order, defaults and ``default_factory`` values, then
  ``__post_init__`` if the class has one; the same ``TypeError`` cases as a dataclass (too many arguments, an
  unknown or repeated keyword, a missing field). Values go straight into the instance ``__dict__`` in one
  ``update`` (also for frozen classes; a class's own ``__setattr__`` is not called by ``__init__``): faster than a
  dataclass's ``__init__`` (1.9-2.5 us against 2.8 us for a 14-field record here), at the cost of a materialised
  instance dict (about 60 bytes more per instance than CPython's inline attribute values);
- ``__repr__`` over the ``repr=True`` fields, ``__eq__`` over the ``compare=True`` fields of the same class,
  ``__hash__`` as :mod:`dataclasses` decides it (hashable when frozen and compared; unhashable when compared and
  mutable), and for ``frozen=True`` a ``__setattr__``/``__delattr__`` raising ``FrozenInstanceError``;
- ``inspect.signature(cls)`` gives the dataclass signature (built on first use).

A method the class defines itself (``__repr__``, ``__eq__``, ``__init__``...) is kept, as dataclasses keep it. Type
checkers read ``@structure`` as ``@dataclass`` (PEP 681 ``dataclass_transform``). Use it for every class of the
package that would be a dataclass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import MISSING, FrozenInstanceError
from operator import attrgetter
from typing import TYPE_CHECKING, Any, TypeVar, overload

if TYPE_CHECKING:  # pragma: no cover - typing.dataclass_transform is Python 3.11+; type checkers only need the marker
    from typing_extensions import dataclass_transform
else:

    def dataclass_transform(**_: Any) -> Callable[[Any], Any]:
        return lambda function: function


__all__ = ["structure"]

_C = TypeVar("_C", bound=type)


@overload
@dataclass_transform(field_specifiers=(dataclasses.field, dataclasses.Field))
def structure(cls: _C, /) -> _C: ...
@overload
def structure(*, frozen: bool = False, eq: bool = True) -> Callable[[_C], _C]: ...


def structure(cls: _C | None = None, /, *, frozen: bool = False, eq: bool = True) -> _C | Callable[[_C], _C]:
    """Make ``cls`` a dataclass (``@structure``, ``@structure(frozen=True)``, ``@structure(eq=False)``) without
    compiling its methods (see the module docstring)."""

    def wrap(klass: _C) -> _C:
        own = set(vars(klass))
        explicit_hash = "__hash__" in own and not (klass.__dict__["__hash__"] is None and "__eq__" in own)
        klass.__signature__ = _Signature()  # type: ignore[attr-defined] # first: dataclasses may ask for it
        dataclasses.dataclass(init=False, repr=False, eq=False)(klass)
        fields = dataclasses.fields(klass)
        if "__init__" not in own:
            klass.__init__ = _make_init(klass, fields)  # type: ignore[misc]
        if "__repr__" not in own:
            klass.__repr__ = _make_repr(fields)  # type: ignore[assignment]
        if eq and "__eq__" not in own:
            klass.__eq__ = _make_eq(tuple(f.name for f in fields if f.compare))  # type: ignore[assignment]
        if eq and not explicit_hash:
            if frozen:
                names = tuple(f.name for f in fields if (f.compare if f.hash is None else f.hash))
                klass.__hash__ = _make_hash(names)  # type: ignore[assignment]
            else:
                klass.__hash__ = None  # type: ignore[assignment] # compared by value, mutable: as a dataclass
        if frozen:
            klass.__setattr__ = _frozen_setattr  # type: ignore[assignment]
            klass.__delattr__ = _frozen_delattr  # type: ignore[assignment]
        return klass

    return wrap if cls is None else wrap(cls)


def _make_init(cls: type, fields: tuple[dataclasses.Field[Any], ...]) -> Callable[..., None]:
    names = tuple(f.name for f in fields if f.init)
    position = {name: i for i, name in enumerate(names)}
    defaults = {f.name: f.default for f in fields if f.default is not MISSING}
    factories = tuple((f.name, f.default_factory) for f in fields if f.default_factory is not MISSING)
    required = frozenset(f.name for f in fields if f.init and f.default is MISSING and f.default_factory is MISSING)
    count = len(names)
    post_init = hasattr(cls, "__post_init__")
    where = f"{cls.__qualname__}.__init__()"

    def refuse(args: tuple[Any, ...], kwargs: dict[str, Any], values: dict[str, Any]) -> TypeError:
        if len(args) > count:
            return TypeError(f"{where} takes {count + 1} positional arguments but {len(args) + 1} were given")
        for key in kwargs:
            if key not in position:
                return TypeError(f"{where} got an unexpected keyword argument {key!r}")
            if position[key] < len(args):
                return TypeError(f"{where} got multiple values for argument {key!r}")
        missing = [name for name in names if name in required and name not in values]
        return TypeError(f"{where} missing {len(missing)} required argument(s): {', '.join(map(repr, missing))}")

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        values = self.__dict__
        if defaults:
            values.update(defaults)
        if args:
            if len(args) > count:
                raise refuse(args, kwargs, values)
            values.update(zip(names, args))
        if kwargs:
            if not position.keys() >= kwargs.keys() or (args and min(map(position.__getitem__, kwargs)) < len(args)):
                raise refuse(args, kwargs, values)
            values.update(kwargs)
        if not values.keys() >= required:
            raise refuse(args, kwargs, values)
        for name, factory in factories:
            if name not in values:
                values[name] = factory()  # type: ignore[misc]
        if post_init:
            self.__post_init__()

    return __init__


def _make_repr(fields: tuple[dataclasses.Field[Any], ...]) -> Callable[[Any], str]:
    import reprlib

    names = tuple(f.name for f in fields if f.repr)

    @reprlib.recursive_repr()
    def __repr__(self: Any) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in names)
        return f"{type(self).__qualname__}({inner})"

    return __repr__


def _values_of(names: tuple[str, ...]) -> Callable[[Any], Any]:
    if not names:
        return lambda obj: ()
    if len(names) == 1:
        get = attrgetter(names[0])
        return lambda obj: (get(obj),)
    return attrgetter(*names)


def _make_eq(names: tuple[str, ...]) -> Callable[[Any, object], Any]:
    values = _values_of(names)

    def __eq__(self: Any, other: object) -> Any:
        if other.__class__ is self.__class__:
            return values(self) == values(other)
        return NotImplemented

    return __eq__


def _make_hash(names: tuple[str, ...]) -> Callable[[Any], int]:
    values = _values_of(names)

    def __hash__(self: Any) -> int:
        return hash(values(self))

    return __hash__


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


class _Factory:
    """Shown as a field's default in a signature when the default comes from a ``default_factory``."""

    def __repr__(self) -> str:
        return "<factory>"


class _Signature:
    """``cls.__signature__``: the signature a dataclass's ``__init__`` would have, for ``inspect.signature`` and
    ``help()`` (built on first use: ``inspect`` is not imported at class definition)."""

    def __get__(self, obj: object, owner: type) -> Any:
        import inspect

        params = []
        for f in dataclasses.fields(owner):
            if f.init:
                default = f.default if f.default is not MISSING else inspect.Parameter.empty
                if f.default_factory is not MISSING:
                    default = _Factory()
                kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
                params.append(inspect.Parameter(f.name, kind, default=default, annotation=f.type))
        return inspect.Signature(params)

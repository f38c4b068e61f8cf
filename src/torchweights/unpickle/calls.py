"""How the pickle machine applies what a stream calls and builds, without running the file's code.

:func:`instantiate` is ``REDUCE`` and ``NEWOBJ``: a reconstructor of the table (:class:`~.values.Ctor`) is called,
a global the user allowed by name (:class:`Allowed`, imported by :func:`import_allowed`) is called for real, and
anything else becomes an inert :class:`~.values.Stub`. :func:`apply_build` is ``BUILD``: it records state on stubs,
finishes pending values, and sets state for real only on objects that allowed globals made.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import types
from typing import Any

from ..errors import CorruptCheckpointError, TorchWeightsError
from .values import Ctor, Global, Pending, PickledTensor, Stub, bad_pickle, bounded_repr, callable_name

__all__ = ["CALL_ERRORS", "Allowed", "apply_build", "import_allowed", "instantiate"]


#: What a reconstructor of the table raises on arguments it cannot take: turned into ``bad-pickle``.
CALL_ERRORS = (
    TypeError,
    ValueError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    ArithmeticError,
    UnicodeError,
)


def instantiate(cls: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *, new: bool) -> Any:
    """REDUCE / NEWOBJ: call a table entry, make a stub of anything else; never call the file's code."""
    if isinstance(cls, Ctor):
        fn = cls.new if new else cls.call
        try:
            return fn(*args, **kwargs)
        except TorchWeightsError:
            raise
        except CALL_ERRORS as exc:
            raise bad_pickle(f"{cls.name} called with unexpected arguments: {bounded_repr(str(exc), 200)}") from None
    if isinstance(cls, Allowed):
        return cls.make(args, kwargs, new=new)
    if isinstance(cls, (Global, Stub)):
        return Stub(callable_name(cls), args, kwargs)
    raise bad_pickle(f"the pickle calls {bounded_repr(cls)}, which is not callable")


class Allowed:
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
        return bad_pickle(
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
        base_type = getattr(base, "fn", None) if isinstance(base, Ctor) else None
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


def import_allowed(module: str, name: str, created: dict[int, Any]) -> Allowed:
    """Import ``module.name``, a global the user allowed, for a machine whose allowed objects are ``created``."""
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
    return Allowed(f"{module}.{name}", obj, created)


def apply_build(obj: Any, state: Any, created: dict[int, Any]) -> Any:
    """BUILD: set the state of an object; returns the object that stands in its place afterwards."""
    if isinstance(obj, Stub):
        if isinstance(obj.state, dict) and isinstance(state, dict):
            obj.state.update(state)
        else:
            obj.state = state
        return obj
    if isinstance(obj, Pending):
        return obj.finish(state)
    if created.get(id(obj)) is obj:
        # An object made by a global the user allowed: restore it as pickle would.
        try:
            _real_build(obj, state)
        except TorchWeightsError:
            raise
        except Exception as exc:  # the user's own __setstate__
            raise bad_pickle(
                f"restoring the state of an allowed {type(obj).__qualname__} failed: {bounded_repr(str(exc), 200)}"
            ) from None
        return obj
    if isinstance(obj, (argparse.Namespace, types.SimpleNamespace)):
        attrs = state[0] if isinstance(state, tuple) and state and isinstance(state[0], dict) else state
        if isinstance(attrs, dict):
            for key, value in attrs.items():
                if not isinstance(key, str):
                    raise bad_pickle(f"{type(obj).__name__} attribute named by {bounded_repr(key)}, not a string")
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
    raise bad_pickle(f"BUILD on {bounded_repr(obj)}: this object has no state to set")


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

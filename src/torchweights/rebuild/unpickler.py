"""Pass 2 of :func:`torchweights.load_model`: run the pickle for real, importing and calling only what pass 1 approved.

:class:`RebuildUnpickler` is Python's own pure-Python unpickler with the opcodes that reach code replaced:

* ``GLOBAL`` / ``STACK_GLOBAL`` / ``INST`` go through :meth:`RebuildUnpickler.find_class`, which resolves a name
  only when :class:`~torchweights.unpickle.trust.TrustRules` approves it (the same rule pass 1 applied before
  anything was imported) and records what the object may do: be *called* (a reconstructor of the safe table, a
  torch type such as ``torch.Size`` or a hook class, a trusted class, an exact ``allow_globals`` name), be
  *instantiated* without ``__init__`` (torch's module classes, trusted classes: ``NEWOBJ``, ``copyreg``), or only
  be *referenced* (functions: ``F.gelu`` as an attribute, a trusted package's functions and methods).
* ``REDUCE``, ``NEWOBJ``, ``NEWOBJ_EX``, ``OBJ`` and ``INST`` call or instantiate only what was recorded so; anything
  else (a function, what an earlier call returned) is refused, naming it.
* ``BUILD`` never sets attributes of a class, function or module, nor dunder attributes of anything.
* ``EXT1/2/4`` (the ``copyreg`` extension registry, which torch never writes) are refused.
* The few table entries that could reach further than data (``builtins.getattr``, ``copyreg``'s helpers,
  ``_rebuild_from_type_v2``, ``_rebuild_parameter_with_state``, ``_codecs.encode``) are replaced by checked wrappers;
  ``torch.storage._load_from_bytes`` (it runs ``torch.load(weights_only=False)``) and TorchScript's helpers are
  refused.

``persistent_load`` is given by the caller: it returns the storages the read engine already loaded.
"""

from __future__ import annotations

import importlib
import pickle
import types
from collections.abc import Callable
from typing import IO, Any, ClassVar

from ..errors import UnsafeCheckpointError, UnsupportedCheckpointError
from ..text import quote
from ..unpickle.policy import LAUNDERING_ATTRIBUTES
from ..unpickle.table import SAFE_GLOBALS
from ..unpickle.trust import TrustRules
from ..unpickle.values import Ctor

__all__ = ["RebuildUnpickler", "missing_class"]

#: Table entries pass 2 refuses outright: they load further files or only make sense inside TorchScript archives.
_REFUSED_TABLE = ("torch.storage._load_from_bytes", "torch.jit.")

#: Table entries that are classes or constants only referenced (``torch.FloatStorage`` in a persistent id).
_NOT_CALLED = frozenset(name for name, value in SAFE_GLOBALS.items() if not isinstance(value, Ctor))

#: Python 2 module names protocols 0-2 may use (``pickle`` maps them the same way with ``fix_imports``).
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


def _is_dunder(name: object) -> bool:
    return isinstance(name, str) and name.startswith("__") and name.endswith("__")


def missing_class(name: str, why: str, path: str) -> UnsupportedCheckpointError:
    """The error for a trusted class that cannot be imported: its name, why, and the two ways out."""
    return UnsupportedCheckpointError(
        f"{quote(path)} holds an object of class {quote(name)}, which is trusted but cannot be imported here: {why}. "
        "Nothing from the file was run. Fix: install the package that defines it; or, if the class moved, pass "
        f"rename_classes={{{name!r}: 'new.module.{name.rsplit('.', 1)[-1]}'}} (the new name must be trusted too); "
        "or build the model in code and load its weights with tw.load_into(model, path) (tw.load(path) gives "
        "the tensors, named as state_dict() names them).",
        code="missing-class",
        path=path,
    )


def _refuse(path: str, what: str, why: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"{quote(path)}: the pickle {what}, which load_model does not do: {why}. Nothing further was run, and no "
        "code was executed by this step. Do not load this file with torch.load(weights_only=False) or pickle. If "
        "you only need the weights: tw.load(path).",
        code="unsafe-call",
        path=path,
    )


#: Python's pure-Python unpickler, whose opcode table this module changes (typeshed declares little of it)
_PurePythonUnpickler: Any = pickle._Unpickler


class RebuildUnpickler(_PurePythonUnpickler):  # type: ignore[misc]
    """A pure-Python unpickler that imports, calls and instantiates only what ``rules`` approves (module docstring).

    Args:
        file: the pickle, positioned at its first opcode.
        rules: the user's ``trust``, ``allow_globals`` and ``rename_classes``.
        path: the checkpoint, for messages.
        persistent_load: ``pid -> object`` (the loaded storages).
    """

    dispatch: ClassVar[dict[int, Callable[..., None]]] = dict(_PurePythonUnpickler.dispatch)

    def __init__(self, file: IO[bytes], rules: TrustRules, path: str, persistent_load: Callable[[Any], Any]) -> None:
        super().__init__(file, encoding="latin1")
        self.rules = rules
        self.path = path
        self._persistent = persistent_load
        self.callables: dict[int, tuple[Any, Callable[..., Any]]] = {}  # id -> (object kept alive, what to call)
        self.classes: dict[int, type] = {}  # classes that may be instantiated without __init__ (NEWOBJ)
        self.names: dict[int, tuple[Any, str]] = {}  # id -> (object, its global name) for messages

    # -- resolving names -------------------------------------------------------------------------------------------

    def find_class(self, module: str, name: str) -> Any:
        """Resolve ``module.name`` if the rules approve it, recording what it may do; refuse it otherwise."""
        module = _PY2_MODULES.get(module, module)
        full = f"{module}.{name}"
        verdict = self.rules.verdict(full)
        if verdict in ("dangerous", "untrusted"):
            never = "never imports" if verdict == "dangerous" else "does not import without trust"
            raise UnsafeCheckpointError(
                f"{quote(self.path)} references {quote(full)}, which load_model {never}. Nothing was executed.",
                code="untrusted-global" if verdict == "untrusted" else "unsafe-global",
                path=self.path,
            )
        target = self.rules.target(full)
        if verdict == "table":
            return self._table(target, module, name)
        if full in self.rules.rename_classes:  # an exact rename: "new.module.Class" or "new.module:Outer.Inner"
            obj = self._import(target, None, None)
        else:  # unchanged, or its module renamed as a prefix ({"oldpkg": "newpkg"}): the qualname stays
            obj = self._import(target, self.rules.target(module), name)
        if verdict == "trusted" and not callable(obj):
            # pickle names classes and functions, never data; a trusted package's module-level dict or list named
            # here could only be there to be changed in place (SETITEM, APPEND, BUILD on the package's own state)
            raise _refuse(
                self.path, f"references {quote(full)}, a {type(obj).__name__}", "only classes and functions are named"
            )
        self.names[id(obj)] = (obj, full)
        if isinstance(obj, type):
            from torch.nn import Module

            callable_class = verdict == "trusted" or not issubclass(obj, Module)
            self.classes[id(obj)] = obj
            if callable_class:
                self.callables[id(obj)] = (obj, obj)
        elif verdict == "trusted" and self.rules.may_call_function(full):
            self.callables[id(obj)] = (obj, obj)
        return obj

    def _import(self, target: str, module: str | None, qualname: str | None) -> Any:
        if module is None or qualname is None:  # a rename: "new.module.Class" or "new.module:Outer.Inner"
            module, _, qualname = target.partition(":") if ":" in target else target.rpartition(".")
        try:
            obj: Any = importlib.import_module(module)
            for part in qualname.split("."):
                obj = getattr(obj, part)
        except ImportError as exc:
            raise missing_class(target, f"{type(exc).__name__}: {exc}", self.path) from None
        except AttributeError:
            raise missing_class(
                target, f"module {quote(module)} has no attribute {quote(qualname)}", self.path
            ) from None
        return obj

    def _table(self, name: str, module: str, qualname: str) -> Any:
        if name.startswith(_REFUSED_TABLE):
            raise UnsupportedCheckpointError(
                f"{quote(self.path)} uses {quote(name)}, which load_model does not run (it loads a nested pickle, "
                "or belongs to TorchScript). Fix: re-save the model with torch.save(model, path) from trusted code, "
                "or read its weights with tw.load(path).",
                code="unsupported-model-format",
                path=self.path,
            )
        obj = self._import(name, module, qualname)
        self.names[id(obj)] = (obj, name)
        if isinstance(obj, type):
            self.classes[id(obj)] = obj
        if name in _NOT_CALLED:
            return obj
        wrapper = _GUARDED.get(name)
        self.callables[id(obj)] = (obj, (lambda *a, _w=wrapper, _o=obj: _w(self, _o, *a)) if wrapper else obj)
        return obj

    def persistent_load(self, pid: Any) -> Any:
        return self._persistent(pid)

    # -- calls -----------------------------------------------------------------------------------------------------

    def name_of(self, obj: Any) -> str:
        """The global name of ``obj`` when it was resolved by name, else a description."""
        entry = self.names.get(id(obj))
        if entry is not None and entry[0] is obj:
            return entry[1]
        return f"an object of type {type(obj).__module__}.{type(obj).__qualname__}"

    def call(self, func: Any, args: tuple[Any, ...], op: str) -> Any:
        """``func(*args)`` if ``func`` may be called; UnsafeCheckpointError naming it otherwise."""
        entry = self.callables.get(id(func))
        if entry is None or entry[0] is not func:
            name = self.name_of(func)
            named = self.names.get(id(func))
            exact = (
                f"; if you trust this call, allow exactly it: allow_globals=[{name!r}]"
                if named is not None and named[0] is func and self.rules.verdict(name) == "trusted"
                else " (allow_globals=[name] calls one function of a trusted package you name)"
            )
            raise _refuse(
                self.path,
                f"calls {quote(name)} ({op})",
                "a function kept as an attribute is a reference only, and only torch's types, the safe "
                f"reconstructors and trusted classes are ever called{exact}",
            )
        return entry[1](*args)

    def instantiate(self, cls: Any, args: tuple[Any, ...], kwargs: dict[str, Any], op: str) -> Any:
        """``cls.__new__(cls, *args, **kwargs)`` if ``cls`` is an approved class."""
        if not isinstance(cls, type) or self.classes.get(id(cls)) is not cls:
            raise _refuse(self.path, f"instantiates {quote(self.name_of(cls))} ({op})", "it is not an approved class")
        return cls.__new__(cls, *args, **kwargs)

    def load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self.call(self.stack[-1], tuple(args), "REDUCE")

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self.instantiate(cls, tuple(args), {}, "NEWOBJ"))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self.instantiate(cls, tuple(args), dict(kwargs), "NEWOBJ_EX"))

    def _instantiate(self, klass: Any, args: Any) -> None:  # OBJ and INST
        self.append(self.call(klass, tuple(args), "OBJ/INST"))

    def load_build(self) -> None:
        state = self.stack[-1]
        inst = self.stack[-2]
        if isinstance(inst, (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)):
            raise _refuse(self.path, f"sets attributes of {quote(self.name_of(inst))} (BUILD)", "that changes code")
        check_state(self, inst, state)
        super().load_build()

    def refuse_ext(self) -> None:
        raise _refuse(self.path, "uses the copyreg extension registry (EXT1/EXT2/EXT4)", "torch never writes it")

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.EXT1[0]] = refuse_ext
    dispatch[pickle.EXT2[0]] = refuse_ext
    dispatch[pickle.EXT4[0]] = refuse_ext


def check_state(up: RebuildUnpickler, inst: Any, state: Any) -> None:
    """Refuse a state that would set dunder attributes (``__class__``, ``__dict__``...) of ``inst``."""
    parts = state if isinstance(state, tuple) and len(state) == 2 else (state,)
    for part in parts:
        if isinstance(part, dict):
            bad = [k for k in part if _is_dunder(k) or k in LAUNDERING_ATTRIBUTES]
            if bad:
                raise _refuse(
                    up.path,
                    f"sets attribute {quote(str(bad[0]))} of {quote(up.name_of(inst))} (BUILD)",
                    "dunder attributes change what an object does, not what it holds",
                )


# -- checked wrappers of table entries ------------------------------------------------------------------------------


def _getattr(up: RebuildUnpickler, real: Any, obj: Any, name: Any, *default: Any) -> Any:
    """``getattr(obj, name)`` of an approved global or an object the pickle built, by a plain name; a reference."""
    if default or not isinstance(name, str) or _is_dunder(name) or not name.isidentifier():
        raise _refuse(up.path, f"calls builtins.getattr with {name!r}", "only plain attribute names are looked up")
    if isinstance(obj, types.ModuleType) or (id(obj) not in up.names and isinstance(obj, (type, types.FunctionType))):
        raise _refuse(up.path, f"looks up {name!r} on {up.name_of(obj)}", "it is not an approved object")
    value = real(obj, name)
    if isinstance(value, type) and id(value) not in up.classes:
        raise _refuse(up.path, f"looks up class {name!r} on {up.name_of(obj)}", "classes are approved by name only")
    up.names.setdefault(id(value), (value, f"{up.name_of(obj)}.{name}"))
    return value  # a reference: never in up.callables


def _reconstructor(up: RebuildUnpickler, real: Any, cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor(cls, object, None)`` (how protocols 0 and 1 instantiate): approved classes only."""
    if base is not object or state is not None:
        raise _refuse(up.path, "calls copyreg._reconstructor with a base class other than object", "that calls it")
    return up.instantiate(cls, (), {}, "copyreg._reconstructor")


def _newobj(up: RebuildUnpickler, real: Any, cls: Any, *args: Any) -> Any:
    return up.instantiate(cls, args, {}, "copyreg.__newobj__")


def _newobj_ex(up: RebuildUnpickler, real: Any, cls: Any, args: Any, kwargs: Any) -> Any:
    return up.instantiate(cls, tuple(args), dict(kwargs), "copyreg.__newobj_ex__")


def _encode(up: RebuildUnpickler, real: Any, text: Any, encoding: Any = "utf-8", *rest: Any) -> Any:
    """``_codecs.encode(str, "latin1")``: how protocol 2 pickles bytes."""
    if rest or type(text) is not str or encoding not in ("latin1", "latin-1"):
        raise _refuse(up.path, "calls _codecs.encode other than as bytes are pickled", "it could run any codec")
    return real(text, encoding)


def _from_type(up: RebuildUnpickler, real: Any, func: Any, new_type: Any, args: Any, state: Any) -> Any:
    """``_rebuild_from_type_v2(func, type, args, state)`` calls ``func(*args)``: only a callable reconstructor."""
    entry = up.callables.get(id(func))
    if entry is None or entry[0] is not func:
        raise _refuse(up.path, f"rebuilds a tensor with {quote(up.name_of(func))}", "it is not a reconstructor")
    if not isinstance(new_type, type) or id(new_type) not in up.classes:
        raise _refuse(up.path, f"rebuilds a tensor as {quote(up.name_of(new_type))}", "it is not an approved class")
    check_state(up, new_type, state)
    return real(entry[1], new_type, args, state)


def _with_state(up: RebuildUnpickler, real: Any, data: Any, requires_grad: Any, hooks: Any, state: Any) -> Any:
    check_state(up, data, state)
    return real(data, requires_grad, hooks, state)


def _wrapper_subclass(up: RebuildUnpickler, real: Any, cls: Any, *args: Any) -> Any:
    if not isinstance(cls, type) or id(cls) not in up.classes:
        raise _refuse(up.path, f"rebuilds a tensor subclass {quote(up.name_of(cls))}", "it is not approved")
    return real(cls, *args)


_GUARDED: dict[str, Callable[..., Any]] = {
    "builtins.getattr": _getattr,
    "copyreg._reconstructor": _reconstructor,
    "copyreg.__newobj__": _newobj,
    "copyreg.__newobj_ex__": _newobj_ex,
    "_codecs.encode": _encode,
    "torch._tensor._rebuild_from_type_v2": _from_type,
    "torch._tensor._rebuild_from_type": _from_type,
    "torch._utils._rebuild_parameter_with_state": _with_state,
    "torch._utils._rebuild_wrapper_subclass": _wrapper_subclass,
}

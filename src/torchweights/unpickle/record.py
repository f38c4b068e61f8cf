"""What the pickle machine records of a stream, for loading and scan alike: every global referenced, the dangerous
ones (loading refuses them), and every call ``pickle.load`` would make of a dangerous or unvetted callable.
"""

from __future__ import annotations

import types
from typing import Any

from ..text import plural
from .calls import Allowed
from .policy import LAUNDERING_ATTRIBUTES, classify_global, vetted_call
from .values import Ctor, Global, Reference, Stub, bounded_repr, callable_name

__all__ = ["MAX_REFERENCES", "Recorder"]


#: Most references one stream records (each distinct global once, every dangerous one).
MAX_REFERENCES = 10_000


def _arguments(args: tuple[Any, ...]) -> str:
    """``"2 arguments: 'touch x', 1"``: what a call receives, bounded."""
    shown = ", ".join(bounded_repr(a, 160) for a in args[:4]) + (", ..." if len(args) > 4 else "")
    return f"{plural(len(args), 'argument')}: {shown}" if args else "no arguments"


class Recorder:
    """The references and calls of one stream, each at the offset of the opcode that made it (the machine sets
    :attr:`at` and :attr:`how` before every opcode that can name or call a global).

    Attributes:
        globals: every global referenced, as ``module.qualname``.
        dangerous: the dangerous names loading refuses, in the order the stream named them.
        references: where each global was referenced (at most :data:`MAX_REFERENCES`).
        calls: the calls ``pickle.load`` would make of dangerous or unvetted callables (see :meth:`call`).
    """

    def __init__(self) -> None:
        self.globals: set[str] = set()
        self.dangerous: list[str] = []
        self.references: list[Reference] = []
        self.calls: list[Reference] = []
        self.called: set[str] = set()
        self.at = 0  # offset of the opcode being executed, for references
        self.how = "GLOBAL"

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
        if isinstance(fn, Ctor):
            if fn.name == "copyreg._reconstructor" and len(args) >= 3 and isinstance(args[1], (Global, Stub)):
                # copyreg._reconstructor(cls, base, state) runs base.__new__(cls, state) and base.__init__(obj, state)
                if args[2] is not None:
                    self.unvetted(callable_name(args[1]), op, (args[2],))
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
        """``name`` is called with ``args`` where ``pickle.load`` runs the file: dangerous unless vetted
        (:func:`~.policy.vetted_call`)."""
        if vetted_call(name, args):
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
        if isinstance(obj, (Global, Ctor, Allowed, type, types.ModuleType)):
            name = f"{callable_name(obj)} (attributes set by BUILD)"
            self.refer(name, "BUILD", "dangerous")
            self.calls.append(Reference(name, self.at, "BUILD", "dangerous"))
            return True
        # ``(state, slotstate)``: pickle sets slot state with ``setattr`` (descriptors run; ``__class__`` swaps the
        # class), while a dict state only fills the instance ``__dict__``.
        slots = state[1] if isinstance(state, tuple) and len(state) == 2 else None
        if isinstance(slots, dict):
            for key in slots:
                if isinstance(key, str) and key in LAUNDERING_ATTRIBUTES:
                    owner = callable_name(obj)
                    if not isinstance(obj, (Global, Stub, Ctor)):
                        owner = f"{type(obj).__module__}.{type(obj).__qualname__}"
                    self.refer(f"{owner}.{key} (set by BUILD)", "BUILD", "dangerous")
                    self.calls.append(Reference(f"{owner}.{key} (set by BUILD)", self.at, "BUILD", "dangerous"))
        return False

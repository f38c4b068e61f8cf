"""The inert values the pickle machine produces, and the helpers every reconstructor checks its arguments with.

What a stream becomes: :class:`Global` (a global named but not called), :class:`Stub` (an object of a class that was
not imported), :class:`TorchValue`, :class:`StorageType` and the tensor descriptions (:class:`PickledTensor`, its
sparse and quantized kinds, :class:`PickledStorage`, :class:`EmbeddedStorage`); what the machine reports of it
(:class:`Reference`, :class:`UnpickleResult`); and the stack values that stand for a reconstructor of the table
(:class:`Ctor`), for a value BUILD finishes (:class:`Pending`) and for a call refused (:class:`Refused`).
:func:`bad_pickle`, :func:`bounded_repr`, :func:`callable_name`, :func:`int_arg` and :func:`int_tuple` are how every
part of the machine rejects and describes what a stream gave it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import field
from typing import Any

from ..errors import CorruptCheckpointError
from ..records import StorageRef
from ..structs import structure

__all__ = [
    "Ctor",
    "EmbeddedStorage",
    "Global",
    "Pending",
    "PickledQTensor",
    "PickledSparse",
    "PickledStorage",
    "PickledTensor",
    "Reference",
    "Refused",
    "StorageType",
    "Stub",
    "TorchValue",
    "UnpickleResult",
    "bad_pickle",
    "bounded_repr",
    "callable_name",
    "int_arg",
    "int_tuple",
]


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


@structure(frozen=True)
class TorchValue:
    """A torch constant named by the file (``torch.float32``, ``torch.device('cuda:0')``, ``torch.strided``)."""

    kind: str  # dtype | device | layout | memory_format
    value: str

    def __repr__(self) -> str:
        return f"torch.device({self.value!r})" if self.kind == "device" else f"torch.{self.value}"


@structure(frozen=True)
class StorageType:
    """A storage class named by the file: ``torch.FloatStorage`` (dtype ``float32``) or untyped (dtype None)."""

    name: str
    dtype: str | None


@structure(frozen=True)
class PickledStorage:
    """A storage as the format reader located it: bytes, element dtype, and element offset for legacy views."""

    ref: StorageRef
    dtype: str
    offset: int = 0


@structure
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


@structure
class PickledSparse(PickledTensor):
    """A sparse tensor (``torch._utils._rebuild_sparse_tensor``): its layout, dense size and component tensors.

    ``components`` holds ``indices`` and ``values`` (COO) or ``compressed_indices``, ``plain_indices`` and
    ``values`` (CSR, CSC, BSR, BSC), each a :class:`PickledTensor`; ``dtype`` is the values' dtype and ``shape`` the
    dense size. ``is_coalesced`` is the COO flag torch saved (None in files older than it).
    """

    layout: str = "sparse_coo"
    components: dict[str, PickledTensor] = field(default_factory=dict)
    is_coalesced: bool | None = None


@structure
class PickledQTensor(PickledTensor):
    """A quantized tensor (``torch._utils._rebuild_qtensor``): its integer view and quantization parameters.

    ``quantization`` holds ``qscheme`` (``"per_tensor_affine"``, ``"per_channel_affine"`` or
    ``"per_channel_affine_float_qparams"``) and either ``scale`` and ``zero_point`` (numbers) or ``scales`` and
    ``zero_points`` (a :class:`PickledTensor` each, or a tuple of numbers in old files) and ``axis``.
    """

    quantization: dict[str, Any] = field(default_factory=dict)


@structure(frozen=True)
class EmbeddedStorage(PickledStorage):
    """A storage pickled on its own (``pickle.dumps(tensor)``: ``torch.storage._load_from_bytes(b)``), where ``b``
    is a legacy ``torch.save`` stream. ``ref.offset`` is the offset of the elements inside ``blob``; the format
    reader finds ``blob`` in its file (identical bytes anywhere hold the same elements) to make the reference
    absolute."""

    blob: bytes = b""


@structure(frozen=True)
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


@structure
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


class Ctor:
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


class Pending:
    """A value that only becomes itself on BUILD (numpy arrays and dtypes, uuid-like objects)."""

    def __init__(self, finish: Callable[[Any], Any], what: str) -> None:
        self.finish = finish
        self.what = what

    def __repr__(self) -> str:
        return f"<incomplete {self.what}>"


@structure(frozen=True)
class Refused:
    """What a reconstructor returns for a call it will not make: the machine records ``names`` as dangerous
    references at the calling opcode (refused by loading once the stream is read, reported by scan) and keeps an
    inert stub in its place."""

    call: str
    names: tuple[str, ...]
    args: tuple[Any, ...] = ()


def bad_pickle(message: str, code: str = "bad-pickle") -> CorruptCheckpointError:
    """The error for a stream that is not a valid pickle, or not one a checkpoint holds (``bad-pickle``, or
    ``truncated`` where it ends early)."""
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
    if isinstance(value, (Global, Stub, TorchValue, StorageType, Ctor, Pending)):
        return repr(value)[:limit]
    if isinstance(value, (tuple, list, dict, set, frozenset)):
        return f"<{type(value).__name__} of {len(value)} items>"
    return f"<{type(value).__module__}.{type(value).__qualname__} object>"


def callable_name(obj: Any) -> str:
    """The ``module.qualname`` a stream called or named: a reconstructor's, a global's, a stub's class (or, for
    anything else, its type's name)."""
    if isinstance(obj, Ctor):
        return obj.name
    if isinstance(obj, Global):
        return obj.qualname
    if isinstance(obj, Stub):
        return obj.cls
    return type(obj).__name__


def int_arg(value: Any, what: str) -> int:
    """``value`` as an integer argument (``what`` names it in the error); anything but an int or bool is refused."""
    if type(value) is not int and type(value) is not bool:
        raise bad_pickle(f"{what} must be an integer, found {type(value).__name__}")
    return int(value)


def int_tuple(value: Any, what: str) -> tuple[int, ...]:
    """``value`` as a tuple of integers (a size or stride): a tuple, a list, or a ``torch.Size`` stub of one."""
    if isinstance(value, Stub) and value.cls == "torch.Size":
        value = value.args[0] if value.args else ()
    if not isinstance(value, (tuple, list)):
        raise bad_pickle(f"{what} must be a tuple of integers, found {type(value).__name__}")
    return tuple(int_arg(v, what) for v in value)

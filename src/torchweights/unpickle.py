"""The only code in torchweights that reads pickle.

A small pickle virtual machine that decodes every opcode itself and never calls anything named by the file,
except entries of one fixed table of pure data reconstructors (:data:`SAFE_GLOBALS`) and the globals the user
explicitly allowed by name. Everything else becomes inert data:

* a global not in the table becomes a :class:`Global` reference; calling it (``REDUCE``, ``NEWOBJ``, ``INST``)
  makes a :class:`Stub` that records the class name, the arguments and the state, so a pickled ``nn.Module``
  still yields its parameters without its class being imported;
* globals known to run code, touch files, processes or the network, or import modules are refused with
  :class:`~torchweights.errors.UnsafeCheckpointError` once the whole stream has been read, naming every one;
* tensors and storages become :class:`PickledTensor` / :class:`PickledStorage` descriptions; their bytes are
  located by the format reader through ``persistent_load``.

The same table classifies globals for ``scan`` (:func:`classify_global`), so loading and scanning never disagree.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import codecs
import collections
import copyreg
import datetime
import decimal
import fractions
import importlib
import math
import pathlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import dtypes
from .errors import CorruptCheckpointError, ResourceLimitError, UnsafeCheckpointError
from .records import StorageRef

__all__ = [
    "Global",
    "PickledStorage",
    "PickledTensor",
    "SAFE_GLOBALS",
    "StorageType",
    "Stub",
    "TorchValue",
    "UnpickleResult",
    "classify_global",
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


@dataclass
class UnpickleResult:
    """What one pickle stream held.

    Attributes:
        value: the root object.
        end: offset just past the ``STOP`` opcode.
        globals: every global referenced, as ``module.qualname``.
        opcodes: number of opcodes executed (a bound for later traversals).
        unsupported: tensor kinds recognised but not read (quantized, sparse, ...), by global name.
    """

    value: Any
    end: int
    globals: set[str] = field(default_factory=set)
    opcodes: int = 0


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
        raise _bad(f"a tensor was rebuilt from {value!r}, which is not a storage saved in this file")
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


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> PickledTensor:
    return _tensor(storage, offset, size, stride)


def _rebuild_tensor_v2(
    storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False, *_: Any
) -> PickledTensor:
    return _tensor(storage, offset, size, stride, requires_grad=requires_grad)


def _rebuild_tensor_v3(
    storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any, dtype: Any, *_: Any
) -> PickledTensor:
    if not (isinstance(dtype, TorchValue) and dtype.kind == "dtype"):
        raise _bad(f"_rebuild_tensor_v3 needs a torch dtype, found {dtype!r}")
    st = _storage_of(storage)
    if st.offset:
        raise _bad("_rebuild_tensor_v3 cannot use a legacy storage view")
    return _tensor(st, offset, size, stride, dtype=dtype.value, requires_grad=requires_grad)


def _as_parameter(data: Any, requires_grad: Any = True, *_: Any) -> PickledTensor:
    if not isinstance(data, PickledTensor):
        raise _bad(f"a Parameter was rebuilt from {data!r}, which is not a tensor")
    data.is_parameter = True
    data.requires_grad = bool(requires_grad)
    return data


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any = None) -> Any:
    if not isinstance(func, _Ctor) or not isinstance(args, tuple):
        raise _bad(f"_rebuild_from_type_v2 with {func!r}: only known tensor reconstructors are called")
    result = func.call(*args)
    if isinstance(result, PickledTensor):
        type_name = new_type.name if isinstance(new_type, _Ctor) else getattr(new_type, "qualname", None)
        if type_name in ("torch.nn.parameter.Parameter", "torch.nn.Parameter"):
            result.is_parameter = True
        elif type_name not in (None, "torch.Tensor", "torch._tensor.Tensor"):
            result.subclass = type_name
    return result


def _rebuild_meta(dtype: Any, size: Any, stride: Any, requires_grad: Any = False, *_: Any) -> PickledTensor:
    if not (isinstance(dtype, TorchValue) and dtype.kind == "dtype"):
        raise _bad(f"a meta tensor needs a torch dtype, found {dtype!r}")
    return PickledTensor(
        None, dtype.value, 0, _int_tuple(size, "size"), _int_tuple(stride, "stride"), bool(requires_grad)
    )


def _rebuild_device_tensor(data: Any, dtype: Any = None, device: Any = None, requires_grad: Any = False) -> Any:
    if isinstance(data, PickledTensor):
        data.requires_grad = bool(requires_grad)
    return data


def _unsupported_tensor(name: str) -> Callable[..., Stub]:
    def make(*args: Any) -> Stub:
        return Stub(name, args)

    return make


def _primitive(value: Any, depth: int = 0) -> bool:
    if value is None or isinstance(value, (str, bytes, bytearray, int, float, complex)):
        return True
    if isinstance(value, (tuple, list, frozenset, set)) and depth < 4:
        return all(_primitive(v, depth + 1) for v in value)
    return False


def _pure(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """Call a builtin type or stdlib value class only on plain-data arguments."""

    def call(*args: Any, **kwargs: Any) -> Any:
        if not all(_primitive(a) for a in args) or not all(_primitive(v) for v in kwargs.values()):
            return Stub(name, tuple(args), dict(kwargs))
        try:
            return fn(*args, **kwargs)
        except (TypeError, ValueError, OverflowError, ArithmeticError) as exc:
            raise _bad(f"{name}{tuple(args)!r} is invalid: {exc}") from None

    return call


def _codecs_encode(text: Any, encoding: Any = "utf-8", *_: Any) -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise _bad(f"_codecs.encode({text!r:.40}, {encoding!r}) is not a plain bytes literal")
    try:
        return codecs.encode(text, encoding)
    except UnicodeError as exc:
        raise _bad(f"_codecs.encode failed: {exc}") from None


def _ordered_dict(*args: Any) -> collections.OrderedDict[Any, Any]:
    result: collections.OrderedDict[Any, Any] = collections.OrderedDict()
    if args and isinstance(args[0], (list, tuple)):
        for pair in args[0]:
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise _bad("OrderedDict items must be pairs")
            result[pair[0]] = pair[1]
    return result


def _defaultdict(factory: Any = None, *args: Any) -> collections.defaultdict[Any, Any]:
    real = factory.fn if isinstance(factory, _Ctor) and hasattr(factory, "fn") else None
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


def _np_dtype(spec: Any, align: Any = False, copy: Any = False, *_: Any) -> Any:
    if not isinstance(spec, str) or not (0 < len(spec) <= 16) or not spec.isalnum():
        raise _bad(f"numpy dtype spec {spec!r} is not a plain type code")

    def finish(state: Any) -> Any:
        np = _numpy()
        order = state[1] if isinstance(state, tuple) and len(state) > 1 and state[1] in "<>|=" else "="
        if np is None:
            return Stub("numpy.dtype", (order + spec,))
        try:
            base = np.dtype(spec)
        except TypeError as exc:
            raise _bad(f"numpy dtype {spec!r}: {exc}") from None
        return base.newbyteorder(order) if order in "<>" else base

    return _Pending(finish, f"numpy.dtype({spec!r})")


def _np_reconstruct(cls: Any, shape: Any = (0,), typecode: Any = b"b", *_: Any) -> Any:
    def finish(state: Any) -> Any:
        if not (isinstance(state, tuple) and len(state) == 5):
            raise _bad("numpy array state must be (version, shape, dtype, fortran, data)")
        _, shp, dt, fortran, raw = state
        shp = _int_tuple(shp, "numpy shape")
        np = _numpy()
        if np is None or not isinstance(dt, np.dtype):
            return Stub("numpy.ndarray", (shp, dt, raw))
        count = math.prod(shp)
        if dt.hasobject:
            if not isinstance(raw, list) or len(raw) != count:
                raise _bad("numpy object array data does not match its shape")
            arr = np.empty(count, dtype=object)
            arr[:] = raw
            return arr.reshape(shp, order="F" if fortran else "C")
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != count * dt.itemsize:
            raise _bad(
                f"numpy array data holds {len(raw) if isinstance(raw, bytes) else '?'} bytes, "
                f"shape {shp} x {dt.itemsize} needs {count * dt.itemsize}"
            )
        return np.frombuffer(bytes(raw), dtype=dt).reshape(shp, order="F" if fortran else "C").copy()

    return _Pending(finish, "numpy.ndarray")


def _np_scalar(dtype: Any, data: Any = None, *_: Any) -> Any:
    np = _numpy()
    if np is None or not isinstance(dtype, np.dtype):
        return Stub("numpy.scalar", (dtype, data))
    if dtype.hasobject:
        return data
    if not isinstance(data, (bytes, bytearray)) or len(data) != dtype.itemsize:
        raise _bad("numpy scalar data does not match its dtype size")
    return np.frombuffer(bytes(data), dtype=dtype)[0]


def _np_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any = "C", *_: Any) -> Any:
    np = _numpy()
    shp = _int_tuple(shape, "numpy shape")
    if np is None or not isinstance(dtype, np.dtype) or dtype.hasobject:
        return Stub("numpy.ndarray", (buf, dtype, shp))
    if not isinstance(buf, (bytes, bytearray)) or len(buf) != math.prod(shp) * dtype.itemsize:
        raise _bad("numpy buffer size does not match its shape")
    return np.frombuffer(bytes(buf), dtype=dtype).reshape(shp, order="F" if order == "F" else "C").copy()


def _copyreg_reconstructor(cls: Any, base: Any = None, state: Any = None) -> Any:
    if isinstance(cls, _Ctor):
        return cls.new()
    return Stub(_callable_name(cls))


def _copyreg_newobj(cls: Any, *args: Any) -> Any:
    return _instantiate(cls, args, {}, new=True)


def _copyreg_newobj_ex(cls: Any, args: Any = (), kwargs: Any = None) -> Any:
    return _instantiate(cls, tuple(args or ()), dict(kwargs or {}), new=True)


def _storage_types() -> dict[str, Any]:
    table: dict[str, Any] = {}
    for d in dtypes.DTYPES.values():
        if d.storage_class:
            for module in ("torch", "torch.cuda"):
                table[f"{module}.{d.storage_class}"] = StorageType(d.storage_class, d.name)
    for name in ("torch.UntypedStorage", "torch.storage.UntypedStorage", "torch.cuda.UntypedStorage"):
        table[name] = StorageType("UntypedStorage", None)
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
        raise _bad(f"torch.device{args!r} is not a device")
    text = args[0] if len(args) == 1 or args[1] is None else f"{args[0]}:{_int(args[1], 'device index')}"
    return TorchValue("device", text)


def _torch_size(*args: Any) -> tuple[int, ...]:
    return _int_tuple(args[0] if args else (), "torch.Size")


def _get_layout(name: Any) -> TorchValue:
    if not isinstance(name, str) or not name.startswith("torch."):
        raise _bad(f"unknown layout {name!r}")
    return TorchValue("layout", name.removeprefix("torch."))


def _build_table() -> dict[str, Any]:
    table: dict[str, Any] = {}

    def add(name: str, call: Callable[..., Any], new: Callable[..., Any] | None = None) -> None:
        table[name] = _Ctor(name, call, new)

    for module in ("torch._utils",):
        add(f"{module}._rebuild_tensor", _rebuild_tensor)
        add(f"{module}._rebuild_tensor_v2", _rebuild_tensor_v2)
        add(f"{module}._rebuild_tensor_v3", _rebuild_tensor_v3)
        add(f"{module}._rebuild_parameter", _as_parameter)
        add(f"{module}._rebuild_parameter_with_state", _as_parameter)
        add(f"{module}._rebuild_meta_tensor_no_storage", _rebuild_meta)
        add(f"{module}._rebuild_device_tensor_from_cpu_tensor", _rebuild_device_tensor)
        for kind in (
            "_rebuild_qtensor",
            "_rebuild_sparse_tensor",
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

    for name, fn in (
        ("set", set),
        ("frozenset", frozenset),
        ("bytearray", bytearray),
        ("bytes", bytes),
        ("complex", complex),
        ("slice", slice),
        ("range", range),
        ("int", int),
        ("float", float),
        ("str", str),
        ("bool", bool),
        ("tuple", tuple),
        ("list", list),
        ("dict", dict),
    ):
        ctor = _Ctor(f"builtins.{name}", _pure(fn, f"builtins.{name}"))
        ctor.fn = fn  # type: ignore[attr-defined]
        table[f"builtins.{name}"] = ctor
    add("builtins.object", lambda *a: Stub("builtins.object", a))
    add("_codecs.encode", _codecs_encode)
    add("copyreg._reconstructor", _copyreg_reconstructor)
    add("copyreg.__newobj__", _copyreg_newobj)
    add("copyreg.__newobj_ex__", _copyreg_newobj_ex)
    add("collections.OrderedDict", _ordered_dict)
    add("collections.defaultdict", _defaultdict)
    add("collections.Counter", _counter)
    add("collections.deque", _deque)
    add("argparse.Namespace", _namespace)
    for cls_name, cls in (
        ("PosixPath", pathlib.PurePosixPath),
        ("PurePosixPath", pathlib.PurePosixPath),
        ("WindowsPath", pathlib.PureWindowsPath),
        ("PureWindowsPath", pathlib.PureWindowsPath),
        ("Path", pathlib.PurePosixPath),
        ("PurePath", pathlib.PurePosixPath),
    ):
        add(f"pathlib.{cls_name}", _pure_path(cls))
    value_classes: tuple[tuple[str, Callable[..., Any]], ...] = (
        ("datetime.datetime", datetime.datetime),
        ("datetime.date", datetime.date),
        ("datetime.time", datetime.time),
        ("datetime.timedelta", datetime.timedelta),
        ("decimal.Decimal", decimal.Decimal),
        ("fractions.Fraction", fractions.Fraction),
    )
    for name, value_cls in value_classes:
        add(name, _pure(value_cls, name))
    add(
        "datetime.timezone",
        lambda *a: datetime.timezone(*a)
        if a and isinstance(a[0], datetime.timedelta)
        else Stub("datetime.timezone", a),
    )
    for np_core in ("numpy.core", "numpy._core"):
        add(f"{np_core}.multiarray._reconstruct", _np_reconstruct)
        add(f"{np_core}.multiarray.scalar", _np_scalar)
        add(f"{np_core}.numeric._frombuffer", _np_frombuffer)
    add("numpy.dtype", _np_dtype)
    add("numpy.ndarray", lambda *a: Stub("numpy.ndarray", a))
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
    resource fcntl termios ensurepip venv distutils zipapp compileall py_compile""".split()
)
_DANGEROUS_BUILTINS = frozenset(
    """eval exec execfile compile open __import__ getattr setattr delattr globals locals vars input breakpoint
    help exit quit apply memoryview type super classmethod staticmethod property reload file""".split()
)
_DANGEROUS_PREFIXES = (
    "torch.load",
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


def classify_global(name: str) -> str:
    """Classify a pickle global (``module.qualname``) as ``"safe"``, ``"dangerous"`` or ``"unknown"``.

    ``safe``: in :data:`SAFE_GLOBALS`; torchweights reconstructs it as data. ``dangerous``: runs code, touches
    files, processes, the network or the import machinery; it is refused. ``unknown``: any other class or
    function (for example a model class from the project that saved the file): never imported, kept as an inert
    stub.
    """
    if name in SAFE_GLOBALS:
        return "safe"
    module, _, attr = name.partition(".")
    parts = name.split(".")
    if any(p.startswith("__") and p.endswith("__") and p not in ("__main__",) for p in parts[1:]):
        return "dangerous"
    if module in ("builtins", "__builtin__"):
        return "dangerous" if attr.split(".")[0] in _DANGEROUS_BUILTINS or "." in attr else "unknown"
    if module in _DANGEROUS_MODULES or module == "copyreg" or module == "_codecs":
        return "dangerous"
    if any(
        name == p or name.startswith(p + ".") or (p.endswith("_") and name.startswith(p)) for p in _DANGEROUS_PREFIXES
    ):
        return "dangerous"
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


def _instantiate(cls: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *, new: bool) -> Any:
    """REDUCE / NEWOBJ: call a table entry, make a stub of anything else; never call the file's code."""
    if isinstance(cls, _Ctor):
        fn = cls.new if new else cls.call
        try:
            return fn(*args, **kwargs)
        except TypeError as exc:
            raise _bad(f"{cls.name} called with unexpected arguments: {exc}") from None
    if isinstance(cls, _Allowed):
        return cls.obj.__new__(cls.obj, *args, **kwargs) if new else cls.obj(*args, **kwargs)
    if isinstance(cls, (Global, Stub)):
        return Stub(_callable_name(cls), args, kwargs)
    raise _bad(f"the pickle calls {type(cls).__name__} {cls!r:.60}, which is not callable")


class _Allowed:
    """A global the user allowed by name: the real object, imported and called as pickle would."""

    __slots__ = ("name", "obj")

    def __init__(self, name: str, obj: Any) -> None:
        self.name = name
        self.obj = obj


def _import_allowed(module: str, name: str) -> _Allowed:
    try:
        obj: Any = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        from .errors import UnsupportedCheckpointError

        raise UnsupportedCheckpointError(
            f"'{module}.{name}' was allowed but cannot be imported here: {exc}. "
            "Install the package that defines it, or leave it out of allow_globals to load it as an inert stub.",
            code="allowed-global-missing",
        ) from None
    return _Allowed(f"{module}.{name}", obj)


def _build(obj: Any, state: Any, allowed: bool) -> Any:
    """BUILD: set the state of an object; returns the object that stands in its place afterwards."""
    if isinstance(obj, Stub):
        if isinstance(obj.state, dict) and isinstance(state, dict):
            obj.state.update(state)
        else:
            obj.state = state
        return obj
    if isinstance(obj, _Pending):
        return obj.finish(state)
    if isinstance(obj, argparse.Namespace):
        attrs = state[0] if isinstance(state, tuple) and state and isinstance(state[0], dict) else state
        if isinstance(attrs, dict):
            for key, value in attrs.items():
                setattr(obj, str(key), value)
        return obj
    if isinstance(obj, (dict, list, PickledTensor)) and not state:
        return obj  # dict subclasses pickle an empty instance state; tensors carry theirs as arguments
    if isinstance(obj, collections.OrderedDict) and isinstance(state, dict):
        # state_dict() sets ``_metadata`` (per-module versions) on its OrderedDict: keep it as an attribute.
        for key, value in state.items():
            if isinstance(key, str) and key.isidentifier() and not key.startswith("__"):
                setattr(obj, key, value)
        return obj
    if allowed and not isinstance(obj, (Global, TorchValue, StorageType, _Ctor, PickledStorage, PickledTensor)):
        _real_build(obj, state)  # an object made by a global the user allowed: restore it as pickle would
        return obj
    raise _bad(f"BUILD on {type(obj).__name__} {obj!r:.60}: this object has no state to set")


def _real_build(inst: Any, state: Any) -> None:
    setstate = getattr(inst, "__setstate__", None)
    if setstate is not None and not isinstance(state, dict):
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


class _Reader:
    """Bounds-checked cursor over a bytes-like buffer."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes | memoryview, start: int, end: int) -> None:
        self.data = data
        self.pos = start
        self.end = end

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
        data = self.data
        start = self.pos
        stop = min(self.end, start + limit)
        if isinstance(data, (bytes, bytearray)):
            idx = data.find(b"\n", start, stop)
        else:
            idx = bytes(data[start:stop]).find(b"\n")
            idx = -1 if idx < 0 else start + idx
        if idx < 0:
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
        return fmt.unpack(self.take(fmt.size))[0]


_U2 = struct.Struct("<H")
_U4 = struct.Struct("<I")
_I4 = struct.Struct("<i")
_U8 = struct.Struct("<Q")
_F8 = struct.Struct(">d")


def _decode_py2_str(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _text_int(raw: bytes) -> int:
    try:
        return int(raw.rstrip(b"L") or b"0")
    except ValueError:
        raise _bad(f"bad integer literal {raw[:40]!r} in pickle") from None


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
        self.proto = 0

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
        self.globals.add(qual)
        if qual in self.allow_globals:
            allowed = _import_allowed(module, name)
            return allowed if callable(allowed.obj) else allowed.obj
        entry = SAFE_GLOBALS.get(qual)
        if entry is not None:
            return entry
        if classify_global(qual) == "dangerous":
            if qual not in self.dangerous:
                self.dangerous.append(qual)
        return Global(module, name)

    def extension(self, code: int) -> Any:
        key = copyreg._inverted_registry.get(code)  # type: ignore[attr-defined]
        if key is None:
            raise _bad(f"pickle uses extension code {code}, which is not registered")
        return self.find_global(*key)

    # -- run ---------------------------------------------------------------------------------------------------
    def run(self, data: bytes | memoryview, start: int, end: int) -> UnpickleResult:
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
            try:
                for i in range(0, len(items), 2):
                    dest[items[i]] = items[i + 1]
            except TypeError as exc:
                raise _bad(f"bad dict key in pickle: {exc}") from None

        def extend(target: Any, items: list[Any]) -> None:
            if isinstance(target, Stub):
                target.items.extend(items)
            elif isinstance(target, (list, collections.deque)):
                target.extend(items)
            else:
                raise _bad(f"APPEND on {type(target).__name__}, which is not a list")

        def push_memo(key: int, value: Any) -> None:
            memo[key] = value
            if isinstance(value, _Pending):
                pending_memo.setdefault(id(value), []).append(key)

        while True:
            if r.pos >= r.end:
                raise _bad("pickle data ended without a STOP opcode: the file is truncated", code="truncated")
            op = r.data[r.pos]
            r.pos += 1
            count += 1
            if op == 0x80:  # PROTO
                self.proto = r.u1()
                if self.proto > 5:
                    raise _bad(f"unsupported pickle protocol {self.proto}")
            elif op == 0x95:  # FRAME
                r.take(8)
            elif op == 0x2E:  # STOP '.'
                if not stack:
                    raise _bad("pickle STOP with an empty stack")
                value = stack.pop()
                return UnpickleResult(value, r.pos, self.globals, count)
            elif op == 0x28:  # MARK
                metastack.append(stack)
                stack = []
            elif op == 0x30:  # POP
                if stack:
                    stack.pop()
                else:
                    pop_mark()
            elif op == 0x31:  # POP_MARK
                pop_mark()
            elif op == 0x32:  # DUP
                stack.append(top())
            elif op == 0x4E:  # NONE
                stack.append(None)
            elif op == 0x88:
                stack.append(True)
            elif op == 0x89:
                stack.append(False)
            elif op == 0x49:  # INT
                raw = r.line()
                stack.append(True if raw == b"01" else False if raw == b"00" else _text_int(raw))
            elif op == 0x4A:  # BININT
                stack.append(r.unpack(_I4))
            elif op == 0x4B:  # BININT1
                stack.append(r.u1())
            elif op == 0x4D:  # BININT2
                stack.append(r.unpack(_U2))
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
            elif op == 0x47:  # BINFLOAT
                stack.append(r.unpack(_F8))
            elif op == 0x53:  # STRING
                raw = r.line()
                if len(raw) < 2 or raw[0] != raw[-1] or raw[:1] not in (b"'", b'"'):
                    raise _bad("STRING opcode argument is not quoted")
                decoded: Any = codecs.escape_decode(raw[1:-1])[0]
                stack.append(_decode_py2_str(decoded))
            elif op == 0x54:  # BINSTRING
                n = r.unpack(_I4)
                if n < 0:
                    raise _bad("BINSTRING with a negative length")
                stack.append(_decode_py2_str(r.take(n)))
            elif op == 0x55:  # SHORT_BINSTRING
                stack.append(_decode_py2_str(r.take(r.u1())))
            elif op == 0x56:  # UNICODE
                stack.append(r.line().decode("raw-unicode-escape"))
            elif op in (0x58, 0x8C, 0x8D):  # BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
                n = r.unpack(_U4) if op == 0x58 else r.u1() if op == 0x8C else r.unpack(_U8)
                try:
                    stack.append(r.take(n).decode("utf-8", "surrogatepass"))
                except UnicodeDecodeError:
                    raise _bad(f"pickle string at byte {r.pos - n} is not valid UTF-8") from None
            elif op in (0x42, 0x43, 0x8E):  # BINBYTES, SHORT_BINBYTES, BINBYTES8
                n = r.unpack(_U4) if op == 0x42 else r.u1() if op == 0x43 else r.unpack(_U8)
                stack.append(r.take(n))
            elif op == 0x96:  # BYTEARRAY8
                stack.append(bytearray(r.take(r.unpack(_U8))))
            elif op in (0x97, 0x98):  # NEXT_BUFFER, READONLY_BUFFER
                raise _bad("pickle uses out-of-band buffers (protocol 5), which a checkpoint file cannot carry")
            elif op == 0x5D:  # EMPTY_LIST
                stack.append([])
            elif op == 0x61:  # APPEND
                item = pop()
                extend(top(), [item])
            elif op == 0x65:  # APPENDS
                items = pop_mark()
                extend(top(), items)
            elif op == 0x6C:  # LIST
                items = pop_mark()
                stack.append(items)
            elif op == 0x29:  # EMPTY_TUPLE
                stack.append(())
            elif op == 0x74:  # TUPLE
                items = pop_mark()
                stack.append(tuple(items))
            elif op in (0x85, 0x86, 0x87):  # TUPLE1..3
                n = op - 0x84
                if len(stack) < n:
                    raise _bad("pickle stack underflow building a tuple")
                items = stack[-n:]
                del stack[-n:]
                stack.append(tuple(items))
            elif op == 0x7D:  # EMPTY_DICT
                stack.append({})
            elif op == 0x64:  # DICT
                items = pop_mark()
                d: dict[Any, Any] = {}
                setitems(d, items)
                stack.append(d)
            elif op == 0x73:  # SETITEM
                value = pop()
                key = pop()
                setitems(top(), [key, value])
            elif op == 0x75:  # SETITEMS
                items = pop_mark()
                setitems(top(), items)
            elif op == 0x8F:  # EMPTY_SET
                stack.append(set())
            elif op == 0x90:  # ADDITEMS
                items = pop_mark()
                target = top()
                if not isinstance(target, set):
                    raise _bad("ADDITEMS on something that is not a set")
                try:
                    target.update(items)
                except TypeError as exc:
                    raise _bad(f"bad set item in pickle: {exc}") from None
            elif op == 0x91:  # FROZENSET
                try:
                    items = pop_mark()
                    stack.append(frozenset(items))
                except TypeError as exc:
                    raise _bad(f"bad set item in pickle: {exc}") from None
            elif op == 0x63:  # GLOBAL
                module = r.line().decode("utf-8", "replace")
                name = r.line().decode("utf-8", "replace")
                stack.append(self.find_global(module, name))
            elif op == 0x93:  # STACK_GLOBAL
                name = pop()
                module = pop()
                stack.append(self.find_global(module, name))
            elif op in (0x82, 0x83, 0x84):  # EXT1, EXT2, EXT4
                code = r.u1() if op == 0x82 else r.unpack(_U2) if op == 0x83 else r.unpack(_I4)
                stack.append(self.extension(code))
            elif op == 0x52:  # REDUCE
                args = pop()
                fn = pop()
                if not isinstance(args, tuple):
                    raise _bad("REDUCE arguments are not a tuple")
                stack.append(_instantiate(fn, args, {}, new=False))
            elif op == 0x81:  # NEWOBJ
                args = pop()
                cls = pop()
                if not isinstance(args, tuple):
                    raise _bad("NEWOBJ arguments are not a tuple")
                stack.append(_instantiate(cls, args, {}, new=True))
            elif op == 0x92:  # NEWOBJ_EX
                kwargs = pop()
                args = pop()
                cls = pop()
                if not isinstance(args, tuple) or not isinstance(kwargs, dict):
                    raise _bad("NEWOBJ_EX arguments are not a tuple and a dict")
                stack.append(_instantiate(cls, args, {str(k): v for k, v in kwargs.items()}, new=True))
            elif op == 0x69:  # INST
                module = r.line().decode("utf-8", "replace")
                name = r.line().decode("utf-8", "replace")
                cls = self.find_global(module, name)
                items = pop_mark()
                stack.append(_instantiate(cls, tuple(items), {}, new=False))
            elif op == 0x6F:  # OBJ
                items = pop_mark()
                if not items:
                    raise _bad("OBJ without a class")
                stack.append(_instantiate(items[0], tuple(items[1:]), {}, new=False))
            elif op == 0x62:  # BUILD
                state = pop()
                obj = pop()
                new = _build(obj, state, bool(self.allow_globals))
                if new is not obj:
                    replace(obj, new)
                stack.append(new)
            elif op == 0x50:  # PERSID
                stack.append(self.persistent(r.line().decode("ascii", "replace")))
            elif op == 0x51:  # BINPERSID
                stack.append(self.persistent(pop()))
            elif op in (0x67, 0x68, 0x6A):  # GET, BINGET, LONG_BINGET
                key = _text_int(r.line()) if op == 0x67 else r.u1() if op == 0x68 else r.unpack(_U4)
                if key not in memo:
                    raise _bad(f"pickle reads memo slot {key}, which was never written")
                stack.append(memo[key])
            elif op in (0x70, 0x71, 0x72):  # PUT, BINPUT, LONG_BINPUT
                key = _text_int(r.line()) if op == 0x70 else r.u1() if op == 0x71 else r.unpack(_U4)
                push_memo(key, top())
            elif op == 0x94:  # MEMOIZE
                push_memo(len(memo), top())
            else:
                raise _bad(f"unknown pickle opcode 0x{op:02x} at byte {r.pos - 1}: this is not a valid pickle")

    def persistent(self, pid: Any) -> Any:
        if self.persistent_load is None:
            raise _bad("the pickle refers to external data (persistent id) but this format has none")
        return self.persistent_load(pid)


def unpickle(
    data: bytes | memoryview,
    *,
    start: int = 0,
    end: int | None = None,
    persistent_load: Callable[[Any], Any] | None = None,
    allow_globals: frozenset[str] = frozenset(),
    max_bytes: int = 1 << 30,
    where: str = "",
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

    Returns:
        The root object (with :class:`Stub`, :class:`PickledTensor` ... inside), where the stream ended, and
        every global referenced.

    Raises:
        UnsafeCheckpointError: the stream references known-dangerous globals (all of them are named).
        CorruptCheckpointError: the stream is not a valid pickle.
        ResourceLimitError: the stream is longer than ``max_bytes``.
    """
    stop = len(data) if end is None else min(end, len(data))
    if stop - start > max_bytes:
        # A pickle may legitimately be followed by other data (legacy format); only refuse if it runs past.
        stop_limit = start + max_bytes
    else:
        stop_limit = stop
    machine = _Machine(persistent_load, allow_globals)
    try:
        result = machine.run(data, start, stop_limit)
    except CorruptCheckpointError as exc:
        if stop_limit < stop and exc.code == "truncated":
            raise ResourceLimitError(
                f"pickle stream {where} is longer than the {max_bytes}-byte limit. If you trust the file, raise "
                "the limit: tw.open(path, limits=Limits(max_pickle_bytes=...)).",
                code="limit-pickle-size",
            ) from None
        exc.message = f"{exc.message} (in {where})" if where else exc.message
        raise
    except RecursionError:
        raise ResourceLimitError(f"pickle stream {where} nests too deeply", code="limit-depth") from None
    except MemoryError:
        raise ResourceLimitError(
            f"pickle stream {where} asks for more memory than available", code="limit-memory"
        ) from None
    if machine.dangerous:
        names = ", ".join(f"'{n}'" for n in machine.dangerous)
        raise UnsafeCheckpointError(
            f"{where or 'the pickle'} references {len(machine.dangerous)} global(s) that can run code or touch the "
            f"system: {names}. Nothing was executed. A weights file has no reason to call these; do not load it "
            "with torch.load either. If you wrote this file yourself and trust it, allow exactly these: "
            "tw.load(path, allow_globals=[...])  (CLI: --allow-global NAME)",
            code="unsafe-global",
        )
    return result

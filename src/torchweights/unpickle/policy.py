"""The policy scan and load share: what a global is, and which calls of one only rebuild data.

:func:`classify_global` judges a name alone: ``"safe"`` (in the table), ``"known"`` (torch's own classes, enums of
known libraries, calls checked by hand), ``"dangerous"`` (runs code, touches the system; loading refuses it) or
``"unknown"``. :func:`vetted_call` judges a call ``pickle.load`` would make, and :data:`LAUNDERING_ATTRIBUTES` the
attributes whose assignment by ``BUILD`` changes code rather than data. The machine records with these for loading
and scan alike, so the two never disagree.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from .known_enums import KNOWN_ENUMS
from .table import SAFE_GLOBALS
from .torch_classes import TORCH_CLASSES
from .values import Global, Stub

__all__ = ["LAUNDERING_ATTRIBUTES", "classify_global", "refuse_dangerous_allowed", "vetted_call"]


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


#: Attributes whose assignment by BUILD changes what an object does rather than what it holds: under
#: ``pickle.load`` they turn a harmless-looking object into a call of something else later.
LAUNDERING_ATTRIBUTES = frozenset(
    """__class__ __dict__ __setstate__ __reduce__ __reduce_ex__ __getattr__ __getattribute__ __setattr__
    __delattr__ __del__ __init__ __new__ __call__ __get__ __set__ __getitem__ __builtins__ __globals__ __code__
    __import__ __init_subclass__ __class_getitem__ __enter__ __exit__ __iter__ __next__ __eq__ __hash__
    __repr__ __str__ __format__ __len__ __bool__ __index__ __fspath__""".split()
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


def vetted_call(name: str, args: tuple[Any, ...]) -> bool:
    """Whether ``pickle.load`` calling ``name`` with ``args`` only rebuilds data: ``name`` is safe, or it is known
    and the call only instantiates or looks up (a reconstructor checked by hand given the arguments it expects, one
    of torch's classes, or an Enum member looked up by value). Any other call runs the file's choice of code."""
    verdict = classify_global(name)
    return verdict == "safe" or (
        verdict == "known"
        and (
            (name in _KNOWN_CALLS and _KNOWN_CALLS[name](args))  # a reconstructor that only instantiates
            or TORCH_CLASSES.get(name, "function") != "function"  # a torch class
            or (name in KNOWN_ENUMS and _enum_lookup(args))  # an Enum member by value: a lookup, nothing else
        )
    )


def refuse_dangerous_allowed(names: Iterable[str], option: str = "allow_globals") -> None:
    """Refuse an allow list that names a global that can run code by itself (``posix.system``, ``builtins.exec``,
    ``subprocess.Popen``...): allowing a name never silences one of those, in any verb.

    Raises:
        RuleError: code ``dangerous-allowed``, naming every such global.
    """
    dangerous = sorted(n for n in names if isinstance(n, str) and classify_global(n) == "dangerous")
    if dangerous:
        from ..errors import RuleError

        listed = ", ".join(repr(n) for n in dangerous)
        raise RuleError(
            f"{option} names {listed}, which can run code or touch the system by itself: torchweights never imports "
            f"or calls such a global, whatever the options say. Fix: remove it from {option}. A file that needs it "
            "to load is not a weights file; if you wrote it yourself, re-save the weights from the code that made "
            "it (model.state_dict() with torch.save, or safetensors).",
            code="dangerous-allowed",
        )

"""The verdict on each name TorchScript source uses: which operator and class namespaces torch defines, which
operators and Python names reach outside the model, and :func:`classify`, which turns one :class:`CodeReference`
into a :class:`CodeFinding` (or nothing, for ordinary code). :mod:`~torchweights.tools.scan.tscode` finds the
references and says what each finding code means.
"""

from __future__ import annotations

from ...structs import structure

__all__ = [
    "ATTRIBUTE_FUNCTIONS",
    "DUNDERS",
    "NAMESPACE_ROOTS",
    "TORCH_CLASS_NAMESPACES",
    "TORCH_OP_NAMESPACES",
    "UNPARSED",
    "CodeFinding",
    "CodeReference",
    "classify",
]

#: Operator namespaces torch itself defines (torch 2.13's registry, plus those of earlier releases and of mobile
#: builds: ``_caffe2``, ``prepacked``, ``vulkan``, ``metal``...). Their operators are ordinary, except those listed in
#: :data:`_DANGEROUS_OPS` and the namespaces of :data:`_NETWORK_NAMESPACES`.
TORCH_OP_NAMESPACES = frozenset(
    {
        "aten",
        "prim",
        "prims",
        "quantized",
        "_quantized",
        "quantized_decomposed",
        "quantization",
        "_caffe2",
        "mkldnn",
        "mkldnn_prepacked",
        "mkl",
        "onednn",
        "xnnpack",
        "prepacked",
        "vulkan",
        "vulkan_prepack",
        "metal",
        "metal_prepack",
        "sparse",
        "cuda",
        "profiler",
        "rngprims",
        "debugprims",
        "inductor",
        "inductor_prims",
        "static_runtime",
        "onnx",
        "export",
        "_native",
        "_dtensor",
        "debug_mode_ops",
        "_test",
    }
)
#: Namespaces whose operators exchange data with other processes or machines.
_NETWORK_NAMESPACES = frozenset(
    {"c10d", "c10d_functional", "_c10d_functional", "_c10d_functional_autograd", "symm_mem", "dist_autograd"}
)
#: Class namespaces torch itself registers (``torch.classes.NS.X``). ``c10d``/``dist_c10d``/``dist_rpc`` are network
#: objects (process groups, RPC workers) and are reported as such.
TORCH_CLASS_NAMESPACES = frozenset(
    {
        "quantized",
        "rnn",
        "sparse",
        "mkldnn",
        "xnnpack",
        "vulkan",
        "metal",
        "onednn",
        "profiling",
        "backendutils",
        "aten",
        "_nnapi",
    }
)
_NETWORK_CLASS_NAMESPACES = frozenset({"c10d", "dist_c10d", "dist_rpc"})

#: Finding codes (see :mod:`~torchweights.tools.scan.tscode`); :data:`UNPARSED` marks source read token by token.
_FILE = "ts-file-access"
_NATIVE = "ts-native-library"
_MEMORY = "ts-memory"
_NETWORK = "ts-network"
_PYTHON = "ts-python-escape"
_DYNAMIC = "ts-dynamic-attribute"
_CUSTOM_OP = "ts-custom-op"
_CUSTOM_CLASS = "ts-custom-class"
UNPARSED = "ts-unparsed"

_SPARSE = "builds a sparse tensor from raw indices without bounds checks (torch checks no invariant by default): "
_SPARSE += "to_dense() and other operators then read and write outside the tensor's memory"
#: ``namespace::operator`` -> (finding code, what it does).
_DANGEROUS_OPS: dict[str, tuple[str, str]] = {
    "aten::from_file": (_FILE, "reads any file into a tensor, or maps it into memory shared with the file"),
    "aten::save": (_FILE, "writes a value to any file"),
    "aten::load": (_FILE, "loads another file"),
    "debugprims::load_tensor": (_FILE, "reads a tensor from any file"),
    "inductor::resize_storage_bytes_": (_MEMORY, "resizes a storage under the tensors that view it (use after free)"),
    "mkldnn::data_ptr": (_MEMORY, "returns a raw memory address"),
    "prim::rpc_async": (_NETWORK, "calls a function on another process (RPC)"),
    "prim::rpc_sync": (_NETWORK, "calls a function on another process (RPC)"),
    "prim::rpc_remote": (_NETWORK, "calls a function on another process (RPC)"),
    **{
        f"aten::{name}": (_MEMORY, _SPARSE)
        for name in (
            "sparse_coo_tensor",
            "sparse_csr_tensor",
            "sparse_csc_tensor",
            "sparse_bsr_tensor",
            "sparse_bsc_tensor",
            "sparse_compressed_tensor",
            "_sparse_coo_tensor_unsafe",
            "_sparse_coo_tensor_with_dims_and_tensors",
            "_sparse_csr_tensor_unsafe",
            "_sparse_csc_tensor_unsafe",
            "_sparse_bsr_tensor_unsafe",
            "_sparse_bsc_tensor_unsafe",
            "_sparse_compressed_tensor_unsafe",
        )
    },
}
#: Free names only a Python interpreter resolves (TorchScript has none of them) that run code or touch the system.
_PYTHON_BUILTINS = frozenset(
    {
        "__import__",
        "__builtins__",
        "exec",
        "eval",
        "compile",
        "open",
        "globals",
        "locals",
        "vars",
        "breakpoint",
        "input",
        "exit",
        "quit",
        "memoryview",
        "help",
    }
)
#: Python modules that reach files, processes, the network, native code or the interpreter.
_PYTHON_MODULES = frozenset(
    {
        "os",
        "posix",
        "nt",
        "sys",
        "subprocess",
        "builtins",
        "__builtin__",
        "importlib",
        "ctypes",
        "cffi",
        "socket",
        "shutil",
        "pathlib",
        "io",
        "pickle",
        "_pickle",
        "marshal",
        "runpy",
        "signal",
        "multiprocessing",
        "threading",
        "pty",
        "code",
        "codeop",
        "tempfile",
        "urllib",
        "http",
        "requests",
        "webbrowser",
        "inspect",
        "types",
        "gc",
        "mmap",
        "numpy",
    }
)
#: Attributes of the Python object model used to climb from any object to ``builtins`` (sandbox escapes).
DUNDERS = frozenset(
    {
        "__globals__",
        "__builtins__",
        "__subclasses__",
        "__code__",
        "__closure__",
        "__getattribute__",
        "__import__",
        "__loader__",
        "__spec__",
        "__bases__",
        "__base__",
        "__mro__",
        "__dict__",
        "__reduce__",
        "__reduce_ex__",
        "__func__",
        "__self__",
        "__class__",
    }
)
#: Python-level torch APIs (modules and functions that are not TorchScript operators) that touch files, processes,
#: the network or native code: only a Python interpreter running this source would call them.
_TORCH_PYTHON = frozenset(
    {
        "hub",
        "package",
        "serialization",
        "multiprocessing",
        "distributed",
        "_C",
        "utils",
        "library",
        "_ops",
        "_dynamo",
        "_inductor",
        "compile",
        "backends",
        "storage",
        "UntypedStorage",
        "TypedStorage",
        "_utils",
        "_weights_only_unpickler",
    }
)
_TORCH_JIT_PYTHON = frozenset({"load", "save", "_load_for_lite_interpreter", "_save_for_lite_interpreter", "freeze"})
#: Builtins that reach an attribute by a name given at run time.
ATTRIBUTE_FUNCTIONS = frozenset({"getattr", "setattr", "hasattr", "delattr"})
#: Names that stand for a namespace of operators or classes (an alias of one is followed, not treated as local).
NAMESPACE_ROOTS = frozenset({"torch", "ops", "classes", "__torch__"})


@structure(frozen=True)
class CodeFinding:
    """One reference in TorchScript source that reaches outside the module's tensors.

    Attributes:
        severity: ``dangerous`` (files, processes, native libraries, network, unchecked memory, Python escapes) or
            ``warning`` (custom operators and classes, whose effect cannot be known; unparsable source).
        code: ``ts-file-access``, ``ts-native-library``, ``ts-memory``, ``ts-network``, ``ts-python-escape``,
            ``ts-dynamic-attribute``, ``ts-custom-op``, ``ts-custom-class`` or ``ts-unparsed``.
        line: 1-based line in the source.
        name: the reference as resolved (``torch.from_file``, ``ops.evil.run``, ``getattr(torch, <computed>)``).
        message: what it does and why it matters.
    """

    severity: str
    code: str
    line: int
    name: str
    message: str


@structure(frozen=True)
class CodeReference:
    """A name the code uses: ``kind`` is ``chain`` (a dotted name), ``free`` (an unbound bare name), ``import``,
    ``dynamic`` (attribute access by a computed name on ``name``) or ``dunder``."""

    kind: str
    name: str
    line: int


def _normalise(chain: str) -> str:
    """``torch.ops.X`` -> ``ops.X``; ``__torch__.torch.classes.X`` and ``torch.classes.X`` -> ``classes.X``."""
    for prefix, replacement in (
        ("__torch__.torch.classes.", "classes."),
        ("torch.classes.", "classes."),
        ("torch.ops.", "ops."),
    ):
        if chain.startswith(prefix):
            return replacement + chain[len(prefix) :]
    return chain


def classify(ref: CodeReference) -> CodeFinding | None:
    line = ref.line
    if ref.kind == "import":
        return CodeFinding(
            "dangerous",
            _PYTHON,
            line,
            f"import {ref.name}",
            f"imports Python module '{ref.name}': TorchScript ignores imports and torch only ever writes "
            "'import __torch__...'; a Python interpreter running this file would import it",
        )
    if ref.kind == "dunder":
        return CodeFinding(
            "dangerous",
            _PYTHON,
            line,
            ref.name,
            f"uses '{ref.name}', an attribute of Python's object model used to reach builtins and run code (a "
            "sandbox escape); torch never writes it",
        )
    if ref.kind == "free":
        if ref.name in _PYTHON_BUILTINS:
            return CodeFinding(
                "dangerous",
                _PYTHON,
                line,
                ref.name,
                f"uses Python's '{ref.name}', which runs code or touches files; TorchScript has no such builtin and "
                "torch never writes it",
            )
        if ref.name in ("rpc_async", "rpc_sync", "rpc_remote"):
            return CodeFinding(
                "dangerous", _NETWORK, line, ref.name, f"'{ref.name}' calls a function on another process (RPC)"
            )
        return None
    if ref.kind == "dynamic":
        target = ref.name.split("(", 1)[1].split(",", 1)[0]
        on_namespace = target.split(".")[0] in NAMESPACE_ROOTS
        return CodeFinding(
            "dangerous" if on_namespace else "warning",
            _DYNAMIC,
            line,
            ref.name,
            "looks up an attribute by a name computed at run time"
            + (
                f" on namespace '{target}': it can name any operator, file access included"
                if on_namespace
                else "; the TorchScript compiler only accepts literal names, so torch never writes this"
            ),
        )
    return _classify_chain(_normalise(ref.name), ref.name, line)


def _classify_chain(chain: str, written: str, line: int) -> CodeFinding | None:
    parts = chain.split(".")
    root = parts[0]
    if root == "ops" and len(parts) >= 2:
        return _classify_op(parts[1], parts[2] if len(parts) > 2 else None, written, line)
    if root == "classes" and len(parts) >= 2:
        return _classify_class(parts[1], parts[2] if len(parts) > 2 else None, written, line)
    if root == "torch" and len(parts) >= 2:
        if (parts[1] == "jit" and len(parts) > 2 and parts[2] in _TORCH_JIT_PYTHON) or parts[1] in _TORCH_PYTHON:
            return CodeFinding(
                "dangerous",
                _PYTHON,
                line,
                written,
                f"'{written}' is a Python-level torch API, not a TorchScript operator, that reaches files, processes, "
                "native code or the network; only a Python interpreter running this file would call it",
            )
        return _classify_op("aten", parts[1], written, line)
    if root in _PYTHON_MODULES:
        return CodeFinding(
            "dangerous",
            _PYTHON,
            line,
            written,
            f"uses Python module '{root}' ({written}), which reaches files, processes or the interpreter; TorchScript "
            "cannot resolve it and torch never writes it",
        )
    if root in ("rpc_async", "rpc_sync", "rpc_remote") and len(parts) == 1:
        return None  # reported as a free name when unbound
    return None


def _classify_op(namespace: str, op: str | None, written: str, line: int) -> CodeFinding | None:
    if namespace in ("load_library", "import_module"):
        code, what = (
            (_NATIVE, "loads a shared library: native code runs in the process")
            if namespace == "load_library"
            else (_PYTHON, "imports a Python module")
        )
        return CodeFinding("dangerous", code, line, written, f"'{written}' {what}")
    if namespace in _NETWORK_NAMESPACES:
        return CodeFinding(
            "dangerous",
            _NETWORK,
            line,
            written,
            f"'{written}' is an operator of '{namespace}', which exchanges data with (or writes the memory of) "
            "other processes",
        )
    if namespace not in TORCH_OP_NAMESPACES:
        return CodeFinding(
            "warning",
            _CUSTOM_OP,
            line,
            written,
            f"'{written}' is an operator of namespace '{namespace}', which torch does not define: a native library "
            "registers it, torch.jit.load fails unless that library was loaded, and what it does cannot be known "
            "from the archive. Review the library before loading",
        )
    if op is None:
        return None
    known = _DANGEROUS_OPS.get(f"{namespace}::{op}")
    if known is None:
        return None
    code, what = known
    return CodeFinding("dangerous", code, line, written, f"'{written}' (operator {namespace}::{op}) {what}")


def _classify_class(namespace: str, name: str | None, written: str, line: int) -> CodeFinding | None:
    if namespace == "load_library":
        return CodeFinding(
            "dangerous", _NATIVE, line, written, f"'{written}' loads a shared library: native code runs in the process"
        )
    if name is None and namespace[:1].isupper():
        return None  # torch 1.4's unnamespaced 'torch.classes.LinearPackedParamsBase'
    if namespace in _NETWORK_CLASS_NAMESPACES:
        return CodeFinding(
            "dangerous",
            _NETWORK,
            line,
            written,
            f"'{written}' is a {namespace} object (process groups, RPC workers): it exchanges data with other "
            "processes",
        )
    if namespace in TORCH_CLASS_NAMESPACES:
        return None
    return CodeFinding(
        "warning",
        _CUSTOM_CLASS,
        line,
        written,
        f"'{written}' is a class of namespace '{namespace}', which torch does not define: a native library "
        "registers it, torch.jit.load fails unless that library was loaded, and what it does cannot be known from "
        "the archive. Review the library before loading",
    )

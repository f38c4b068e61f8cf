"""Static analysis of TorchScript source: what the code of a TorchScript archive would do when ``torch.jit.load``
compiles and runs it.

A TorchScript archive carries its program as source (``<root>/code/**.py``; torch.package archives that embed
scripted modules keep it under ``.data/ts_code/code/``). ``torch.jit.load`` compiles that source and runs part of it
at once (a scripted ``__setstate__``), the rest whenever the model is called. torchweights never compiles or runs it;
:func:`analyse` reads it with Python's parser (:func:`ast.parse`, never ``compile`` to code objects, never ``exec``)
and reports, with the line, every reference that reaches outside the module's own tensors.

What the TorchScript importer resolves (``torch/csrc/jit/serialization/import_source.cpp``) bounds what such code can
touch: ``torch.X`` is operator ``aten::X``, ``ops.NS.X`` is operator ``NS::X``, ``__torch__.*`` names the archive's
own classes and functions, ``__torch__.torch.classes.NS.X`` a C++ class registered by a native library, plus
``CONSTANTS``, ``fork``, ``annotate``, ``unchecked_cast``, ``uninitialized`` and the language's builtins. So the
analysis classifies operators and classes by namespace and name:

``dangerous`` (``torch.jit.load`` or a call of the model would act outside the model):

* ``ts-file-access``: ``torch.from_file`` (reads, or maps shared, any file), ``torch.save`` (writes a file),
  ``torch.load``, ``ops.debugprims.load_tensor``;
* ``ts-native-library``: ``ops.load_library`` / ``classes.load_library`` (loads a shared library: native code);
* ``ts-memory``: operators that build tensors over memory without bounds checks, the primitives of memory-corruption
  exploits: sparse constructors from raw indices (``torch.sparse_coo_tensor`` and the CSR/CSC/BSR/BSC/compressed
  forms, their ``_unsafe`` variants: torch checks no invariant by default, and ``to_dense()`` then writes out of
  bounds), ``ops.inductor.resize_storage_bytes_`` (frees memory views still point to), ``ops.mkldnn.data_ptr``
  (leaks addresses);
* ``ts-network``: RPC (``rpc_async``/``rpc_sync``/``rpc_remote``) and the collective and symmetric-memory namespaces
  (``c10d``, ``_c10d_functional``, ``symm_mem``...): data sent to, or memory written in, other processes;
* ``ts-python-escape``: anything only a Python interpreter would run and torch never writes: ``import`` of anything
  but ``__torch__``, ``__import__``, ``exec``/``eval``/``compile``/``open``/``globals``..., modules such as ``os``,
  ``subprocess``, ``builtins``, ``ctypes``, Python-level torch APIs (``torch.hub``, ``torch.jit.load``,
  ``torch.ops.import_module``...), introspection dunders (``__globals__``, ``__subclasses__``...);
* ``ts-dynamic-attribute``: ``getattr``/``setattr``/``hasattr``/``delattr`` on a namespace (``torch``, ``ops``,
  ``classes``) with a name built at run time: it can name any operator, so nothing can be said of it.

``warning`` (effect unknown, not known to be harmful):

* ``ts-custom-op`` / ``ts-custom-class``: an operator or class of a namespace torch does not define
  (``ops.torchvision.nms``, ``classes.mylib.Tokenizer``): a native library registered it; ``torch.jit.load`` fails
  unless that library was loaded, and what it does cannot be known from the archive;
* ``ts-dynamic-attribute`` on an ordinary value (the TorchScript compiler only accepts literal names);
* ``ts-unparsed``: source Python's parser rejects (torch never writes such code); it was read token by token.

Operators of torch's own namespaces (``aten``, ``prim``, ``quantized``, ``mkldnn``, ``xnnpack``...) are ordinary: what
``torch.jit.script``/``torch.jit.trace`` write for layer code never draws a finding. Names are matched after
normalisation (``torch.ops.X`` = ``ops.X``, ``__torch__.torch.classes.X`` = ``torch.classes.X`` = ``classes.X``),
through literal ``getattr(obj, "name")`` and through local aliases (``t = torch`` then ``t.from_file``).
"""

from __future__ import annotations

import ast
import io
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["CodeFinding", "analyse", "is_code_member"]

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

_FILE = "ts-file-access"
_NATIVE = "ts-native-library"
_MEMORY = "ts-memory"
_NETWORK = "ts-network"
_PYTHON = "ts-python-escape"
_DYNAMIC = "ts-dynamic-attribute"
_CUSTOM_OP = "ts-custom-op"
_CUSTOM_CLASS = "ts-custom-class"
_UNPARSED = "ts-unparsed"

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
_DUNDERS = frozenset(
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
_ATTRIBUTE_FUNCTIONS = frozenset({"getattr", "setattr", "hasattr", "delattr"})
_NAMESPACE_ROOTS = frozenset({"torch", "ops", "classes", "__torch__"})
#: Findings reported per file at most (a crafted file could repeat one call a million times).
_MAX_FINDINGS = 200


@dataclass(frozen=True)
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


def is_code_member(name: str) -> bool:
    """Whether zip member ``name`` is TorchScript source: a ``.py`` file under ``<root>/code/`` (``torch.jit.save``)
    or under ``.data/ts_code/`` (torch.package archives that embed scripted modules).

    torch.package's own Python modules (``<root>/<package>/<module>.py``) are plain Python run by the package
    importer, not TorchScript, and are not matched.
    """
    if not name.endswith(".py"):
        return False
    parts = name.split("/")
    if ".data" in parts:
        at = parts.index(".data")
        return len(parts) > at + 2 and parts[at + 1] == "ts_code"
    return len(parts) > 2 and parts[1] == "code"


def analyse(source: str | bytes) -> list[CodeFinding]:
    """Every reference in TorchScript ``source`` that reaches outside the module's tensors, in line order.

    The source is parsed, never compiled or run. Source that Python's parser rejects is read token by token and
    reported as ``ts-unparsed``.
    """
    text = source.decode("utf-8", "replace") if isinstance(source, bytes) else source
    findings: list[CodeFinding] = []
    seen: set[tuple[str, int, str]] = set()

    def add(finding: CodeFinding) -> None:
        key = (finding.code, finding.line, finding.name)
        if key not in seen and len(findings) < _MAX_FINDINGS:
            seen.add(key)
            findings.append(finding)

    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        line = getattr(exc, "lineno", None) or 1
        add(
            CodeFinding(
                "warning",
                _UNPARSED,
                line,
                "<source>",
                f"Python's parser rejects this source ({type(exc).__name__}: {str(exc)[:120]}); torch never writes "
                "such code, so it was read token by token",
            )
        )
        for reference in _token_references(text):
            finding = _classify(reference)
            if finding is not None:
                add(finding)
    else:
        for reference in _Walker(tree).references():
            finding = _classify(reference)
            if finding is not None:
                add(finding)
    findings.sort(key=lambda f: (f.line, f.name))
    return findings


# ------------------------------------------------------------------------------------------------ references


@dataclass(frozen=True)
class _Reference:
    """A name the code uses: ``kind`` is ``chain`` (a dotted name), ``free`` (an unbound bare name), ``import``,
    ``dynamic`` (attribute access by a computed name on ``name``) or ``dunder``."""

    kind: str
    name: str
    line: int


class _Walker:
    """Walks a parsed module iteratively (a crafted file can nest deeper than Python's stack), resolving dotted
    names through literal ``getattr`` and through aliases bound in the same function."""

    def __init__(self, tree: ast.Module) -> None:
        self.tree = tree
        self.bound: set[str] = set()
        self.aliases: dict[int, dict[str, set[str]]] = {}  # id(scope node) -> name -> dotted names it may hold
        self.scope_of: dict[int, ast.AST] = {}
        self.inner: set[int] = set()  # nodes that are part of a longer dotted name
        self.nodes: list[ast.AST] = []  # every node, walked once

    def references(self) -> Iterator[_Reference]:
        self._scopes()
        for node in self.nodes:
            line = getattr(node, "lineno", 1)
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] != "__torch__":
                        yield _Reference("import", alias.name, line)
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if module.split(".")[0] != "__torch__" or node.level:
                    yield _Reference("import", module or "." * node.level, line)
            elif isinstance(node, ast.Attribute) and node.attr in _DUNDERS:
                yield _Reference("dunder", node.attr, line)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in self.bound:
                yield _Reference("free", node.id, line)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) >= 2:
                function, name = node.func.id, node.args[1]
                if function in _ATTRIBUTE_FUNCTIONS and function not in self.bound:
                    if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
                        for target in sorted(self.chains(node.args[0])) or ["<value>"]:
                            yield _Reference("dynamic", f"{function}({target}, <computed>)", line)
                    elif name.value in _DUNDERS:
                        yield _Reference("dunder", name.value, line)
            if id(node) not in self.inner and (isinstance(node, (ast.Attribute, ast.Name)) or _literal_getattr(node)):
                for chain in self.chains(node):
                    yield _Reference("chain", chain, line)

    def _scopes(self) -> None:
        """Bound names (parameters, assignment targets...), the aliases ``name = <dotted name>`` of each function
        (and of the module), and the nodes inside longer dotted names."""
        stack: list[tuple[ast.AST, ast.AST]] = [(self.tree, self.tree)]
        pending: list[tuple[ast.AST, str, ast.expr]] = []
        while stack:
            node, scope = stack.pop()
            self.nodes.append(node)
            self.scope_of[id(node)] = scope
            inner: ast.AST = scope
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                args = node.args
                for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
                    if arg is not None:
                        self.bound.add(arg.arg)
                if not isinstance(node, ast.Lambda):
                    self.bound.add(node.name)
                inner = node
            elif isinstance(node, ast.ClassDef):
                self.bound.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
                self.bound.add(node.id)
            elif isinstance(node, ast.alias):
                self.bound.add((node.asname or node.name).split(".")[0])
            elif isinstance(node, ast.Attribute):
                self.inner.add(id(node.value))
            elif _literal_getattr(node):
                assert isinstance(node, ast.Call)
                self.inner.add(id(node.args[0]))
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                pending.append((scope, node.targets[0].id, node.value))
            stack.extend((child, inner) for child in reversed(list(ast.iter_child_nodes(node))))  # source order
        # aliases of aliases: resolved in a few rounds, whatever the order of the assignments
        for _ in range(4):
            changed = False
            for scope, name, value in pending:
                for chain in self.chains(value, scope):
                    held = self.aliases.setdefault(id(scope), {}).setdefault(name, set())
                    if chain not in held and len(held) < 16:
                        held.add(chain)
                        changed = True
            if not changed:
                break

    def chains(self, node: ast.AST, scope: ast.AST | None = None) -> set[str]:
        """The dotted names ``node`` may denote (``torch.from_file``; several through aliases), or none. A chain
        rooted in a local variable that holds no alias starts with ``<local>``."""
        parts: list[str] = []
        while True:
            if isinstance(node, ast.Attribute):
                parts.append(node.attr)
                node = node.value
            elif _literal_getattr(node):
                assert isinstance(node, ast.Call) and isinstance(node.args[1], ast.Constant)
                parts.append(str(node.args[1].value))
                node = node.args[0]
            else:
                break
        if not isinstance(node, ast.Name):
            return set()
        tail = ".".join(reversed(parts))
        scope = scope if scope is not None else self.scope_of.get(id(node), self.tree)
        held = self.aliases.get(id(scope), {}).get(node.id) or self.aliases.get(id(self.tree), {}).get(node.id)
        heads = set(held) if held else set()
        if not heads:
            local = node.id in self.bound and node.id not in _NAMESPACE_ROOTS
            heads.add("<local>" if local else node.id)
        return {f"{head}.{tail}" if tail else head for head in heads}


def _literal_getattr(node: ast.AST) -> bool:
    """``getattr(obj, "name")``: an attribute access by a literal name."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "getattr"
        and len(node.args) >= 2
        and isinstance(node.args[1], ast.Constant)
        and isinstance(node.args[1].value, str)
    )


def _token_references(text: str) -> Iterator[_Reference]:
    """References in source Python's parser rejects, token by token: dotted names (with literal ``getattr``),
    bare calls, imports and dunders. Strings and comments are skipped."""
    tokens: list[tokenize.TokenInfo] = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type in (tokenize.NAME, tokenize.OP, tokenize.STRING):
                tokens.append(token)
    except (tokenize.TokenError, SyntaxError, ValueError):
        pass  # what was read so far is analysed
    at = 0
    while at < len(tokens):
        token = tokens[at]
        if token.type != tokenize.NAME or token.string in ("import", "from"):
            at += 1
            continue
        parts, end = [token.string], at + 1
        while True:
            if end + 1 < len(tokens) and tokens[end].string == "." and tokens[end + 1].type == tokenize.NAME:
                parts.append(tokens[end + 1].string)
                end += 2
            elif (
                parts[-1] == "getattr"
                and end + 3 < len(tokens)
                and tokens[end].string == "("
                and tokens[end + 1].type == tokenize.NAME
                and tokens[end + 2].string == ","
                and tokens[end + 3].type == tokenize.STRING
            ):
                literal = tokens[end + 3].string.strip("\"'rbuRBU")
                parts[-1:] = [tokens[end + 1].string, literal]
                end += 4
            else:
                break
        line = token.start[0]
        previous = tokens[at - 1].string if at else ""
        following = tokens[end].string if end < len(tokens) else ""
        name = ".".join(parts)
        if previous == "from" or (previous == "import" and not _after_from(tokens, at)):
            if parts[0] != "__torch__":
                yield _Reference("import", name, line)
        else:
            if parts == ["getattr"] and end + 3 < len(tokens) and tokens[end].string == "(":
                if tokens[end + 2].string == "," and tokens[end + 3].type != tokenize.STRING:
                    yield _Reference("dynamic", f"getattr({tokens[end + 1].string}, <computed>)", line)
            yield _Reference("chain", name, line)
            if len(parts) == 1 and following == "(":
                yield _Reference("free", name, line)
        for part in parts:
            if part in _DUNDERS:
                yield _Reference("dunder", part, line)
        at = end


# ------------------------------------------------------------------------------------------------ classification


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


def _after_from(tokens: list[tokenize.TokenInfo], at: int) -> bool:
    """Whether the ``import`` before ``tokens[at]`` belongs to a ``from X import`` on the same line."""
    line = tokens[at].start[0]
    return any(t.string == "from" and t.start[0] == line for t in tokens[max(0, at - 64) : at])


def _classify(ref: _Reference) -> CodeFinding | None:
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
        on_namespace = target.split(".")[0] in _NAMESPACE_ROOTS
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

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

from .tsrules import ATTRIBUTE_FUNCTIONS, DUNDERS, NAMESPACE_ROOTS, UNPARSED, CodeFinding, CodeReference, classify

__all__ = ["analyse", "is_code_member"]

#: Findings reported per file at most (a crafted file could repeat one call a million times).
_MAX_FINDINGS = 200


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
                UNPARSED,
                line,
                "<source>",
                f"Python's parser rejects this source ({type(exc).__name__}: {str(exc)[:120]}); torch never writes "
                "such code, so it was read token by token",
            )
        )
        for reference in _token_references(text):
            finding = classify(reference)
            if finding is not None:
                add(finding)
    else:
        for reference in _Walker(tree).references():
            finding = classify(reference)
            if finding is not None:
                add(finding)
    findings.sort(key=lambda f: (f.line, f.name))
    return findings


# ------------------------------------------------------------------------------------------------ references


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

    def references(self) -> Iterator[CodeReference]:
        self._scopes()
        for node in self.nodes:
            line = getattr(node, "lineno", 1)
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] != "__torch__":
                        yield CodeReference("import", alias.name, line)
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if module.split(".")[0] != "__torch__" or node.level:
                    yield CodeReference("import", module or "." * node.level, line)
            elif isinstance(node, ast.Attribute) and node.attr in DUNDERS:
                yield CodeReference("dunder", node.attr, line)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in self.bound:
                yield CodeReference("free", node.id, line)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) >= 2:
                function, name = node.func.id, node.args[1]
                if function in ATTRIBUTE_FUNCTIONS and function not in self.bound:
                    if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
                        for target in sorted(self.chains(node.args[0])) or ["<value>"]:
                            yield CodeReference("dynamic", f"{function}({target}, <computed>)", line)
                    elif name.value in DUNDERS:
                        yield CodeReference("dunder", name.value, line)
            if id(node) not in self.inner and (isinstance(node, (ast.Attribute, ast.Name)) or _literal_getattr(node)):
                for chain in self.chains(node):
                    yield CodeReference("chain", chain, line)

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
            local = node.id in self.bound and node.id not in NAMESPACE_ROOTS
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


def _token_references(text: str) -> Iterator[CodeReference]:
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
                yield CodeReference("import", name, line)
        else:
            if parts == ["getattr"] and end + 3 < len(tokens) and tokens[end].string == "(":
                if tokens[end + 2].string == "," and tokens[end + 3].type != tokenize.STRING:
                    yield CodeReference("dynamic", f"getattr({tokens[end + 1].string}, <computed>)", line)
            yield CodeReference("chain", name, line)
            if len(parts) == 1 and following == "(":
                yield CodeReference("free", name, line)
        for part in parts:
            if part in DUNDERS:
                yield CodeReference("dunder", part, line)
        at = end


def _after_from(tokens: list[tokenize.TokenInfo], at: int) -> bool:
    """Whether the ``import`` before ``tokens[at]`` belongs to a ``from X import`` on the same line."""
    line = tokens[at].start[0]
    return any(t.string == "from" and t.start[0] == line for t in tokens[max(0, at - 64) : at])

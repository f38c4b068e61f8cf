"""What a whole-model load (:func:`torchweights.load_model`) may import, call or only reference, decided from a
global's name alone, before anything is imported.

One rule, built on the vocabulary scan and load share (:func:`~.policy.classify_global`, the safe table
:data:`~.table.SAFE_GLOBALS`, torch's own names :data:`~.torch_classes.TORCH_CLASSES`):

* ``"dangerous"`` (processes, files, eval/exec, import machinery, ``getattr`` on builtins, pickle or ``torch.load``
  recursion, dunder components, re-exported modules such as ``pkg.os.system``): never imported, whatever
  ``trust`` says.
* ``"table"``: a reconstructor or constant of the safe table (tensors, storages, containers, dtypes...).
* ``"torch-class"``: one of torch's own module classes or the types their pickles hold: imported and rebuilt, no
  trust needed. ``"torch-function"``: a torch function a module keeps as an attribute (``F.gelu`` pickles as
  ``torch._C._nn.gelu``): a reference only, never called while loading.
* ``"trusted"``: inside a package named in ``trust`` (whole dotted components: ``"ultralytics"`` covers
  ``ultralytics.nn.tasks.DetectionModel``, not ``ultralytics_evil.X``) or named exactly in ``allow_globals``.
  ``trust`` never covers torch, numpy or the standard library (:func:`prefix_trustable`): torch's own classes need
  no trust, and the rest of those hold classes whose construction writes files or starts processes
  (``torch.utils.tensorboard.SummaryWriter``, ``numpy.memmap``, ``tempfile.NamedTemporaryFile``), so each needs
  its exact name in ``allow_globals``.
  A trusted class may be instantiated and called; a trusted function is a reference only, unless
  ``allow_globals`` names it exactly.
* ``"untrusted"``: anything else; the load is refused before anything is imported, naming every such global
  and the ``trust=[...]`` that would cover it.

Plain data: no torch, nothing imported.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import field

from ..structs import structure
from .policy import classify_global
from .table import SAFE_GLOBALS
from .torch_classes import TORCH_CLASSES

__all__ = ["TrustRules", "package_of", "prefix_trustable", "trust_verdict"]

#: Top-level packages ``trust`` never covers by prefix (see :func:`prefix_trustable`).
_EXACT_ONLY = frozenset({"torch", "numpy", "builtins", "__builtin__"}) | frozenset(sys.stdlib_module_names)


def _covers(package: str, name: str) -> bool:
    """``package`` covers ``name`` by whole dotted components (``a.b`` covers ``a.b`` and ``a.b.c``, not ``a.bc``)."""
    return name == package or name.startswith(package + ".")


def package_of(name: str) -> str:
    """The top-level package of a global (``ultralytics.nn.tasks.DetectionModel`` -> ``ultralytics``)."""
    return name.split(".", 1)[0]


def prefix_trustable(name: str) -> bool:
    """Whether ``trust=[package]`` can cover ``name``: not for torch, numpy or the standard library, whose names are
    judged one by one (torch's classes need no trust; anything else of theirs needs its exact ``allow_globals``
    name). ``__main__`` (the script that saved the file) can be trusted."""
    return package_of(name) not in _EXACT_ONLY


def trust_verdict(name: str, trust: Iterable[str] = (), allow_globals: Iterable[str] = ()) -> str:
    """What a whole-model load does with global ``name``: ``"dangerous"``, ``"table"``, ``"torch-class"``,
    ``"torch-function"``, ``"trusted"`` or ``"untrusted"`` (see the module docstring).

    ``name`` is ``module.qualname`` as the pickle names it (after any ``rename_classes``).
    """
    verdict = classify_global(name)
    if verdict == "dangerous":
        return "dangerous"
    if name in SAFE_GLOBALS:
        return "table"
    kind = TORCH_CLASSES.get(name)
    if kind is not None:
        return "torch-function" if kind == "function" else "torch-class"
    if name in set(allow_globals):
        return "trusted"
    if prefix_trustable(name) and any(_covers(p, name) for p in trust if p):
        return "trusted"
    return "untrusted"


@structure(frozen=True)
class TrustRules:
    """The options of one whole-model load, as one verdict per global.

    Attributes:
        trust: packages (dotted prefixes, whole components) whose classes may be imported and rebuilt.
        allow_globals: exact ``module.qualname`` names that may be imported and called.
        rename_classes: ``old name -> new name`` for classes that moved; the new name is the one judged.
    """

    trust: tuple[str, ...] = ()
    allow_globals: frozenset[str] = frozenset()
    rename_classes: Mapping[str, str] = field(default_factory=dict)

    def target(self, name: str) -> str:
        """The name the load imports for ``name``: its exact rename, else the rename of its longest renamed module
        or package (``{"oldpkg": "newpkg"}`` maps ``oldpkg.models.GPT`` to ``newpkg.models.GPT``), else itself."""
        exact = self.rename_classes.get(name)
        if exact is not None:
            return exact
        prefix = max((k for k in self.rename_classes if name.startswith(k + ".")), key=len, default=None)
        return name if prefix is None else self.rename_classes[prefix] + name[len(prefix) :]

    def unused_renames(self, names: Iterable[str]) -> list[str]:
        """The ``rename_classes`` keys that rename none of ``names`` (a misspelt old name, most likely)."""
        names = list(names)
        return [k for k in self.rename_classes if not any(n == k or n.startswith(k + ".") for n in names)]

    def verdict(self, name: str) -> str:
        """:func:`trust_verdict` of ``name`` after renaming."""
        return trust_verdict(self.target(name), self.trust, self.allow_globals)

    def may_call_function(self, name: str) -> bool:
        """Whether a function (not a class) named ``name`` may be called: only an exact ``allow_globals`` name."""
        return self.target(name) in self.allow_globals

    def refused(self, names: Iterable[str]) -> tuple[list[str], list[str]]:
        """``(dangerous, untrusted)``: the names of ``names`` the load refuses, each list sorted."""
        dangerous, untrusted = [], []
        for name in names:
            verdict = self.verdict(name)
            if verdict == "dangerous":
                dangerous.append(name)
            elif verdict == "untrusted":
                untrusted.append(name)
        return sorted(dangerous), sorted(untrusted)

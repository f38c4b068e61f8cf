"""The table of safe reconstructors: the only callables a pickle stream reaches without the user allowing them.

:data:`SAFE_GLOBALS` joins the parts of each domain, one module each: torch (:mod:`.table_torch`), Python's builtins
and standard library (:mod:`.table_stdlib`), numpy (:mod:`.table_numpy`) and TorchScript (:mod:`.table_jit`). Loading
calls what it holds; scan calls a name in it ``"safe"`` (:func:`~torchweights.unpickle.policy.classify_global`).
"""

from __future__ import annotations

from typing import Any

from . import table_jit, table_numpy, table_stdlib, table_torch

__all__ = ["SAFE_GLOBALS"]


SAFE_GLOBALS: dict[str, Any] = {
    **table_torch.entries(),
    **table_stdlib.entries(),
    **table_numpy.entries(),
    **table_jit.entries(),
}
"""Every global a file may use without being allowed: ``module.qualname`` -> reconstructor or constant."""

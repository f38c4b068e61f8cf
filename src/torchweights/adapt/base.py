"""What every adapter is made of: a planned :class:`Step` (pure data, decided from names and shapes alone) and the
:class:`Adapter` entry of the registry (:data:`torchweights.adapt.registry.ADAPTERS`) that plans and applies it.

Two kinds of adapter:

- ``reshape``: one checkpoint tensor into one model tensor of another shape (``input_conv``, ``pos_embed``,
  ``patch_embed``). The planner asks :attr:`Adapter.fit` about each pair whose shapes differ.
- ``group``: several tensors into several (``qkv``: a fused projection into separate ones, and back). The planner
  gives :attr:`Adapter.fit_groups` the model keys left without a source and the checkpoint keys left without a
  target.

Planning never imports torch; :attr:`Adapter.apply` does (inside the function).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..structs import structure

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["Adapter", "Context", "GroupFit", "Step"]


@structure(frozen=True)
class Step:
    """One adapted model tensor: which adapter makes it, from which checkpoint tensors, with what parameters.

    Attributes:
        adapter: the registry name (``"input_conv"``).
        sources: the checkpoint tensors it is made from, in the order :attr:`Adapter.apply` takes them (the names
            the planner gave: the checkpoint's keys after prefix handling; the planner turns them into record
            names before the step goes into a plan).
        params: what planning decided, as ``(name, value)`` pairs of plain values (``(("rows", (0, 768)),)``).
        detail: one line for the report (``"3 -> 1 input channels (summed over channels)"``).
    """

    adapter: str
    sources: tuple[str, ...]
    params: tuple[tuple[str, Any], ...] = ()
    detail: str = ""

    def param(self, name: str, default: Any = None) -> Any:
        """The value of one parameter (``default`` when absent)."""
        for key, value in self.params:
            if key == name:
                return value
        return default


@structure(frozen=True)
class Context:
    """What a ``reshape`` adapter may need to know about the model beyond the one pair.

    Attributes:
        first_kernel: the model's first parameter (in ``state_dict()`` order) with 3 or more dimensions: the input
            convolution's weight, or None.
        keys: every key of the model (to look at a key's neighbours: a position table beside word embeddings is
            a text model's).
    """

    first_kernel: str | None = None
    keys: frozenset[str] = frozenset()


@structure(frozen=True)
class GroupFit:
    """What a ``group`` adapter found: the model keys it fills, each with its step, and the checkpoint keys it
    uses (they are then neither missing nor unexpected)."""

    steps: Mapping[str, Step]
    consumed: tuple[str, ...]


#: ``fit(target, src_shape, dst_shape, context) -> Step | None`` for ``reshape`` adapters. ``target`` is the model
#: key; the step's ``sources`` is ``()`` (the planner fills in the one source).
ReshapeFit = Callable[[str, tuple[int, ...], tuple[int, ...], Context], "Step | None"]
#: ``fit_groups(missing, unexpected, module_map) -> list[GroupFit]`` for ``group`` adapters: ``missing`` maps model
#: keys without a source to their shapes, ``unexpected`` maps checkpoint keys without a target (after prefix
#: handling) to theirs, ``module_map`` maps checkpoint module paths to model module paths where they differ (from
#: alignment); a module absent from it keeps its own path.
Shapes = Mapping[str, tuple[int, ...]]
GroupsFit = Callable[[Shapes, Shapes, Mapping[str, str]], "list[GroupFit]"]
#: ``apply(step, tensors, dst_shape) -> tensor``: the model tensor (``dst_shape``), from the step's sources in order
#: (in their own dtype; the caller casts to the model's).
Apply = Callable[[Step, "Sequence[torch.Tensor]", tuple[int, ...]], "torch.Tensor"]


@structure(frozen=True)
class Adapter:
    """One entry of the adapter table.

    Attributes:
        name: what users pass in ``adapt=[...]``.
        kind: ``"reshape"`` or ``"group"``.
        summary: one line for the README's table and ``--help``.
        fit: the planner of a ``reshape`` adapter (None for groups).
        fit_groups: the planner of a ``group`` adapter (None for reshapes).
        apply: the transform (imports torch).
    """

    name: str
    kind: str
    summary: str
    apply: Apply
    fit: ReshapeFit | None = None
    fit_groups: GroupsFit | None = None

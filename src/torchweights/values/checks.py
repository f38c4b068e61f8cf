"""The value checks of ``tw.load_into(model, src, check_values=True)``: which loaded tensors hold suspicious values.

They run on the model's tensors after the copy (nothing is read from the file again), one tensor at a time, each
reduced in bounded chunks (:func:`~torchweights.values.stats.tensor_stats` without the moments). The rules:

- **nan**, **inf**: any loaded floating-point or complex tensor, parameter or buffer, with a NaN or an infinite
  value. Such values are never there by design in a checkpoint's weights or statistics.
- **zero**: a loaded *weight matrix or kernel* whose values are all zero. A weight matrix or kernel is a parameter
  (not a buffer) with two or more dimensions whose name does not look zero by design: no ``bias`` (biases start
  at zero), ``mask``, ``token`` (``cls_token``, ``mask_token``: often zero-initialised) or ``lora_b`` (LoRA's B
  matrix starts at zero) in its last name component. Buffers (BatchNorm's ``running_mean``/``running_var``/
  ``num_batches_tracked``, attention masks, ``position_ids``) and 1-d parameters (biases, LayerNorm and
  BatchNorm affine terms) are never flagged as zero or constant. An embedding whose padding row is zero is not
  all zero, so it is not flagged either.
- **constant**: a weight matrix or kernel (as above) with at least two values, all finite and all equal to one
  nonzero value (``nn.init.ones_`` on a linear layer, a broadcast fill). 1-d tensors are never constant
  findings: LayerNorm and BatchNorm weights are all ones by design.
- **initial**: a model tensor nothing was loaded into (a key missing, skipped or of another shape), so it holds
  what the model was built with, or what ``init_missing=True`` computed. Tensors left on the meta device are the
  report's ``left_on_meta``, not findings.

A dry run (``dry_run=True``, ``torchweights check --check-values``) applies the same rules to the checkpoint's
tensors that the plan would load, read from the file one at a time (values before any cast).

Findings are warnings: ``report.ok`` keeps its meaning (every key accounted for); the report shows them in a
"values" section, its result line says ``WARN`` instead of ``OK``, and the load is logged on the ``torchweights``
logger as not clean.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

from ..records import Checkpoint
from .findings import FindingKind, ValueFinding

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..plan.model import Action, Plan
    from ..plan.spec import ModelSpec
    from .stats import TensorStats

__all__ = ["ZERO_BY_DESIGN", "check_planned", "check_values", "findings_of", "is_weight"]

#: Parts of a parameter's last name component that mark a tensor zero (or constant) by design (lowercase).
ZERO_BY_DESIGN = ("bias", "mask", "token", "lora_b")


def is_weight(name: str, dim: int, parameter: bool) -> bool:
    """Whether the zero and constant rules apply: a parameter of two or more dimensions whose last name component
    contains none of :data:`ZERO_BY_DESIGN`."""
    leaf = name.rsplit(".", 1)[-1].lower()
    return parameter and dim >= 2 and not any(word in leaf for word in ZERO_BY_DESIGN)


def findings_of(stats: TensorStats, weight: bool) -> list[ValueFinding]:
    """The findings for one tensor's statistics (``weight``: the zero and constant rules apply)."""
    name, numel = stats.name, stats.numel
    found: list[ValueFinding] = []
    if stats.nan_count:
        found.append(ValueFinding(name, FindingKind.NAN, f"{stats.nan_count:,} of {numel:,} values are NaN"))
    if stats.inf_count:
        found.append(ValueFinding(name, FindingKind.INF, f"{stats.inf_count:,} of {numel:,} values are infinite"))
    if not weight or not numel:
        return found
    if stats.zero_fraction == 1.0:
        found.append(ValueFinding(name, FindingKind.ZERO, f"all {numel:,} values are zero"))
    elif numel > 1 and stats.finite_count == numel and stats.min is not None and stats.min == stats.max:
        found.append(ValueFinding(name, FindingKind.CONSTANT, f"all {numel:,} values are {stats.min:.6g}"))
    return found


def check_values(model: torch.nn.Module, plan: Plan, left_on_meta: Collection[str] = ()) -> tuple[ValueFinding, ...]:
    """The value findings of a load that has been applied: the loaded tensors' values as ``model`` holds them, and
    the model tensors the plan left unfilled, in the plan's order (see the module docstring for the rules)."""
    parameters = dict(model.named_parameters(remove_duplicate=False))
    tensors: dict[str, torch.Tensor] = {**dict(model.named_buffers(remove_duplicate=False)), **parameters}
    seen: set[int] = set()

    def value(action: Action) -> tuple[torch.Tensor, bool] | None:
        tensor = tensors.get(action.target or "")
        if tensor is None or id(tensor) in seen:
            return None
        seen.add(id(tensor))  # a tensor tied to another is checked once
        return tensor.detach(), action.target in parameters

    return _walk(plan, left_on_meta, value)


def check_planned(checkpoint: Checkpoint | Mapping[str, Any], plan: Plan, spec: ModelSpec) -> tuple[ValueFinding, ...]:
    """The value findings a dry run of ``plan`` would give: the checkpoint's tensors that the plan loads, read one
    at a time from the file (the values before any cast), named as the model names them."""
    from ..storage.read import materialize

    def value(action: Action) -> tuple[torch.Tensor, bool] | None:
        entry = spec.entries.get(action.target or "")
        source = action.source
        if entry is None or entry.tied_to is not None or source is None:
            return None
        if not isinstance(checkpoint, Checkpoint):
            tensor = checkpoint.get(source)
            return None if tensor is None else (tensor.detach(), entry.kind == "parameter")
        record = checkpoint.records.get(source)
        if record is None or not record.has_data:
            return None
        return materialize([record])[source], entry.kind == "parameter"

    return _walk(plan, plan.left_on_meta, value)


def _walk(
    plan: Plan, left_on_meta: Collection[str], value: Callable[[Action], tuple[torch.Tensor, bool] | None]
) -> tuple[ValueFinding, ...]:
    """Findings over the plan's actions: ``initial`` for model keys nothing fills, the value rules for each loaded
    tensor ``value(action)`` gives (``(tensor, is a parameter)``; None: not checked)."""
    from .stats import tensor_stats

    meta = set(left_on_meta)
    initialised = set(plan.initialised)
    causes = {"skip": "skipped", "missing": "missing", "mismatch": "shape mismatch"}
    found: list[ValueFinding] = []
    for action in plan.actions:
        name = action.target
        if name is None or name in meta:
            continue
        if action.kind in causes:
            how = "initialised by init_missing" if name in initialised else "left as initialised"
            found.append(ValueFinding(name, FindingKind.INITIAL, f"nothing loaded ({causes[action.kind]}): {how}"))
            continue
        got = value(action) if action.kind == "load" else None
        if got is None:
            continue
        tensor, parameter = got
        if tensor.is_floating_point() or tensor.is_complex() or tensor.is_quantized:
            stats = tensor_stats(name, tensor, moments=False)
            found += findings_of(stats, is_weight(name, tensor.dim(), parameter))
        del tensor, got
    return tuple(found)

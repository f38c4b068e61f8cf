"""The only code that mutates a model: executes a :class:`~torchweights.plan.Plan`.

Copy path: each loaded tensor is copied (and cast) into the existing parameter under ``no_grad``. Meta path:
parameters on the meta device are replaced by tensors built from the checkpoint (no second allocation), and tied
parameters are re-tied. Modules that load their state their own way (``_load_from_state_dict`` overrides,
load_state_dict hooks) receive their keys through torch's own ``load_state_dict``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .plan import Action, Plan, mapping_tensors
from .records import Checkpoint
from .spec import ModelSpec

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["apply_plan"]


def _owner(model: torch.nn.Module, name: str) -> tuple[torch.nn.Module, str]:
    module_name, _, attr = name.rpartition(".")
    return (model.get_submodule(module_name) if module_name else model), attr


def _sources(plan: Plan, checkpoint: Checkpoint | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The checkpoint tensors the plan loads, each storage read once."""
    wanted = [a.source for a in plan.actions if a.kind == "load" and a.source is not None]
    if isinstance(checkpoint, Checkpoint):
        from .storage import materialize

        return materialize([checkpoint.records[name] for name in wanted])
    flat = mapping_tensors(checkpoint)
    return {name: flat[name][1] for name in wanted}


def _outermost_custom(name: str, custom: tuple[str, ...]) -> str | None:
    best: str | None = None
    for module in custom:
        if module == "" or name.startswith(module + "."):
            if best is None or len(module) < len(best):
                best = module
    return best


def _prepare(action: Action, tensor: torch.Tensor) -> torch.Tensor:
    if "reshape" in action.via and action.dst_shape is not None:
        tensor = tensor.reshape(action.dst_shape)  # 0-dim <-> (1,) scalars, checked by the planner
    return tensor


def apply_plan(
    plan: Plan,
    model: torch.nn.Module,
    checkpoint: Checkpoint | Mapping[str, Any],
    spec: ModelSpec,
) -> tuple[int, tuple[str, ...]]:
    """Execute ``plan`` on ``model``.

    Returns:
        ``(bytes read from the checkpoint, modules loaded through torch's own path)``.
    """
    import torch

    from . import dtypes

    tensors = _sources(plan, checkpoint)
    bytes_read = sum(t.numel() * t.element_size() for t in tensors.values())
    fallback: dict[str, dict[str, torch.Tensor]] = {}
    replaced: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for action in plan.actions:
            if action.kind != "load" or action.target is None or action.source is None:
                continue
            source = _prepare(action, tensors[action.source])
            custom = _outermost_custom(action.target, spec.custom_modules) if action.fallback else None
            if custom is not None:
                local = action.target[len(custom) + 1 :] if custom else action.target
                fallback.setdefault(custom, {})[local] = source
                continue
            module, attr = _owner(model, action.target)
            current = module._parameters.get(attr) if attr in module._parameters else module._buffers.get(attr)
            dst_dtype = dtypes.to_torch(action.dst_dtype or action.src_dtype or "float32")
            if current is None or current.is_meta or current.dtype != dst_dtype:
                new = source.to(dtype=dst_dtype, device="cpu" if current is None or current.is_meta else current.device)
                if new.untyped_storage().data_ptr() == source.untyped_storage().data_ptr() and (
                    not new.is_contiguous() or new.numel() * new.element_size() != new.untyped_storage().nbytes()
                ):
                    new = new.clone()  # a view into a shared checkpoint storage: give the model its own memory
                _assign(module, attr, new)
                replaced[action.target] = new
            else:
                current.copy_(source)
        for entry in spec.entries.values():  # re-tie weights whose twin was replaced
            if entry.tied_to is not None and entry.tied_to in replaced and entry.name not in replaced:
                twin_module, twin_attr = _owner(model, entry.tied_to)
                module, attr = _owner(model, entry.name)
                shared: torch.Tensor | None = twin_module._parameters.get(twin_attr)
                if shared is None:
                    shared = twin_module._buffers.get(twin_attr)
                if shared is not None:
                    if attr in module._parameters:
                        module._parameters[attr] = shared  # type: ignore[assignment]
                    else:
                        module._buffers[attr] = shared
    for module_name, state in fallback.items():
        module = model.get_submodule(module_name) if module_name else model
        module.load_state_dict(state, strict=False)
    return bytes_read, tuple(fallback)


def _assign(module: torch.nn.Module, attr: str, tensor: torch.Tensor) -> None:
    import torch

    if attr in module._parameters:
        old = module._parameters[attr]
        requires_grad = (old.requires_grad if old is not None else True) and (
            tensor.is_floating_point() or tensor.is_complex()
        )
        module._parameters[attr] = torch.nn.Parameter(tensor, requires_grad=requires_grad)
    else:
        module._buffers[attr] = tensor

"""What the planner needs to know about a model: names, shapes and dtypes of its parameters and buffers.

A :class:`ModelSpec` is plain data. :meth:`ModelSpec.from_module` reads it off an ``nn.Module`` (imports torch);
:meth:`ModelSpec.from_tuples` builds one from ``(name, shape, dtype)`` tuples for tests and tools.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["ModelEntry", "ModelSpec"]

#: Buffer names of torch's normalisation layers, for :meth:`ModelSpec.from_tuples`.
_BUFFER_NAMES = ("running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class ModelEntry:
    """One key of the model's state dict.

    Attributes:
        name: state-dict key (``encoder.layers.0.attn.q.weight``).
        shape: its shape.
        dtype: torch dtype name without prefix (``"float32"``).
        kind: ``"parameter"`` or ``"buffer"``.
        tied_to: for a key that shares its storage with an earlier key (tied weights), that earlier key.
        module: the owning module's path (``encoder.layers.0.attn.q``; ``""`` for the root).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    kind: str = "parameter"
    tied_to: str | None = None
    module: str = ""


@dataclass(frozen=True)
class ModelSpec:
    """The model side of a reconciliation.

    Attributes:
        entries: state-dict key -> :class:`ModelEntry`, in ``state_dict()`` order.
        custom_modules: paths of modules that override ``_load_from_state_dict`` or have load_state_dict hooks;
            their keys are loaded through torch's own path.
        class_name: the model's class, for messages.
        on_meta: whether the model's tensors live on the meta device (to be materialised from the checkpoint).
    """

    entries: dict[str, ModelEntry] = field(default_factory=dict)
    custom_modules: tuple[str, ...] = ()
    class_name: str = "model"
    on_meta: bool = False

    def __len__(self) -> int:
        return len(self.entries)

    @classmethod
    def from_tuples(
        cls,
        items: Iterable[tuple[Any, ...]],
        *,
        class_name: str = "model",
        custom_modules: Iterable[str] = (),
        on_meta: bool = False,
    ) -> ModelSpec:
        """A spec from ``(name, shape, dtype)`` tuples, for tests and tools.

        A tuple may carry two more items: ``kind`` (``"parameter"`` or ``"buffer"``) and ``tied_to`` (an earlier
        key sharing its storage). Without ``kind``, BatchNorm's ``running_mean``, ``running_var`` and
        ``num_batches_tracked`` are buffers and everything else a parameter.
        """
        entries: dict[str, ModelEntry] = {}
        for item in items:
            if not 3 <= len(item) <= 5:
                raise ValueError(f"expected (name, shape, dtype[, kind[, tied_to]]), got {item!r}")
            name, shape, dtype = item[0], tuple(int(n) for n in item[1]), str(item[2])
            kind = item[3] if len(item) > 3 else ("buffer" if name.rpartition(".")[2] in _BUFFER_NAMES else "parameter")
            tied_to = item[4] if len(item) > 4 else None
            if tied_to is not None and tied_to not in entries:
                raise ValueError(f"{name!r} is tied to {tied_to!r}, which is not an earlier key")
            entries[name] = ModelEntry(name, shape, dtype, kind=kind, tied_to=tied_to, module=name.rpartition(".")[0])
        return cls(entries=entries, custom_modules=tuple(custom_modules), class_name=class_name, on_meta=on_meta)

    @classmethod
    def from_module(cls, model: torch.nn.Module) -> ModelSpec:
        """Read the spec off a model: parameters and persistent buffers, tied storages, custom loaders."""
        entries: dict[str, ModelEntry] = {}
        seen: dict[tuple[Any, ...], str] = {}
        custom: list[str] = []
        on_meta = False
        for module_name, module in model.named_modules(remove_duplicate=False):
            if _has_custom_loading(module) and module_name not in custom:
                custom.append(module_name)
            non_persistent: set[str] = getattr(module, "_non_persistent_buffers_set", set())
            groups = (
                ("parameter", module._parameters.items()),
                ("buffer", ((n, b) for n, b in module._buffers.items() if n not in non_persistent)),
            )
            for kind, tensors in groups:
                for local, tensor in tensors:
                    if tensor is None:
                        continue
                    name = f"{module_name}.{local}" if module_name else local
                    if name in entries:
                        continue
                    on_meta = on_meta or tensor.is_meta
                    tied_to = None
                    if tensor.numel() and not tensor.is_meta:
                        try:
                            ptr = tensor.untyped_storage().data_ptr()
                        except (RuntimeError, NotImplementedError):  # sparse, quantized...: no plain storage
                            ptr = None
                        if ptr is not None:
                            key = (ptr, tensor.storage_offset(), tuple(tensor.shape))
                            tied_to = seen.setdefault(key, name)
                            tied_to = None if tied_to == name else tied_to
                    elif tensor.is_meta:
                        tied_to = seen.setdefault(("meta", id(tensor)), name)
                        tied_to = None if tied_to == name else tied_to
                    entries[name] = ModelEntry(
                        name=name,
                        shape=tuple(tensor.shape),
                        dtype=str(tensor.dtype).removeprefix("torch."),
                        kind=kind,
                        tied_to=tied_to,
                        module=module_name,
                    )
        return cls(entries=entries, custom_modules=tuple(custom), class_name=type(model).__name__, on_meta=on_meta)


def _has_custom_loading(module: torch.nn.Module) -> bool:
    """Whether ``module`` loads its state its own way (overridden ``_load_from_state_dict`` or hooks)."""
    import torch

    # The class that defines the loader in use: a user subclass of BatchNorm2d inherits torch's, which only
    # handles version upgrades and is fine to bypass; an override anywhere outside torch.nn.modules is not.
    owner = next((k for k in type(module).__mro__ if "_load_from_state_dict" in vars(k)), torch.nn.Module)
    own = owner is not torch.nn.Module and not owner.__module__.startswith("torch.nn.modules")
    hooks = bool(getattr(module, "_load_state_dict_pre_hooks", None)) or bool(
        getattr(module, "_load_state_dict_post_hooks", None)
    )
    return own or hooks

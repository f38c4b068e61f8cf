"""The one table of adapters: name -> :class:`~torchweights.adapt.base.Adapter`. A new adapter is a module of this
package and a line here."""

from __future__ import annotations

from . import input_conv, patch_embed, pos_embed, qkv
from .base import Adapter

__all__ = ["ADAPTERS", "names"]

#: Every adapter, by the name users pass in ``adapt=[...]``, in the order the planner tries them.
ADAPTERS: dict[str, Adapter] = {
    adapter.name: adapter for adapter in (input_conv.ADAPTER, pos_embed.ADAPTER, patch_embed.ADAPTER, qkv.ADAPTER)
}


def names() -> tuple[str, ...]:
    """The adapters' names, in table order."""
    return tuple(ADAPTERS)

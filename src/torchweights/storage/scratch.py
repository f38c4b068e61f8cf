"""Bounded scratch memory for the read engine: at most one buffer per reader thread
(:class:`IOSettings.scratch_bytes <torchweights.storage.settings.IOSettings>` in all), recycled, pinned when a CUDA
tensor is filled (each :class:`Buffer` then carries the CUDA event its last host-to-device copy must reach before
it is reused). Every buffer the engine allocates for itself, scratch or a temporary copy of a storage, comes from
:func:`_allocate`. torch is imported inside the functions, never at import time.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from .targets import memory_of

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["Buffer", "Scratch"]


def _allocate(nbytes: int, *, pinned: bool = False, kind: str = "scratch") -> torch.Tensor:
    """Every buffer the engine allocates for itself (scratch or a temporary storage copy) comes from here."""
    import torch

    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned)


class Buffer:
    def __init__(self, raw: torch.Tensor) -> None:
        self.raw = raw
        self.mem = memory_of(raw)
        self.fence: Any = None  # a CUDA event the next user must wait for

    def wait(self) -> None:
        if self.fence is not None:
            self.fence.synchronize()
            self.fence = None


class Scratch:
    """At most ``count`` buffers of ``size`` bytes, allocated on first use and recycled."""

    def __init__(self, size: int, count: int, pinned: bool) -> None:
        self.size = size
        self.count = count
        self.pinned = pinned
        self.free: list[Buffer] = []
        self.made = 0
        self.cond = threading.Condition()

    def take(self) -> Buffer:
        with self.cond:
            while not self.free and self.made >= self.count:
                self.cond.wait()
            if self.free:
                buf = self.free.pop()
            else:
                self.made += 1
                buf = None
        if buf is None:
            buf = Buffer(_allocate(self.size, pinned=self.pinned, kind="scratch"))
        buf.wait()
        return buf

    def give(self, buf: Buffer) -> None:
        with self.cond:
            self.free.append(buf)
            self.cond.notify()

    def temporary(self, nbytes: int) -> torch.Tensor:
        """A buffer of its own for a storage larger than one scratch buffer (freed when dropped)."""
        return _allocate(nbytes, kind="temp")

"""Resource bounds every reader honours, so a crafted file cannot exhaust memory, time or the stack."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_LIMITS", "Limits"]


@dataclass(frozen=True)
class Limits:
    """Caps on what one checkpoint may ask of a reader.

    Attributes:
        max_pickle_bytes: largest pickle stream read into memory.
        max_header_bytes: largest safetensors JSON header.
        max_index_bytes: largest sharded-checkpoint index file.
        max_depth: deepest container nesting walked when naming tensors.
        max_tensor_dims: most dimensions a tensor may declare.
        max_inflated_bytes: total bytes that compressed zip members may inflate to (a zip-bomb budget).
    """

    max_pickle_bytes: int = 1 << 30
    max_header_bytes: int = 100 << 20
    max_index_bytes: int = 64 << 20
    max_depth: int = 200
    max_tensor_dims: int = 64
    max_inflated_bytes: int = 16 << 30


DEFAULT_LIMITS = Limits()

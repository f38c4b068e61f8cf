"""Resource bounds every reader honours, so a crafted file cannot exhaust memory, time or the stack."""

from __future__ import annotations

from .structs import structure

__all__ = ["DEFAULT_LIMITS", "Limits"]


@structure(frozen=True)
class Limits:
    """Caps on what one checkpoint may ask of a reader.

    Attributes:
        max_pickle_bytes: largest pickle stream read into memory.
        max_header_bytes: largest safetensors JSON header.
        max_index_bytes: largest sharded-checkpoint index file.
        max_depth: deepest container nesting walked when naming tensors.
        max_tensor_dims: most dimensions a tensor may declare.
        max_inflated_bytes: total bytes that compressed zip members may inflate to (a zip-bomb budget).
        max_inflate_ratio: how many times its compressed size one compressed member that is read whole (a pickle,
            TorchScript source, a record) may inflate to, once it inflates to more than ``inflate_ratio_from_bytes``.
            torch never compresses its pickles (only TorchScript source and debug tables, a few kB each, about 3:1),
            so a 2 MiB ``data.pkl`` that claims 2 GiB is a decompression bomb: refused before anything is inflated.
        inflate_ratio_from_bytes: the size above which ``max_inflate_ratio`` applies (small members may compress
            well: a pickle of repeated keys, a 1 MiB run of zeros).
        max_source_bytes: TorchScript source that ``scan`` analyses per archive (about 2 s and 120 MB per MiB;
            torch writes tens of kB per module type). Source past it is not analysed and the file is "unreadable".
        max_pickle_opcodes: the work one pickle stream may ask of the machine: opcodes executed, and (counted
            apart, against the same number) the items of tuples hashed as dict keys or set elements, which a few
            bytes can make Python hash again and again. An opcode costs about 1 µs, so the default bounds a stream
            to well under a minute of CPU whatever its size; no bound on the bytes can do that, since every opcode
            takes at least one byte (a 1 GiB pickle of one-byte opcodes would take about 20 minutes). ``torch.save``
            writes about 30 opcodes per tensor (a 300-tensor ``data.pkl``: 9,600) and a pickle of Python numbers
            about one per 9 bytes, so only a stream of over 30 million Python objects needs more.
    """

    max_pickle_bytes: int = 1 << 30
    max_header_bytes: int = 100 << 20
    max_index_bytes: int = 64 << 20
    max_depth: int = 200
    max_tensor_dims: int = 64
    max_inflated_bytes: int = 16 << 30
    max_inflate_ratio: int = 100
    inflate_ratio_from_bytes: int = 16 << 20
    max_source_bytes: int = 8 << 20
    max_pickle_opcodes: int = 1 << 25

    def inflation_refused(self, compressed_size: int, size: int) -> bool:
        """Whether inflating ``compressed_size`` bytes to ``size`` bytes of one member breaks the per-member rule:
        more than ``inflate_ratio_from_bytes`` and more than ``max_inflate_ratio`` times the compressed size."""
        return size > self.inflate_ratio_from_bytes and size > self.max_inflate_ratio * max(compressed_size, 1)


DEFAULT_LIMITS = Limits()

"""The arithmetic the adapters share: the dtype they compute in and the one grid resize (bicubic, antialiased, as
timm resamples position embeddings and patch kernels). Imports torch inside the functions only."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["resize_grid", "working_copy"]


def working_copy(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in the dtype adapters compute in: float32, or float64 for a float64 tensor (timm computes in
    float32 always; rounding a float64 checkpoint through float32 would lose precision for nothing). The caller
    turns the result back into ``tensor.dtype``."""
    import torch

    return tensor.to(torch.float64 if tensor.dtype == torch.float64 else torch.float32)


def resize_grid(grid: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Resize the last two dimensions of ``grid`` (``(N, C, h, w)``, float32 or float64) to ``size``: bicubic,
    ``align_corners=False``, ``antialias=True``, which is ``F.interpolate``'s antialiased (PIL-style) cubic kernel:
    coefficient a = -0.5 and border weights renormalised, against a = -0.75 and clamped borders without
    antialiasing. The two differ on upsampling too, not only on downsampling. timm's ``resample_abs_pos_embed``,
    ``resample_abs_pos_embed_nhwc`` and ``resample_patch_embed`` all default to this."""
    import torch.nn.functional as F

    return F.interpolate(grid, size=size, mode="bicubic", align_corners=False, antialias=True)

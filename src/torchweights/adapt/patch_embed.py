"""``patch_embed``: a ViT patch-embedding kernel ``(D, C, p, p)`` loaded into a model with another patch size
``(D, C, q, q)``, with FlexiViT's pseudo-inverse resize (timm's ``resample_patch_embed``, with its defaults).

**The method.** Let ``B`` be the linear map that resizes a ``p x p`` patch to ``q x q`` (bicubic, antialiased,
``align_corners=False``: timm's default, the same resize as :mod:`~torchweights.adapt.pos_embed`; FlexiViT's paper
uses bilinear). A patch ``x`` seen through the old kernel gives ``<x, w>``; the same image at the new resolution gives
the patch ``B x``, so the new kernel should satisfy ``<B x, w'> = <x, w>`` for every ``x``, i.e. ``B^T w' = w``. The
adapter takes ``w' = pinv(B^T) w`` for every ``(d, c)`` slice:

- **upsampling** (``q > p``): ``B^T`` has full row rank and the equation is solved exactly (the least-norm ``w'``):
  a model with patch ``q`` on an image ``q / p`` times larger sees the tokens the old model saw.
- **downsampling** (``q < p``): ``q * q < p * p`` unknowns cannot satisfy ``p * p`` equations; ``w'`` is the
  least-squares approximation (fine detail of the old kernel is lost), and the step's detail says so.

The resize matrix is built in float32 as timm builds it (``F.interpolate`` of each basis patch), its pseudo-inverse
in float64 (timm: ``np.linalg.pinv``), the product in float32 (float64 stays float64), the result in the checkpoint's
dtype.

**Which keys.** A 4-D ``weight`` whose module's name, or whose parent's name when the module is ``proj``,
``projection`` or ``conv``, has the words ``patch`` and ``embed``/``embedding``: timm's ``patch_embed.proj.weight``,
Hugging Face ViT's ``patch_embeddings.projection.weight``, CLIP's ``patch_embedding.weight``. Same ``D`` and ``C``,
square kernels in both. Other stems (open_clip's ``conv1``, a hybrid ViT's backbone) are not recognised: the method
is sound only for a kernel whose stride equals its size (a patchifier), which the shapes cannot show.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .base import Adapter, Context, Step
from .names import EMBED_WORDS, module_and_leaf, words
from .numeric import resize_grid, working_copy

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["ADAPTER", "apply", "fit", "is_patch_key", "resize_matrix"]

PATCH_WORDS = frozenset({"patch", "patches"})
PROJECTIONS = frozenset({"proj", "projection", "conv"})


def _patchy(name: str) -> bool:
    found = set(words(name))
    return bool(found & PATCH_WORDS) and bool(found & EMBED_WORDS)


def is_patch_key(key: str) -> bool:
    """True for a key the adapter may resize (see the module docstring)."""
    module, leaf = module_and_leaf(key)
    if leaf != "weight" or not module:
        return False
    parent, _, name = module.rpartition(".")
    return _patchy(name) or (name in PROJECTIONS and _patchy(parent.rpartition(".")[2]))


def fit(target: str, src_shape: tuple[int, ...], dst_shape: tuple[int, ...], context: Context) -> Step | None:
    """The resize that makes ``dst_shape`` from ``src_shape``, or None (see the module docstring)."""
    if not is_patch_key(target) or len(src_shape) != 4 or len(dst_shape) != 4 or src_shape[:2] != dst_shape[:2]:
        return None
    old, new = src_shape[2], dst_shape[2]
    if src_shape[3] != old or dst_shape[3] != new or old == new:
        return None
    how = "exact for every patch" if new > old else "downsampling: a least-squares approximation, not exact"
    detail = f"patch kernel {old}x{old} -> {new}x{new}: FlexiViT pseudo-inverse resize ({how})"
    return Step("patch_embed", (), (("patch", old), ("new_patch", new)), detail)


def resize_matrix(old: int, new: int) -> torch.Tensor:
    """``B^T``: row ``i`` is the ``new x new`` resize of the ``i``-th basis ``old x old`` patch, flattened (float32,
    ``(old * old, new * new)``)."""
    import torch

    basis = torch.eye(old * old, dtype=torch.float32).reshape(old * old, 1, old, old)
    return resize_grid(basis, (new, new)).reshape(old * old, new * new)


def apply(step: Step, tensors: Sequence[torch.Tensor], dst_shape: tuple[int, ...]) -> torch.Tensor:
    """The resized kernel, in the source's dtype."""
    import torch

    (source,) = tensors
    kernel = working_copy(source)
    old, new = step.param("patch"), step.param("new_patch")
    inverse = torch.linalg.pinv(resize_matrix(old, new).to(torch.float64)).to(kernel.dtype)  # (new², old²)
    flat = kernel.reshape(-1, old * old)
    return (flat @ inverse.T).reshape(dst_shape).to(source.dtype)


ADAPTER = Adapter(
    name="patch_embed",
    kind="reshape",
    summary="ViT patch-embedding kernel to another patch size, FlexiViT's pseudo-inverse resize as timm's "
    "resample_patch_embed (exact when upsampling)",
    apply=apply,
    fit=fit,
)

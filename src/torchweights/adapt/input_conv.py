"""``input_conv``: the model's first convolution kernel ``(O, I, *k)`` loaded into one with ``I'`` input channels
(an RGB stem into a grayscale or RGBA model), with the semantics of timm's ``adapt_input_conv``:

- ``I' == 1`` from ``I <= 3``: the kernel summed over its input channels (a gray image ``g`` fed to every colour
  channel gives the same response as ``g`` through the summed kernel).
- ``I' == I // 3`` from ``I > 3`` with ``I % 3 == 0``: timm's space-to-depth stem (``I = 3 * s * s`` channels, colour
  innermost, as TResNet's ``SpaceToDepth`` orders them) into a grayscale one (``s * s`` channels): the kernel
  reshaped to ``(O, I // 3, 3, *k)`` and summed over the 3. timm takes this branch whenever ``in_chans == 1`` and
  ``I > 3``; from shapes alone we also require ``I'`` to be a square (``s * s``) so that, say, 9 -> 3 channels is not
  read as a stem.
- ``I' != 3`` from ``I == 3``: the three channels repeated ``ceil(I' / 3)`` times, the first ``I'`` kept, scaled by
  ``3 / I'`` (so a constant image keeps its response).
- anything else (a 4-channel kernel into 2 channels, ...): no fit.

Only for the model's first kernel (:attr:`~torchweights.adapt.base.Context.first_kernel`): an inner convolution
whose channels changed is a changed architecture, not another input. Any kernel of 3 or more dimensions (Conv1d,
Conv2d, Conv3d; timm handles Conv2d only), same ``O`` and spatial size. Computed in float32 (float64 stays float64)
and returned in the checkpoint's dtype, as timm does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .base import Adapter, Context, Step
from .numeric import working_copy

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["ADAPTER", "apply", "fit"]

SUM = "sum"
SPACE_TO_DEPTH = "space_to_depth"
REPEAT = "repeat"


def fit(target: str, src_shape: tuple[int, ...], dst_shape: tuple[int, ...], context: Context) -> Step | None:
    """The step that makes ``dst_shape`` from a first kernel of ``src_shape``, or None (see the module docstring)."""
    if target != context.first_kernel or len(src_shape) < 3 or len(src_shape) != len(dst_shape):
        return None
    if src_shape[0] != dst_shape[0] or src_shape[2:] != dst_shape[2:]:
        return None
    have, want = src_shape[1], dst_shape[1]
    if have == want:
        return None
    if want == 1 and have <= 3:
        return Step("input_conv", (), (("method", SUM),), f"{have} -> 1 input channels: summed over channels")
    if have > 3 and have % 3 == 0 and want == have // 3 and math.isqrt(want) ** 2 == want:
        detail = f"{have} -> {want} input channels: space-to-depth stem, summed over each pixel's 3 colours"
        return Step("input_conv", (), (("method", SPACE_TO_DEPTH),), detail)
    if have == 3:
        copies = math.ceil(want / 3)
        detail = f"3 -> {want} input channels: repeated {copies}x, first {want} kept, scaled by 3/{want}"
        return Step("input_conv", (), (("method", REPEAT),), detail)
    return None


def apply(step: Step, tensors: Sequence[torch.Tensor], dst_shape: tuple[int, ...]) -> torch.Tensor:
    """The adapted kernel, in the source's dtype."""
    (source,) = tensors
    kernel = working_copy(source)
    method = step.param("method")
    out_channels, in_channels = kernel.shape[:2]
    spatial = tuple(kernel.shape[2:])
    if method == SUM:
        adapted = kernel.sum(dim=1, keepdim=True)
    elif method == SPACE_TO_DEPTH:
        adapted = kernel.reshape(out_channels, in_channels // 3, 3, *spatial).sum(dim=2)
    else:
        want = dst_shape[1]
        repeats = (1, math.ceil(want / 3)) + (1,) * len(spatial)
        adapted = kernel.repeat(*repeats)[:, :want] * (3 / want)
    return adapted.to(source.dtype)


ADAPTER = Adapter(
    name="input_conv",
    kind="reshape",
    summary="first conv kernel to other input channels, as timm's adapt_input_conv (1: summed; 3 -> N: repeated, "
    "scaled by 3/N)",
    apply=apply,
    fit=fit,
)

"""``patch_embed``: FlexiViT's resize checked by its defining property (a patch through the old kernel answers as its
resized patch through the new one) with the resize done here by ``F.interpolate``, and against a numpy least-squares
solve for downsampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from torchweights.adapt.base import Context
from torchweights.adapt.patch_embed import ADAPTER, fit, is_patch_key
from torchweights.adapt.registry import ADAPTERS

KEY = "patch_embed.proj.weight"


def _resize(patches: torch.Tensor, size: int) -> torch.Tensor:
    """timm's default patch resize: bicubic, antialiased."""
    return F.interpolate(patches, size=(size, size), mode="bicubic", align_corners=False, antialias=True)


def _run(source: torch.Tensor, dst_shape: tuple[int, ...], key: str = KEY) -> torch.Tensor:
    step = fit(key, tuple(source.shape), dst_shape, Context(first_kernel=key))
    assert step is not None
    out = ADAPTER.apply(step, [source], dst_shape)
    assert tuple(out.shape) == dst_shape
    return out


def test_registered() -> None:
    assert ADAPTERS["patch_embed"] is ADAPTER and ADAPTER.kind == "reshape"
    assert list(ADAPTERS)[:3] == ["input_conv", "pos_embed", "patch_embed"]


@pytest.mark.parametrize(("old", "new"), [(8, 16), (4, 6), (5, 15)])
def test_upsampling_keeps_every_patch_response(old: int, new: int) -> None:
    kernel = torch.randn(6, 3, old, old, dtype=torch.float64)
    resized = _run(kernel, (6, 3, new, new))
    patches = torch.randn(20, 3, old, old, dtype=torch.float64)
    big = _resize(patches.float(), new).double()
    before = torch.einsum("nchw,dchw->nd", patches, kernel)
    after = torch.einsum("nchw,dchw->nd", big, resized)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_upsampling_as_a_convolution_float32() -> None:
    """The same through conv2d with stride = kernel size, in float32: a ViT's tokens on patches resized one by one."""
    kernel = torch.randn(4, 3, 4, 4)
    resized = _run(kernel, (4, 3, 8, 8))
    patches = torch.randn(5, 3, 4, 4)
    tokens = F.conv2d(patches, kernel, stride=4)
    torch.testing.assert_close(F.conv2d(_resize(patches, 8), resized, stride=8), tokens, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("old", "new"), [(8, 4), (4, 8)])
def test_least_squares_least_norm_solution(old: int, new: int) -> None:
    """timm's ``pinv``: the least-squares kernel when downsampling, the least-norm exact one when upsampling."""
    kernel = torch.randn(3, 2, old, old, dtype=torch.float64)
    out = _run(kernel, (3, 2, new, new))
    basis = torch.eye(old * old).reshape(-1, 1, old, old)
    b_t = _resize(basis, new).reshape(old * old, new * new).double().numpy()  # row i: basis patch i resized
    for d in range(3):
        for c in range(2):
            solution = np.linalg.lstsq(b_t, kernel[d, c].reshape(-1).numpy(), rcond=None)[0]
            np.testing.assert_allclose(out[d, c].reshape(-1).numpy(), solution, rtol=1e-6, atol=1e-8)
    step = fit(KEY, (3, 2, old, old), (3, 2, new, new), Context())
    assert step is not None and ("least-squares approximation" in step.detail) == (new < old)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_dtype_round_trip(dtype: torch.dtype) -> None:
    kernel = torch.randn(2, 3, 4, 4)
    out = _run(kernel.to(dtype), (2, 3, 8, 8))
    assert out.dtype == dtype
    exact = _run(kernel.to(dtype).double(), (2, 3, 8, 8))
    tolerance = {torch.float16: 5e-3, torch.bfloat16: 3e-2}.get(dtype, 1e-5)
    torch.testing.assert_close(out.double(), exact, rtol=tolerance, atol=tolerance)


def test_detail() -> None:
    step = fit(KEY, (8, 3, 16, 16), (8, 3, 32, 32), Context())
    assert step is not None
    assert step.detail == "patch kernel 16x16 -> 32x32: FlexiViT pseudo-inverse resize (exact for every patch)"


@pytest.mark.parametrize(
    "key",
    [
        KEY,
        "vit.embeddings.patch_embeddings.projection.weight",
        "vision_model.embeddings.patch_embedding.weight",
        "PatchEmbed.conv.weight",
        "encoder.patch_embed.proj.weight",
    ],
)
def test_patch_keys(key: str) -> None:
    assert is_patch_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "patch_embed.proj.bias",
        "conv1.weight",
        "patch_embed.backbone.stem.conv.weight",
        "patch_embed.norm.weight",
        "blocks.0.mlp.fc1.weight",
        "weight",
        "patch_embed.proj",
    ],
)
def test_other_keys(key: str) -> None:
    assert not is_patch_key(key)


@pytest.mark.parametrize(
    ("key", "src_shape", "dst_shape"),
    [
        ("conv1.weight", (8, 3, 16, 16), (8, 3, 32, 32)),  # not a patch embedding by name
        (KEY, (8, 3, 16, 16), (8, 3, 16, 32)),  # not square
        (KEY, (8, 3, 16, 8), (8, 3, 32, 16)),
        (KEY, (8, 3, 16, 16), (4, 3, 32, 32)),  # other width
        (KEY, (8, 3, 16, 16), (8, 1, 32, 32)),  # other channels (that is input_conv's, with equal kernels)
        (KEY, (8, 3, 16, 16), (8, 3, 16, 16)),
        (KEY, (8, 3, 16), (8, 3, 32)),  # not 4-D
    ],
)
def test_no_fit(key: str, src_shape: tuple[int, ...], dst_shape: tuple[int, ...]) -> None:
    assert fit(key, src_shape, dst_shape, Context(first_kernel=key)) is None

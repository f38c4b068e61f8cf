"""``pos_embed``: grid resampling checked against an explicit-loop antialiased bicubic (PIL's kernel, a = -0.5, border
weights renormalised) written here from the definition, and against ``F.interpolate`` called directly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from torchweights.adapt.base import Context
from torchweights.adapt.pos_embed import ADAPTER, fit, is_position_key, prefix_tokens
from torchweights.adapt.registry import ADAPTERS


def _cubic(x: float, a: float = -0.5) -> float:
    x = abs(x)
    if x < 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2:
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return 0.0


def _weights(n_in: int, n_out: int) -> np.ndarray:
    """Row i: the weights of output sample i over the input samples (antialiased: the kernel widens by the scale)."""
    scale = n_in / n_out
    support = 2 * max(scale, 1.0)
    stretch = 1 / scale if scale >= 1 else 1.0
    matrix = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in)
        taps = [_cubic((j - center + 0.5) * stretch) for j in range(lo, hi)]
        for j, tap in zip(range(lo, hi), taps):
            matrix[i, j] = tap / sum(taps)
    return matrix


def _reference(tokens: np.ndarray, prefix: int, old: int, new: int) -> np.ndarray:
    """(P + old², D) -> (P + new², D): prefix rows copied, each channel's grid resampled rows then columns."""
    dim = tokens.shape[1]
    w = _weights(old, new)
    out = np.zeros((prefix + new * new, dim))
    out[:prefix] = tokens[:prefix]
    for d in range(dim):
        grid = tokens[prefix:, d].reshape(old, old)
        out[prefix:, d] = (w @ grid @ w.T).reshape(-1)
    return out


def _run(key: str, source: torch.Tensor, dst_shape: tuple[int, ...]) -> torch.Tensor:
    step = fit(key, tuple(source.shape), dst_shape, Context())
    assert step is not None
    out = ADAPTER.apply(step, [source], dst_shape)
    assert tuple(out.shape) == dst_shape
    return out


def test_registered() -> None:
    assert ADAPTERS["pos_embed"] is ADAPTER and ADAPTER.kind == "reshape"


@pytest.mark.parametrize(
    ("key", "src_shape", "dst_shape", "prefix"),
    [
        ("pos_embed", (1, 1 + 14 * 14, 8), (1, 1 + 24 * 24, 8), 1),  # timm ViT, 224 -> 384
        ("pos_embed", (1, 1 + 16 * 16, 8), (1, 1 + 8 * 8, 8), 1),  # downsampling
        ("vit.embeddings.position_embeddings", (1, 2 + 14 * 14, 4), (1, 2 + 7 * 7, 4), 2),  # DeiT distilled
        ("pos_embed", (1, 5 + 14 * 14, 4), (1, 5 + 24 * 24, 4), 5),  # class + 4 registers
        ("layers.0.absolute_pos_embed", (1, 14 * 14, 4), (1, 12 * 12, 4), 0),  # Swin: no prefix
        ("vision_model.embeddings.position_embedding.weight", (1 + 7 * 7, 6), (1 + 16 * 16, 6), 1),  # CLIP
        ("visual.positional_embedding", (1 + 7 * 7, 6), (1 + 9 * 9, 6), 1),  # open_clip
    ],
)
def test_token_layouts(key: str, src_shape: tuple[int, ...], dst_shape: tuple[int, ...], prefix: int) -> None:
    source = torch.randn(src_shape)
    step = fit(key, src_shape, dst_shape, Context())
    assert step is not None and step.param("prefix") == prefix
    out = _run(key, source, dst_shape)
    old = int(round((src_shape[-2] - prefix) ** 0.5))
    new = int(round((dst_shape[-2] - prefix) ** 0.5))
    expected = _reference(source.double().reshape(src_shape[-2], -1).numpy(), prefix, old, new)
    np.testing.assert_allclose(out.reshape(dst_shape[-2], -1).numpy(), expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(out.reshape(dst_shape[-2], -1)[:prefix], source.reshape(src_shape[-2], -1)[:prefix])


def test_matches_interpolate_called_directly() -> None:
    source = torch.randn(1, 1 + 14 * 14, 16)
    out = _run("pos_embed", source, (1, 1 + 24 * 24, 16))
    grid = source[:, 1:].reshape(1, 14, 14, 16).permute(0, 3, 1, 2)
    direct = F.interpolate(grid, size=(24, 24), mode="bicubic", align_corners=False, antialias=True)
    assert torch.equal(out[:, 1:], direct.permute(0, 2, 3, 1).reshape(1, 576, 16))


def test_antialias_changes_upsampling_too() -> None:
    """timm's default (antialias=True) is not plain bicubic even when the grid grows: the kernels differ."""
    source = torch.randn(1, 1 + 14 * 14, 16)
    out = _run("pos_embed", source, (1, 1 + 24 * 24, 16))
    grid = source[:, 1:].reshape(1, 14, 14, 16).permute(0, 3, 1, 2)
    plain = F.interpolate(grid, size=(24, 24), mode="bicubic", align_corners=False, antialias=False)
    assert (out[:, 1:] - plain.permute(0, 2, 3, 1).reshape(1, 576, 16)).abs().max() > 0.05


def test_conv_layouts() -> None:
    nchw = torch.randn(1, 5, 6, 6)
    out = _run("pos_embed", nchw, (1, 5, 9, 9))
    w = _weights(6, 9)
    for d in range(5):
        np.testing.assert_allclose(out[0, d].numpy(), w @ nchw[0, d].double().numpy() @ w.T, rtol=1e-4, atol=1e-5)
    nhwc = torch.randn(1, 6, 6, 5)
    out = _run("pos_embed", nhwc, (1, 4, 4, 5))
    w = _weights(6, 4)
    for d in range(5):
        np.testing.assert_allclose(
            out[0, :, :, d].numpy(), w @ nhwc[0, :, :, d].double().numpy() @ w.T, rtol=1e-4, atol=1e-5
        )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtype_round_trip(dtype: torch.dtype) -> None:
    source = torch.randn(1, 1 + 7 * 7, 4).to(dtype)
    out = _run("pos_embed", source, (1, 1 + 10 * 10, 4))
    assert out.dtype == dtype
    expected = _reference(source.double()[0].numpy(), 1, 7, 10)
    tolerance = {torch.float16: 5e-3, torch.bfloat16: 3e-2}.get(dtype, 1e-10)
    np.testing.assert_allclose(out[0].double().numpy(), expected, rtol=tolerance, atol=tolerance)


def test_detail() -> None:
    step = fit("pos_embed", (1, 197, 8), (1, 577, 8), Context())
    assert step is not None
    assert step.detail == "position grid 14x14 -> 24x24: bicubic, antialiased, 1 prefix token kept"


@pytest.mark.parametrize(
    "key",
    [
        "pos_embed",
        "cls_pos_embed",
        "decoder_pos_embed",
        "encoder.pos_embedding",
        "embeddings.position_embeddings",
        "embeddings.position_embedding.weight",
        "visual.positional_embedding",
        "absolute_pos_embed",
        "PosEmbed",
    ],
)
def test_position_keys(key: str) -> None:
    assert is_position_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "wpe.weight",
        "transformer.wpe.weight",
        "text_model.embeddings.position_embedding.weight",
        "text.positional_embedding",
        "blocks.0.attn.proj.weight",
        "pos_drop.weight",
        "cls_token",
        "embed.weight",
        "word_embeddings.weight",
        "embeddings.position_embeddings.bias",
    ],
)
def test_other_keys(key: str) -> None:
    assert not is_position_key(key)


@pytest.mark.parametrize(
    ("key", "src_shape", "dst_shape"),
    [
        ("wpe.weight", (1 + 14 * 14, 8), (1 + 24 * 24, 8)),  # a text position table, by name
        ("pos_embed", (1, 197, 8), (1, 577, 16)),  # other width
        ("pos_embed", (2, 197, 8), (2, 577, 8)),  # not one embedding
        ("pos_embed", (1, 197, 8), (577, 8)),  # other rank
        ("pos_embed", (1, 1 + 12 * 16, 8), (1, 1 + 24 * 24, 8)),  # a 12x16 grid: not readable from 193 tokens
        ("pos_embed", (1, 197, 8), (1, 197, 8)),  # nothing to do
        ("pos_embed", (1, 5, 6, 6), (1, 7, 9, 9)),  # 4-D with both D and grid changed
        ("pos_embed", (1, 5, 6, 8), (1, 5, 9, 12)),  # 4-D non-square grid
        ("pos_embed", (1, 8, 6, 6), (1, 16, 6, 6)),  # only D changed: never read as an NHWC grid
        ("pos_embed", (197,), (577,)),  # 1-D
    ],
)
def test_no_fit(key: str, src_shape: tuple[int, ...], dst_shape: tuple[int, ...]) -> None:
    assert fit(key, src_shape, dst_shape, Context()) is None


def test_prefix_tokens() -> None:
    assert prefix_tokens(197, 577) == 1
    assert prefix_tokens(196, 144) == 0
    assert prefix_tokens(9, 9) is None  # 3x3 with no prefix, or 2x2 behind 5 tokens: two readings
    assert prefix_tokens(4 + 9, 4 + 16) == 4
    assert prefix_tokens(197, 200) is None  # 1 + 14x14 and 4 + 14x14: no common prefix

"""``input_conv``: the first kernel to other input channels, checked against explicit loops over numpy arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchweights.adapt.base import Context
from torchweights.adapt.input_conv import ADAPTER, fit
from torchweights.adapt.registry import ADAPTERS

FIRST = Context(first_kernel="stem.conv.weight")


def _run(source: torch.Tensor, dst_shape: tuple[int, ...]) -> torch.Tensor:
    step = fit("stem.conv.weight", tuple(source.shape), dst_shape, FIRST)
    assert step is not None
    out = ADAPTER.apply(step, [source], dst_shape)
    assert tuple(out.shape) == dst_shape
    return out


def _reference(kernel: np.ndarray, want: int) -> np.ndarray:
    """timm's rules written as loops over output and input channels."""
    out_ch, have = kernel.shape[:2]
    result = np.zeros((out_ch, want, *kernel.shape[2:]), dtype=np.float64)
    for o in range(out_ch):
        for i in range(want):
            if want == 1 and have <= 3:
                result[o, 0] = sum(kernel[o, c] for c in range(have))
            elif have > 3:
                result[o, i] = sum(kernel[o, 3 * i + c] for c in range(3))
            else:
                result[o, i] = kernel[o, i % 3] * 3 / want
    return result


def test_registered() -> None:
    assert ADAPTERS["input_conv"] is ADAPTER
    assert ADAPTER.kind == "reshape" and ADAPTER.fit is fit and ADAPTER.fit_groups is None


@pytest.mark.parametrize(
    ("src_shape", "want"),
    [
        ((8, 3, 7, 7), 1),
        ((8, 2, 3, 3), 1),
        ((8, 3, 7, 7), 4),
        ((8, 3, 3, 3), 2),
        ((8, 3, 5, 5), 7),
        ((6, 48, 3, 3), 16),
    ],
)
def test_values(src_shape: tuple[int, ...], want: int) -> None:
    source = torch.randn(src_shape)
    out = _run(source, (src_shape[0], want, *src_shape[2:]))
    np.testing.assert_allclose(out.numpy(), _reference(source.double().numpy(), want), rtol=1e-5, atol=1e-5)


def test_conv1d_and_conv3d() -> None:
    k1 = torch.randn(4, 3, 5)
    np.testing.assert_allclose(_run(k1, (4, 1, 5)).numpy(), _reference(k1.double().numpy(), 1), rtol=1e-5, atol=1e-6)
    k3 = torch.randn(4, 3, 2, 3, 3)
    np.testing.assert_allclose(
        _run(k3, (4, 5, 2, 3, 3)).numpy(), _reference(k3.double().numpy(), 5), rtol=1e-5, atol=1e-6
    )


def test_gray_response_is_kept() -> None:
    """A gray image fed to all three channels of the RGB kernel answers as the gray image through the summed one."""
    rgb = torch.randn(5, 3, 3, 3)
    gray = _run(rgb, (5, 1, 3, 3))
    image = torch.randn(1, 1, 9, 9)
    expected = torch.nn.functional.conv2d(image.expand(1, 3, 9, 9), rgb)
    torch.testing.assert_close(torch.nn.functional.conv2d(image, gray), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtype_round_trip(dtype: torch.dtype) -> None:
    source = torch.randn(4, 3, 3, 3).to(dtype)
    out = _run(source, (4, 5, 3, 3))
    assert out.dtype == dtype
    expected = _reference(source.double().numpy(), 5)
    tolerance = {torch.float16: 2e-3, torch.bfloat16: 2e-2}.get(dtype, 1e-6)
    np.testing.assert_allclose(out.double().numpy(), expected, rtol=tolerance, atol=tolerance)


def test_computes_in_float32_like_timm() -> None:
    """Half precision is scaled in float32 and rounded once to half, bit for bit as timm does."""
    source = torch.randn(64, 3, 3, 3).half()
    out = _run(source, (64, 7, 3, 3))
    reference = np.concatenate([source.numpy().astype(np.float32)] * 3, axis=1)[:, :7] * np.float32(3 / 7)
    assert np.array_equal(out.numpy(), reference.astype(np.float16))


def test_details() -> None:
    assert fit("stem.conv.weight", (8, 3, 7, 7), (8, 1, 7, 7), FIRST).detail == (  # type: ignore[union-attr]
        "3 -> 1 input channels: summed over channels"
    )
    assert "3/4" in fit("stem.conv.weight", (8, 3, 7, 7), (8, 4, 7, 7), FIRST).detail  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("target", "src_shape", "dst_shape"),
    [
        ("layer1.conv.weight", (8, 3, 7, 7), (8, 1, 7, 7)),  # not the first kernel
        ("stem.conv.weight", (8, 3), (8, 1)),  # a linear weight
        ("stem.conv.weight", (8, 3, 7, 7), (9, 1, 7, 7)),  # other output channels
        ("stem.conv.weight", (8, 3, 7, 7), (8, 1, 5, 5)),  # other kernel size
        ("stem.conv.weight", (8, 3, 7, 7), (8, 1, 7)),  # other rank
        ("stem.conv.weight", (8, 3, 7, 7), (8, 3, 7, 7)),  # nothing to adapt
        ("stem.conv.weight", (8, 4, 7, 7), (8, 2, 7, 7)),  # neither from 3 nor to 1
        ("stem.conv.weight", (8, 4, 7, 7), (8, 1, 7, 7)),  # to 1 from 4: not a stem of 3-colour pixels
        ("stem.conv.weight", (8, 9, 7, 7), (8, 3, 7, 7)),  # 9 -> 3 is no space-to-depth gray stem (3 is no square)
        ("stem.conv.weight", (8, 48, 7, 7), (8, 8, 7, 7)),  # a stem, but not divided by 3
    ],
)
def test_no_fit(target: str, src_shape: tuple[int, ...], dst_shape: tuple[int, ...]) -> None:
    assert fit(target, src_shape, dst_shape, FIRST) is None


def test_no_first_kernel() -> None:
    assert fit("conv.weight", (8, 3, 7, 7), (8, 1, 7, 7), Context()) is None


def test_repeat_count() -> None:
    """7 channels from 3: three copies (ceil(7/3)), the first 7 channels kept."""
    source = torch.arange(3, dtype=torch.float32).reshape(1, 3, 1)
    out = _run(source, (1, 7, 1))
    assert out.flatten().tolist() == pytest.approx([c * 3 / 7 for c in (0, 1, 2, 0, 1, 2, 0)])

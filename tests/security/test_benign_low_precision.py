"""Benign: low-precision and unusual dtypes: bfloat16, float16, every float8 variant torch has, complex32/64/128,
bool, unsigned 16/32/64-bit integers, and quantization-style uint8 / int8 weights.

``tw.load`` returns them bit for bit as ``torch.load(weights_only=False)`` does (and reads the legacy stream of
them, which ``torch.load`` itself cannot: their storages are untyped there), and scan raises no alarm (uint8 / int8
tensors are looked at for embedded pickles, and ordinary weights are not mistaken for one).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ._helpers import FORMATS, Benign, assert_clean_scan, load_benign, save_benign

pytestmark = pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")

FLOAT8 = [
    getattr(torch, n)
    for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu")
    if hasattr(torch, n)
]


def _tensors() -> dict[str, Any]:
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(4, 6, generator=gen)
    tensors: dict[str, Any] = {
        "bf16": x.to(torch.bfloat16),
        "bf16_t": x.to(torch.bfloat16).t(),
        "fp16": x.half(),
        "fp16_special": torch.tensor([65504.0, -0.0, float("inf"), float("nan"), 6e-8], dtype=torch.float16),
        "c32": torch.complex(x[0], x[1]).to(torch.complex32),
        "c64": torch.complex(x[0], x[1]),
        "c128": torch.complex(x[0], x[1]).to(torch.complex128),
        "bool": x > 0,
        "u16": torch.tensor([0, 1, 65535], dtype=torch.uint16),
        "u32": torch.tensor([0, 2**32 - 1], dtype=torch.uint32),
        "u64": torch.tensor([0, 2**63], dtype=torch.uint64),
        "u8_weights": torch.randint(0, 256, (64,), generator=gen, dtype=torch.uint8),
        "i8_weights": torch.randint(-128, 128, (8, 8), generator=gen, dtype=torch.int8),
        "u8_pickle_like": torch.tensor([0x80, 0x06, 1, 2], dtype=torch.uint8),  # PROTO 6 does not exist: not a pickle
    }
    for dtype in FLOAT8:
        tensors[str(dtype).removeprefix("torch.")] = x.clamp(0.01, 2.0).to(dtype)
    return tensors


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Benign:
    return save_benign(tmp_path_factory.mktemp("dtypes"), lambda _: {}, _tensors())


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_low_precision_tensors_are_bit_identical(saved: Benign, fmt: str) -> None:
    ckpt = load_benign(saved, fmt)  # legacy: torch.load cannot read its own file, compared with what was saved
    assert (saved.reference[fmt] is None) == (fmt == "legacy")
    assert {r.dtype for r in ckpt.records.values()} >= {"bfloat16", "float16", "bool", "uint16", "complex32"}
    assert len([r for r in ckpt.records.values() if r.dtype.startswith("float8")]) == len(FLOAT8) >= 2


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_low_precision_tensors_raise_no_alarm(saved: Benign, fmt: str) -> None:
    assert_clean_scan(saved.files[fmt])

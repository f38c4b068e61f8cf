"""Benign: 0-dim tensors (losses, steps, scales) of every common dtype, empty tensors of many shapes (``(0,)``,
``(0, 5)``, ``(3, 0, 2)``), an empty view at the end of a storage, 0-dim and empty parameters, and
``torch.Size`` values.

``tw.load`` returns them as ``torch.load(weights_only=False)`` does, and scan raises no alarm.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ._helpers import FORMATS, Benign, assert_clean_scan, load_benign, save_benign


def _tensors() -> dict[str, Any]:
    base = torch.arange(10.0)
    return {
        "loss": torch.tensor(0.25),
        "step": torch.tensor(1000, dtype=torch.int64),
        "flag": torch.tensor(True),
        "half_scale": torch.tensor(2.0, dtype=torch.float16),
        "bf16_scale": torch.tensor(-3.5, dtype=torch.bfloat16),
        "empty": torch.empty(0),
        "empty_2d": torch.empty(0, 5),
        "empty_3d": torch.zeros(3, 0, 2),
        "empty_int": torch.empty(0, dtype=torch.int8),
        "empty_at_end": base[10:],
        "element": base[9],
        "param_0d": torch.nn.Parameter(torch.tensor(1.5)),
        "param_empty": torch.nn.Parameter(torch.empty(0, 3)),
    }


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Benign:
    values = lambda _: {"sizes": [torch.Size([]), torch.Size([0, 3]), torch.Size([2, 3])]}  # noqa: E731
    return save_benign(tmp_path_factory.mktemp("zero"), values, _tensors())


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_zero_dim_and_empty_tensors_load_as_torch_does(saved: Benign, fmt: str) -> None:
    ckpt = load_benign(saved, fmt)
    assert ckpt.records["loss"].shape == () and ckpt.records["empty_3d"].shape == (3, 0, 2)
    assert ckpt.records["param_0d"].is_parameter
    assert [tuple(s) for s in ckpt.extras["sizes"]] == [(), (0, 3), (2, 3)]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_zero_dim_and_empty_tensors_raise_no_alarm(saved: Benign, fmt: str) -> None:
    assert_clean_scan(saved.files[fmt])

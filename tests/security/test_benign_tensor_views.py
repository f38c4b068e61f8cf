"""Benign: tensors that are views: slices with storage offsets, transposes and other strides, ``expand`` (stride
0), ``narrow``, ``diagonal``, ``as_strided``, chunks of one storage, the same storage viewed under another dtype,
views of parameters, and one tensor saved under two names.

``tw.load`` rebuilds each exactly as ``torch.load(weights_only=False)`` does (dtype, shape, stride, storage offset,
bytes) and keeps storages shared; every view is checked against its storage first, and scan raises no alarm.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ._helpers import FORMATS, Benign, assert_clean_scan, load_benign, save_benign


def _tensors() -> dict[str, Any]:
    base = torch.arange(48, dtype=torch.float32).reshape(6, 8)
    flat = torch.arange(20, dtype=torch.int64)
    param = torch.nn.Parameter(torch.arange(12.0).reshape(3, 4))
    a, b, c = torch.arange(30.0).chunk(3)
    return {
        "base": base,
        "slice": base[2:5, 1:7:2],
        "row": base[5],
        "column": base[:, 3],
        "transpose": base.t(),
        "expand": torch.arange(4.0).reshape(4, 1).expand(4, 5),
        "narrow": flat.narrow(0, 7, 9),
        "diagonal": base[:6, :6].diagonal(),
        "strided": torch.as_strided(flat, (3, 3), (5, 2), 1),
        "chunks": [a, b, c],
        "param_view": param[1:, ::2],
        "param": param,
        "alias": base,
        "empty_view": base[3:3],
        "scalar_view": base[4, 4],
    }


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Benign:
    return save_benign(tmp_path_factory.mktemp("views"), lambda _: {"note": "views"}, _tensors())


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_views_rebuilt_exactly_and_shared(saved: Benign, fmt: str) -> None:
    ckpt = load_benign(saved, fmt)  # dtype, shape, stride, offset and bytes of every one, as torch.load reads them
    import torchweights.api as tw

    tensors = tw.load(ckpt)
    reference = saved.reference[fmt]

    def storage(t: torch.Tensor) -> int:
        return t.untyped_storage().data_ptr()

    for name in ("slice", "row", "column", "transpose", "diagonal", "alias", "empty_view", "scalar_view"):
        assert storage(tensors[name]) == storage(tensors["base"]), name
    assert storage(tensors["chunks.0"]) == storage(tensors["chunks.2"])
    assert storage(tensors["param_view"]) == storage(tensors["param"])
    assert tensors["expand"].stride() == reference["expand"].stride() == (1, 0)
    assert tensors["slice"].storage_offset() == reference["slice"].storage_offset() == 17
    assert isinstance(tensors["param"], torch.Tensor)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_views_raise_no_alarm(saved: Benign, fmt: str) -> None:
    assert_clean_scan(saved.files[fmt])

"""Every zip-based reader refuses a member it parses whole (a pickle, ``model.json``) over ``max_pickle_bytes``
before reading it, with one error: ``limit-pickle-size``, naming the member and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.package import PackageExporter

import torchweights as tw
from torchweights.errors import ResourceLimitError
from torchweights.limits import Limits

_FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _torch_zip(path: Path) -> None:
    torch.save({"w": torch.ones(3)}, path)


def _torchscript(path: Path) -> None:
    torch.jit.save(torch.jit.trace(nn.Linear(2, 2), torch.ones(1, 2)), str(path))


def _package(path: Path) -> None:
    with PackageExporter(str(path)) as exporter:
        exporter.save_pickle("res", "state.pkl", {"w": torch.ones(3)})


@pytest.mark.parametrize(
    "make, named",
    [
        (_torch_zip, "data.pkl"),
        (_torchscript, "data.pkl"),
        (_package, "pickle resource 'res/state.pkl'"),
        (None, "model.json"),  # torch 1.2's TorchScript archive (committed fixture)
    ],
)
def test_parsed_member_over_the_limit_is_refused(tmp_path: Path, make: Any, named: str) -> None:
    if make is None:
        path = _FIXTURES / "torchscript_1_2.pt"
    else:
        path = tmp_path / "m.pt"
        make(path)
    assert tw.open(path).records  # readable within the default limits
    with pytest.raises(ResourceLimitError) as info:
        tw.open(path, limits=Limits(max_pickle_bytes=16))
    error = info.value
    assert error.code == "limit-pickle-size"
    assert f"{named}" in error.message and "over the 16-byte limit" in error.message
    assert "Limits(max_pickle_bytes=...)" in error.message

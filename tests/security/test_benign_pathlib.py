"""Benign: ``pathlib`` paths (output folders, dataset roots, best-checkpoint paths): ``Path``/``PosixPath``,
``PurePosixPath``, ``PureWindowsPath``.

They come back as pure paths with the same text and parts as ``torch.load(weights_only=False)`` returns (no file
system method is reachable from them), and scan raises no alarm.
"""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import torch

from torchweights.unpickle.stream import unpickle

from ._helpers import FORMATS, Benign, assert_clean_scan, load_benign, save_benign


def _values(_: Any) -> dict[str, Any]:
    return {
        "path": pathlib.Path("/data/run1/ckpt"),
        "relative": pathlib.Path("runs") / "exp" / "best.ckpt",
        "pure_path": pathlib.PurePosixPath("relative/dir"),
        "windows_path": pathlib.PureWindowsPath("C:/runs/x"),
        "paths": [pathlib.Path("/a"), pathlib.Path("b/c")],
    }


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Benign:
    return save_benign(tmp_path_factory.mktemp("pathlib"), _values, {"w": torch.arange(3.0)})


def check(got: dict[str, Any], expected: dict[str, Any]) -> None:
    # paths come back as pure paths: same text, no file system access
    assert got["path"] == pathlib.PurePosixPath("/data/run1/ckpt") and isinstance(got["path"], pathlib.PurePath)
    assert not isinstance(got["path"], pathlib.Path)
    assert str(got["relative"]) == str(expected["relative"]) and got["relative"].parts == expected["relative"].parts
    assert got["pure_path"] == expected["pure_path"] and got["windows_path"] == expected["windows_path"]
    assert type(got["windows_path"]) is pathlib.PureWindowsPath
    assert [str(p) for p in got["paths"]] == [str(p) for p in expected["paths"]]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_paths_load_as_torch_load_reads_them(saved: Benign, fmt: str) -> None:
    check(load_benign(saved, fmt).extras, saved.reference[fmt])


@pytest.mark.parametrize("protocol", list(range(6)))
def test_paths_from_raw_pickles(saved: Benign, protocol: int) -> None:
    check(unpickle(saved.raw[protocol]).value, saved.values)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_paths_raise_no_alarm(saved: Benign, fmt: str) -> None:
    assert_clean_scan(saved.files[fmt])

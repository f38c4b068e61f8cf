"""Output files get the mode any new file gets under the user's umask (``0o666 & ~umask``), not the ``0600`` of
the temporary file they are written to first."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import torchweights as tw
from torchweights.writers.atomic import Outputs, current_umask, new_file_mode


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_umask_is_read_without_changing_it(umask: int) -> None:
    assert current_umask() == umask
    assert new_file_mode() == 0o666 & ~umask
    assert os.umask(umask) == umask  # still what the fixture set


def test_outputs_get_the_umask_mode(umask: int, tmp_path: Path) -> None:
    final = tmp_path / "sub" / "out.bin"
    with Outputs() as out:
        out.reserve([str(final)])
        with out.write(str(final)) as fh:
            fh.write(b"x")
        assert _mode(Path(out.temp_path(str(final)))) == 0o666 & ~umask  # before the rename too
        out.commit()
    assert _mode(final) == {0o022: 0o644, 0o077: 0o600, 0o002: 0o664}[umask]


@pytest.mark.parametrize("before", [0o600, 0o640, 0o755])
def test_a_replaced_file_keeps_its_mode(before: int, tmp_path: Path) -> None:
    """As ``open(path, "w")`` over it: a private file replaced with force stays private, whatever the umask."""
    torch.save({"w": torch.randn(4, 4)}, tmp_path / "m.pt")
    out = tmp_path / "o.safetensors"
    tw.convert(tmp_path / "m.pt", out)
    out.chmod(before)
    old = os.umask(0o022)
    try:
        tw.convert(tmp_path / "m.pt", out, force=True)
        assert _mode(out) == before
        page = tmp_path / "page.html"
        page.write_text("old")
        page.chmod(before)
        tw.html_report(tmp_path / "m.pt", page)
        assert _mode(page) == before and page.read_text().startswith("<!DOCTYPE html>")
    finally:
        os.umask(old)


@pytest.mark.parametrize("to", ["safetensors", "torch"])
def test_convert_outputs_get_the_umask_mode(umask: int, to: str, tmp_path: Path) -> None:
    torch.save({"w": torch.randn(4, 4), "b": torch.zeros(4)}, tmp_path / "m.pt")
    single = tmp_path / ("o.safetensors" if to == "safetensors" else "o.pt")
    report = tw.convert(tmp_path / "m.pt", single, to=to)
    folder = tw.convert(tmp_path / "m.pt", tmp_path / "shards", to=to, max_shard_size=64)  # safetensors: shards
    files = [Path(p) for p in [*report.files, *folder.files]]
    assert len(files) > (3 if to == "safetensors" else 1)  # shards and their index
    assert {_mode(p) for p in files} == {0o666 & ~umask}


def test_umask_without_proc_falls_back_to_setting_it_back(umask: int, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = open

    def no_proc(path: object, *args: object, **kwargs: object) -> object:
        if str(path) == "/proc/self/status":
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr("builtins.open", no_proc)
    assert current_umask() == umask
    assert os.umask(umask) == umask

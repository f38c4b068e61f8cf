"""Fresh destination memory (:mod:`torchweights.storage.prefault`): tensors a load allocates are backed before the
reads (``MADV_POPULATE_WRITE``), and marked for huge pages with ``io_settings(huge_pages=True)``. Behaviour only:
the loaded values are the saved ones with every setting, resident memory does not grow past the model, and when
``madvise`` fails or is missing the load goes on without it. Nothing here is timed.
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch as safetensors_torch
import torch

import torchweights as tw
from torchweights.storage import io_settings, prefault

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and mincore are Linux calls here")


def _state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "big.weight": torch.randn(1536, 1024, generator=gen),  # 6 MiB: pieces over the populate threshold
        "mid.weight": torch.randn(300, 700, generator=gen),
        "small.bias": torch.randn(5, generator=gen),
        "ints": torch.arange(70000, dtype=torch.int64),
    }


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.big = torch.nn.Linear(1024, 1536, bias=False)
        self.mid = torch.nn.Linear(700, 300, bias=False)
        self.small = torch.nn.Module()
        self.small.register_parameter("bias", torch.nn.Parameter(torch.zeros(5)))
        self.register_buffer("ints", torch.zeros(70000, dtype=torch.int64))


@pytest.fixture(params=["safetensors", "pt"])
def checkpoint(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    state = _state()
    path = tmp_path / f"m.{request.param}"
    if request.param == "safetensors":
        safetensors_torch.save_file(state, str(path))
    else:
        torch.save(state, path)
    return path, state


def _same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for name, t in want.items():
        assert got[name].dtype == t.dtype and torch.equal(got[name], t), name


def _meta_load(path: Path) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        model = Net()
    tw.load_into(model, path)
    return {k: v for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "settings", [{}, {"prefault": False}, {"huge_pages": True}, {"huge_pages": True, "prefault": False}]
)
def test_values_are_the_saved_ones_with_every_setting(
    checkpoint: tuple[Path, dict[str, torch.Tensor]], settings: dict[str, Any]
) -> None:
    path, state = checkpoint
    with io_settings(**settings):
        _same(tw.load(path), state)
        _same(_meta_load(path), state)
        model = Net()  # allocated: read in place, never advised
        tw.load_into(model, path)
        _same(dict(model.state_dict()), state)


class _Counting:
    """A ``madvise`` that counts calls per advice and either passes them on or fails like an old kernel."""

    def __init__(self, real: Any, fail: bool) -> None:
        self.real, self.fail = real, fail
        self.calls: dict[int, int] = {}

    def __call__(self, address: int, length: int, advice: int) -> int:
        self.calls[advice] = self.calls.get(advice, 0) + 1
        if self.fail:
            ctypes.set_errno(22)  # EINVAL
            return -1
        return int(self.real(address, length, advice))


def _patched(monkeypatch: pytest.MonkeyPatch, fail: bool) -> _Counting:
    libc = prefault.LIBC
    if not libc.loaded:
        libc.load()
    fake = _Counting(libc.madvise, fail)
    monkeypatch.setattr(libc, "madvise", fake)
    monkeypatch.setattr(libc, "populate_works", True)
    monkeypatch.setattr(libc, "huge_works", True)
    return fake


@linux
def test_fresh_memory_is_populated_and_backed_memory_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _patched(monkeypatch, fail=False)
    touched = torch.ones(8 << 20, dtype=torch.uint8)
    prefault.populate(touched.data_ptr(), touched.numel())
    assert fake.calls.get(prefault.MADV_POPULATE_WRITE, 0) == 0  # backed already: left alone
    new = torch.empty(8 << 20, dtype=torch.uint8)
    prefault.populate(new.data_ptr(), new.numel())
    assert fake.calls.get(prefault.MADV_POPULATE_WRITE, 0) in (0, 1)  # 0 where this kernel lacks the advice
    prefault.populate(new.data_ptr(), 4096)  # too small to be worth a call
    assert fake.calls.get(prefault.MADV_POPULATE_WRITE, 0) <= 1


@linux
def test_huge_page_advice_stays_inside_the_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, int, int]] = []

    def record(address: int, length: int, advice: int) -> int:
        seen.append((address, length, advice))
        return 0

    libc = prefault.LIBC
    if not libc.loaded:
        libc.load()
    monkeypatch.setattr(libc, "madvise", record)
    monkeypatch.setattr(libc, "huge_works", True)
    t = torch.empty(9 << 20, dtype=torch.uint8)
    with io_settings(huge_pages=True):
        assert prefault.fresh(t) is t
    ((address, length, advice),) = seen
    start, end = t.data_ptr(), t.data_ptr() + t.numel()
    assert advice == prefault.MADV_HUGEPAGE
    assert address % prefault.HUGE_PAGE == 0 and length % prefault.HUGE_PAGE == 0
    assert start <= address and address + length <= end
    seen.clear()
    prefault.fresh(torch.empty(9 << 20, dtype=torch.uint8))  # huge_pages off (the default): no advice
    prefault.fresh(torch.empty(8, dtype=torch.uint8))
    assert not seen


@linux
def test_a_failing_madvise_turns_itself_off_and_the_load_goes_on(
    monkeypatch: pytest.MonkeyPatch, checkpoint: tuple[Path, dict[str, torch.Tensor]]
) -> None:
    path, state = checkpoint
    fake = _patched(monkeypatch, fail=True)
    monkeypatch.setattr(prefault.LIBC, "mincore", lambda address, length, vec: 0)  # "not backed": always tried
    with io_settings(huge_pages=True):
        _same(tw.load(path), state)
        _same(_meta_load(path), state)
    assert fake.calls.get(prefault.MADV_HUGEPAGE, 0) == 1  # tried once, then off
    assert fake.calls.get(prefault.MADV_POPULATE_WRITE, 0) == 1
    assert not prefault.LIBC.populate_works and not prefault.LIBC.huge_works


def test_no_madvise_at_all(monkeypatch: pytest.MonkeyPatch, checkpoint: tuple[Path, dict[str, torch.Tensor]]) -> None:
    """Systems without the calls (macOS, Windows): nothing is advised, the load is the same."""
    path, state = checkpoint
    libc = prefault.LIBC
    monkeypatch.setattr(libc, "loaded", True)
    monkeypatch.setattr(libc, "madvise", None)
    monkeypatch.setattr(libc, "mincore", None)
    with io_settings(huge_pages=True):
        _same(tw.load(path), state)
        _same(_meta_load(path), state)


@linux
@pytest.mark.parametrize("huge", [False, True])
def test_resident_memory_does_not_grow_past_the_loaded_bytes(tmp_path: Path, huge: bool) -> None:
    """In a fresh process: what ``tw.load`` adds to resident memory is the tensors' bytes, not whole huge pages
    around them (only fully written 2 MiB interiors are advised)."""
    code = textwrap.dedent(
        f"""
        import torch, torchweights as tw
        from torchweights.storage import io_settings
        from safetensors.torch import save_file
        gen = torch.Generator().manual_seed(1)
        # odd sizes, so no tensor is a whole number of huge pages
        state = {{f"t{{i}}": torch.randn(3 * (1 << 18) + 1000 * i + 7, generator=gen) for i in range(12)}}
        path = {str(tmp_path / "m.safetensors")!r}
        save_file(state, path)
        nbytes = sum(t.numel() * t.element_size() for t in state.values())
        del state
        def rss():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * 4096
        tw.load(path)  # imports and first-call work out of the measurement
        before = rss()
        with io_settings(huge_pages={huge}):
            out = tw.load(path)
        print(rss() - before, nbytes)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    grown, nbytes = map(int, result.stdout.split()[-2:])
    assert grown <= nbytes + (4 << 20), (grown, nbytes)

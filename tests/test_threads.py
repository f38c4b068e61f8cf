"""Several loads at once in one process: each thread's result is bit-identical to a load made alone."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors.torch import save_file

import torchweights as tw
from _samples import random_bits

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int32, torch.uint8, torch.bool)


def _state(seed: int) -> dict[str, torch.Tensor]:
    rng = random.Random(seed)
    state = {
        f"block{i}.weight": random_bits((rng.randint(1, 64), rng.randint(1, 64)), rng.choice(DTYPES), seed * 97 + i)
        for i in range(12)
    }
    # big enough to be read in several pieces by several reader threads
    state["embed"] = torch.randn(3 << 20, generator=torch.Generator().manual_seed(seed)).reshape(-1, 1024)
    return state


def _bits(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _fingerprint(state: dict[str, torch.Tensor]) -> dict[str, tuple[torch.dtype, tuple[int, ...], bytes]]:
    return {name: (t.dtype, tuple(t.shape), _bits(t)) for name, t in state.items()}


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(512, 256)
        self.b = torch.nn.Linear(256, 64, dtype=torch.float64)


def test_concurrent_loads_are_bit_identical(tmp_path: Path) -> None:
    files: list[Path] = []
    expected = {}
    for seed in range(4):
        state = _state(seed)
        for kind in ("zip", "legacy", "safetensors"):
            path = tmp_path / f"{seed}-{kind}.{'safetensors' if kind == 'safetensors' else 'pt'}"
            if kind == "safetensors":
                save_file(state, str(path))
            else:
                torch.save(state, path, _use_new_zipfile_serialization=kind == "zip")
            files.append(path)
            expected[path] = _fingerprint(state)
    alone = {path: _fingerprint(tw.load(path)) for path in files}
    assert alone == expected
    jobs = files * 3
    random.Random(0).shuffle(jobs)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda p: (p, _fingerprint(tw.load(p))), jobs))
    assert len(results) == len(jobs)
    for path, got in results:
        assert got == expected[path], path


def test_concurrent_load_into_is_bit_identical(tmp_path: Path) -> None:
    sources = []
    for seed in range(6):
        torch.manual_seed(seed)
        state = dict(_Net().state_dict())
        path = tmp_path / f"net{seed}.pt"
        torch.save(state, path)
        sources.append((path, _fingerprint(state)))

    def load(job: tuple[Path, object]) -> tuple[object, dict[str, tuple[torch.dtype, tuple[int, ...], bytes]]]:
        path, want = job
        model = _Net()
        report = tw.load_into(model, path)
        assert report.ok, str(report)
        return want, _fingerprint(dict(model.state_dict()))

    with ThreadPoolExecutor(max_workers=6) as pool:
        for want, got in pool.map(load, sources * 4):
            assert got == want

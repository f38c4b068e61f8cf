"""Benign: every pickle protocol. ``torch.save(..., pickle_protocol=N)`` for protocols 1 to 5 (zip) and 2 to 5
(legacy; torch.load cannot read protocol 0 files it writes), and plain pickles at protocols 0 to 5 (text
opcodes, BINPUT/LONG_BINPUT memo, FRAME, MEMOIZE, STACK_GLOBAL, BYTEARRAY8...).

Checkpoints load bit-identical to ``torch.load(weights_only=False)`` at every protocol and scan raises no alarm;
plain pickles read as the same data ``pickle.loads`` returns.
"""

from __future__ import annotations

import collections
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

import torchweights.api as tw
from torchweights.tools.scan.scanner import scan
from torchweights.unpickle.stream import unpickle

from ._helpers import alarms, assert_clean_scan, assert_same_tensor, tensors_of


def _checkpoint() -> dict[str, Any]:
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(4, 3, generator=gen)
    return {
        "state_dict": collections.OrderedDict(weight=weight, bias=torch.zeros(4), t=weight.t()),
        "big": torch.arange(70_000, dtype=torch.int32),  # a pickle long enough for several protocol 4 frames
        "meta": {"epoch": 3, "name": "x" * 300, "blob": bytes(range(256)) * 300, "ids": list(range(300))},
    }


def _files(folder: Path) -> dict[str, Path]:
    files = {}
    for protocol in range(1, 6):
        for legacy in (False, True):
            if legacy and protocol < 2:
                continue
            path = folder / f"p{protocol}{'-legacy' if legacy else ''}.pt"
            torch.save(_checkpoint(), path, pickle_protocol=protocol, _use_new_zipfile_serialization=not legacy)
            files[path.stem] = path
    return files


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _files(tmp_path_factory.mktemp("protocols"))


@pytest.mark.parametrize("name", ["p1", "p2", "p3", "p4", "p5", "p2-legacy", "p3-legacy", "p4-legacy", "p5-legacy"])
def test_torch_save_at_every_protocol(files: dict[str, Path], name: str) -> None:
    reference = torch.load(files[name], weights_only=False)
    tensors = tw.load(files[name])
    expected = tensors_of(reference)
    assert list(tensors) == list(expected)
    for key, value in expected.items():
        assert_same_tensor(tensors[key], value)
    assert (
        tensors["state_dict.t"].untyped_storage().data_ptr()
        == tensors["state_dict.weight"].untyped_storage().data_ptr()
    )
    assert tw.open(files[name]).extras["meta"] == reference["meta"]
    report = assert_clean_scan(files[name])
    declared = int(name[1]) if int(name[1]) >= 2 else 0  # protocol 1 has no PROTO opcode
    assert {s.protocol for s in report.streams if not s.latent} >= {declared}


def test_legacy_stream_at_protocol_1(tmp_path: Path) -> None:
    path = tmp_path / "p1-legacy.pt"
    torch.save(_checkpoint(), path, pickle_protocol=1, _use_new_zipfile_serialization=False)
    reference = torch.load(path, weights_only=False)
    tensors = tw.load(path)
    for key, value in tensors_of(reference).items():
        assert_same_tensor(tensors[key], value)


def _plain() -> dict[str, Any]:
    shared = [1, 2]
    return {
        "ints": [0, 1, 255, 256, 65535, 65536, -1, 2**31, -(2**31) - 1, 2**64, -(2**200)],
        "floats": [0.0, -1.5, 1e300, float("inf")],
        "text": ["", "a", "x" * 300, "é☃"],
        "bytes": [b"", b"x" * 300, bytearray(b"ab")],
        "nested": {"t": (1, (2, (3,))), "s": {1, 2}, "f": frozenset({3}), "none": None, "bools": [True, False]},
        "shared": [shared, shared],
        "ordered": collections.OrderedDict(a=1),
    }


@pytest.mark.parametrize("protocol", list(range(pickle.HIGHEST_PROTOCOL + 1)))
def test_plain_pickle_at_every_protocol(tmp_path: Path, protocol: int) -> None:
    data = pickle.dumps(_plain(), protocol=protocol)
    value = unpickle(data).value
    assert value == pickle.loads(data)
    assert value["shared"][0] is value["shared"][1]  # memo references stay references
    path = tmp_path / "plain.pkl"
    path.write_bytes(data)
    report = scan(path)
    assert not alarms(report)
    ckpt = tw.open(path)  # data, no weights: no records, the data in extras
    assert not ckpt.records and ckpt.extras[""] == pickle.loads(data)
    assert tw.load(path) == {} and report.verdict == "clean"

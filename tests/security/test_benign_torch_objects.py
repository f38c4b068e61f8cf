"""Benign: torch modules saved with non-default arguments, modules holding pure torch functions as attributes, and
the objects that checkpoints commonly hold next to the weights (a dataset, a generator, numpy's random states, a
``functools.partial`` of a layer class). Each scans clean and ``tw.load`` reads it; the forms of the same names
that would really call something stay dangerous calls, and the functions that touch files, memory or the process
stay dangerous.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import torchweights as tw
from torchweights.unpickle.policy import classify_global
from torchweights.unpickle.torch_classes import TORCH_CLASSES

from ._helpers import assert_clean_scan, torch_zip_members, write_zip


class Activations(nn.Module):
    """A module holding torch functions as attributes, as many projects' blocks do."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.act = torch.tanh
        self.gate = torch.sigmoid
        self.out = torch.relu
        self.f = nn.functional.gelu


def _torch_names(path: Path) -> dict[str, str]:
    return {n: v for n, v in tw.scan(path).globals.items() if n.startswith("torch.") and v != "safe"}


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.TransformerEncoderLayer(32, 2, 64, activation="gelu"),
        lambda: nn.TransformerDecoderLayer(32, 2, 64, activation="gelu", norm_first=True, batch_first=True),
        lambda: nn.Transformer(16, 2, 1, 1, 32, activation="gelu"),
        lambda: nn.TransformerEncoderLayer(16, 2, 32, activation=torch.tanh),
        lambda: nn.MultiheadAttention(16, 2, add_bias_kv=True, add_zero_attn=True, kdim=8, vdim=8),
    ],
    ids=["encoder-gelu", "decoder-gelu-norm-first", "transformer-gelu", "encoder-tanh", "mha-options"],
)
def test_torch_modules_with_non_default_arguments_are_clean(tmp_path: Path, make: Any) -> None:
    path = tmp_path / "module.pt"
    torch.save(make(), path)
    assert_clean_scan(path)
    assert all(verdict == "known" for verdict in _torch_names(path).values()), _torch_names(path)
    assert tw.load(path)  # read, not refused


def test_module_holding_torch_functions_is_clean(tmp_path: Path) -> None:
    path = tmp_path / "block.pt"
    torch.save(Activations(), path)
    report = assert_clean_scan(path, unknown=[f"{__name__}.Activations"])
    for name in (
        "torch._C._VariableFunctionsClass.tanh",
        "torch._C._VariableFunctionsClass.sigmoid",
        "torch._C._VariableFunctionsClass.relu",
        "torch._C._nn.gelu",
    ):
        assert report.globals[name] == "known", name
    assert set(tw.load(path)) == {"fc.weight", "fc.bias"}


@pytest.mark.parametrize(
    "name",
    [
        "torch._C._VariableFunctionsClass.from_file",
        "torch._C._VariableFunctionsClass.frombuffer",
        "torch._C._VariableFunctionsClass.from_numpy",
        "torch._C._VariableFunctionsClass.as_strided",
        "torch._C._VariableFunctionsClass.unsafe_split",
        "torch._C._VariableFunctionsClass.set_flush_denormal",
        "torch._C._VariableFunctionsClass._C",
        "torch._C._VariableFunctionsClass.__dict__",
        "torch._C._nn.__dict__",
        "torch._C._nn.os.system",
        "torch._C._set_grad_enabled",
        "torch._C.import_ir_module",
        "torch.load",
        "torch.from_file",
    ],
)
def test_excluded_and_other_torch_c_names_stay_dangerous(name: str) -> None:
    assert name not in TORCH_CLASSES
    assert classify_global(name) == "dangerous"


def test_torch_function_called_with_arguments_is_a_dangerous_call(tmp_path: Path) -> None:
    # getattr(torch._C._VariableFunctionsClass, "tanh")(3): pickle.load would call it
    data = b"\x80\x02cbuiltins\ngetattr\nctorch._C\n_VariableFunctionsClass\nX\x04\x00\x00\x00tanh\x86R" b"K\x03\x85R."
    path = write_zip(tmp_path / "model.pt", torch_zip_members(data))
    report = tw.scan(path)
    assert classify_global("torch._C._VariableFunctionsClass.tanh") == "known"
    calls = [f for f in report.findings if f.code == "dangerous-call"]
    assert [f.name for f in calls] == ["torch._C._VariableFunctionsClass.tanh"]
    assert "allow" in calls[0].message.lower()


def _meta(tmp_path: Path, value: Any) -> Path:
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {"w": torch.randn(4, 4)}, "meta": value}, path)
    return path


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.utils.data.TensorDataset(torch.randn(3, 2), torch.arange(3)),
        lambda: torch.utils.data.Subset(torch.utils.data.TensorDataset(torch.randn(3, 2)), [0, 2]),
        lambda: torch.utils.data.RandomSampler(range(4), generator=torch.Generator().manual_seed(0)),
        lambda: torch.Generator().manual_seed(1),
        lambda: np.random.RandomState(0),
        lambda: np.random.default_rng(0),
        lambda: functools.partial(nn.LayerNorm, eps=1e-6),
        lambda: torch.max(torch.randn(3, 2), 0),
    ],
    ids=["tensor-dataset", "subset", "sampler", "torch-generator", "np-randomstate", "np-rng", "partial", "max"],
)
def test_common_objects_next_to_the_weights_are_clean(tmp_path: Path, make: Any) -> None:
    path = _meta(tmp_path, make())
    report = assert_clean_scan(path)
    assert not [f for f in report.findings if f.severity != "info"], [f.message for f in report.findings]
    assert set(tw.load(path)) >= {"state_dict.w"}


@pytest.mark.parametrize(
    "name",
    [
        "torch.utils.data.dataloader.DataLoader",
        "torch.utils.data.DataLoader",
        "torch.utils.data.datapipes.iter.fileopener.FileOpenerIterDataPipe",
        "torch.utils.data.datapipes.iter.FileLister",
        "torch.utils.data._utils.worker._worker_loop",
        "torch.utils.data.dataset.random_split",
    ],
)
def test_the_rest_of_torch_utils_data_stays_dangerous(name: str) -> None:
    """The deny prefix stays for what it was for (readers of files and URLs, worker processes); only the dataset
    and sampler classes the generator saved are exempt, by exact name."""
    assert classify_global(name) == "dangerous"


def _calls(tmp_path: Path, data: bytes) -> list[str]:
    path = write_zip(tmp_path / "model.pt", torch_zip_members(data))
    report = tw.scan(path)
    assert report.verdict == "dangerous"
    return [f.name or "" for f in report.findings if f.code == "dangerous-call"]


def test_numpy_random_constructors_given_a_callable_are_calls(tmp_path: Path) -> None:
    """``__randomstate_ctor(name, ctor)`` calls ``ctor(name)``: with a second argument it runs what the pickle
    chose, so it is a dangerous call (the one-argument form numpy writes is not)."""
    data = b"\x80\x02cnumpy.random._pickle\n__randomstate_ctor\nX\x02\x00\x00\x00hi" b"cthird_party.tools\nrun\n\x86R."
    assert _calls(tmp_path, data) == ["numpy.random._pickle.__randomstate_ctor"]


def test_bit_generator_ctor_given_another_class_is_a_call(tmp_path: Path) -> None:
    data = b"\x80\x02cnumpy.random._pickle\n__bit_generator_ctor\ncthird_party.tools\nRunner\n\x85R."
    assert _calls(tmp_path, data) == ["numpy.random._pickle.__bit_generator_ctor"]


def test_calling_a_partial_is_a_call(tmp_path: Path) -> None:
    """Building a partial runs nothing; a pickle that then calls it runs the function with the stored arguments,
    even with no arguments of its own."""
    data = b"\x80\x02cfunctools\npartial\ncthird_party.tools\nrun\nX\x07\x00\x00\x00payload\x86R)R."
    assert _calls(tmp_path, data) == ["functools.partial(...)"]

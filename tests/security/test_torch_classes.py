"""torch's own classes are known to scan: ``torch.save(module)`` of any ``torch.nn`` module is clean, with no
"unknown class" warning, while third-party classes stay warnings.

The table (``torchweights.unpickle.torch_classes.TORCH_CLASSES``) is built from the installed torch by
``tools/make_torch_classes.py``, never by hand; the first test checks the committed table is what the script writes
today, so a torch upgrade that adds a class fails here until the table is regenerated.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

from torchweights.tools.scan.scanner import scan
from torchweights.unpickle.policy import classify_global
from torchweights.unpickle.torch_classes import TORCH_CLASSES, TORCH_CLASSES_VERSION

from ._helpers import torch_zip_members, write_zip

TOOL = Path(__file__).resolve().parents[2] / "tools" / "make_torch_classes.py"


@pytest.fixture(scope="module")
def tool() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("make_torch_classes", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_committed_table_is_what_the_generator_writes(tool: ModuleType) -> None:
    assert torch.__version__.split("+")[0] == TORCH_CLASSES_VERSION, "run tools/make_torch_classes.py"
    table, _ = tool.collect()
    assert table == TORCH_CLASSES, "the table is out of date: run tools/make_torch_classes.py"
    assert tool.render(table) == Path(tool.TARGET).read_text()
    assert {"module", "class", "function"} == set(table.values())


def test_every_nn_module_torch_save_can_pickle_scans_clean(tool: ModuleType, tmp_path: Path) -> None:
    """Every module class, with its non-default options (activations as strings or torch functions, flipped
    flags) and hooks, and the objects saved next to weights: all clean, without a warning, and ``tw.load`` reads
    every one (it refuses only dangerous names)."""
    for cls in tool.module_classes():
        assert TORCH_CLASSES.get(tool.qualified(cls)) == "module"
    saved, seen = 0, set()
    problems = []
    for obj in tool.saved_objects():
        path = tmp_path / "module.pt"
        try:
            torch.save(obj, path)
        except Exception:  # unpicklable (a lambda, a lock): torch.save refuses it, nothing to scan
            continue
        saved += 1
        report = scan(path)
        warned = [f.name for f in report.findings if f.severity != "info"]
        if report.verdict != "clean" or warned or not report.loads:
            problems.append((type(obj).__qualname__, report.verdict, warned))
        seen |= {name for name, verdict in report.globals.items() if verdict == "known"}
    assert not problems, problems[:5]
    assert saved > 550  # nearly every module class, with options, hooks, and the objects next to weights
    assert {
        "torch.nn.modules.linear.Linear",
        "torch.nn.utils.weight_norm.WeightNorm",
        "torch._C._nn.gelu",
        "torch._C._VariableFunctionsClass.tanh",
        "torch.utils.data.dataset.TensorDataset",
        "torch._C.Generator",
    } <= seen


def test_pure_functions_are_known_and_excluded_ones_are_not(tool: ModuleType) -> None:
    """The public functions of ``torch._C._nn``, ``torch._C._VariableFunctionsClass`` and ``torch.nn.functional``
    are in the table under the names their pickles use, except those the exclusion rule names, which stay
    dangerous."""
    variable = [n for n in vars(torch._C._VariableFunctionsClass) if not n.startswith("_")]
    excluded = [n for n in variable if tool.excluded(n)]
    assert {"from_file", "frombuffer", "from_numpy", "as_strided", "unsafe_split"} <= set(excluded)
    for name in variable:
        qual = f"torch._C._VariableFunctionsClass.{name}"
        if name in excluded:
            assert qual not in TORCH_CLASSES and classify_global(qual) == "dangerous", qual
        elif callable(getattr(torch._C._VariableFunctionsClass, name)):
            assert TORCH_CLASSES.get(qual) == "function", qual
    assert TORCH_CLASSES["torch._C._nn.gelu"] == "function"
    assert TORCH_CLASSES["torch.nn.functional.relu"] == "function"
    functions = [n for n, kind in TORCH_CLASSES.items() if kind == "function"]
    assert not [n for n in functions if n.startswith(("torch._C._nn.", "torch._C._Var")) and tool.excluded(n)]


@pytest.mark.parametrize(
    "name",
    [
        "torch.nn.modules.conv.Conv2d",
        "torch.nn.modules.container.Sequential",
        "torch.nn.parameter.UninitializedParameter",
        "torch.nn.utils.spectral_norm.SpectralNorm",
        "torch.ao.nn.quantized.modules.linear.Linear",
    ],
)
def test_torch_classes_are_known(name: str) -> None:
    assert classify_global(name) == "known"


def test_third_party_classes_stay_warnings(tmp_path: Path) -> None:
    data = b"\x80\x02cultralytics.nn.tasks\nDetectionModel\n)\x81}b."
    path = write_zip(tmp_path / "model.pt", torch_zip_members(data))
    report = scan(path)
    assert report.verdict == "clean"
    assert [(f.code, f.name) for f in report.findings if f.severity != "info"] == [
        ("unknown-global", "ultralytics.nn.tasks.DetectionModel")
    ]


def test_a_known_function_called_with_arguments_is_still_a_call(tmp_path: Path) -> None:
    """Known classes may be instantiated; a function of the table called by the pickle is a call nobody vetted."""
    data = b"\x80\x02ctorch.nn.functional\nrelu\nK\x01\x85R."
    path = write_zip(tmp_path / "model.pt", torch_zip_members(data))
    assert classify_global("torch.nn.functional.relu") == "known"
    assert [f.code for f in scan(path).findings if f.severity == "dangerous"] == ["dangerous-call"]

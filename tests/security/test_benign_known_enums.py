"""Benign: Enum members of the libraries whose objects end up in checkpoints (``training_args.bin`` holds
``TrainingArguments`` with ``SchedulerType``, ``IntervalStrategy``, ``OptimizerNames``...; Lightning and accelerate
states hold theirs). A member pickles as a call of its class with its value; for the classes of
:data:`~torchweights.unpickle.known_enums.KNOWN_ENUMS` (generated from the libraries by ``tools/make_known_enums.py``)
that
call is a lookup, so scan calls the file clean. The same names called any other way are still dangerous calls.

The library is stood in for by a module registered under its real name while saving, removed before scanning.
"""

from __future__ import annotations

import enum
import importlib
import sys
import types
from pathlib import Path

import pytest
import torch

import torchweights as tw
from torchweights.unpickle.known_enums import KNOWN_ENUMS

LIBRARY = "transformers.trainer_utils"


def _library(monkeypatch: pytest.MonkeyPatch, body: str) -> types.ModuleType:
    module = types.ModuleType(LIBRARY)
    exec(body, module.__dict__)  # the test's own source: the stand-in library
    monkeypatch.setitem(sys.modules, "transformers", types.ModuleType("transformers"))
    monkeypatch.setitem(sys.modules, LIBRARY, module)
    return module


def _save(path: Path, value: object) -> None:
    torch.save({"w": torch.randn(4), "args": {"lr_scheduler_type": value, "steps": 3}}, path)


def test_the_table_names_enums_the_generator_would_find() -> None:
    """Every torch entry names an Enum class of the installed torch under the name pickle writes for it."""
    torch_names = sorted(n for n in KNOWN_ENUMS if n.startswith("torch."))
    assert len(torch_names) > 50
    checked = 0
    for name in torch_names:
        module_name, _, qualname = name.rpartition(".")
        while module_name and module_name not in sys.modules:
            try:
                module = importlib.import_module(module_name)
                break
            except ImportError:
                module_name, _, parent = module_name.rpartition(".")
                qualname = f"{parent}.{qualname}"
        else:
            module = sys.modules[module_name]
        obj: object = module
        for part in qualname.split("."):
            obj = getattr(obj, part)
        assert isinstance(obj, type) and issubclass(obj, enum.Enum) and len(obj.__members__), name
        checked += 1
    assert checked == len(torch_names)


def test_training_arguments_enum_by_value_is_clean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lib = _library(monkeypatch, "import enum\nclass SchedulerType(enum.Enum):\n    COSINE = 'cosine'\n")
    assert f"{LIBRARY}.SchedulerType" in KNOWN_ENUMS
    path = tmp_path / "training_args.bin"
    _save(path, lib.SchedulerType.COSINE)
    monkeypatch.delitem(sys.modules, LIBRARY)
    report = tw.scan(path)
    assert report.verdict == "clean", [f.message for f in report.findings]
    assert report.globals[f"{LIBRARY}.SchedulerType"] == "known"
    assert not report.findings
    assert tw.open(path).extras["args"]["lr_scheduler_type"].cls == f"{LIBRARY}.SchedulerType"  # an inert stub


@pytest.mark.parametrize(
    "arguments",
    ["('cosine', 2)", "(['cosine'],)", "({'a': 1},)"],
    ids=["two-arguments", "a-list", "a-dict"],
)
def test_a_known_enum_called_otherwise_is_still_a_dangerous_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arguments: str
) -> None:
    """Only the lookup Enum pickles make (one plain value) is vetted; a file that calls the name another way is not
    an Enum member, whatever the name says."""
    body = f"class SchedulerType:\n    def __reduce__(self):\n        return SchedulerType, {arguments}\n"
    lib = _library(monkeypatch, body)
    path = tmp_path / "forged.bin"
    _save(path, lib.SchedulerType())
    monkeypatch.delitem(sys.modules, LIBRARY)
    report = tw.scan(path)
    assert report.verdict == "dangerous"
    assert [f.name for f in report.findings if f.code == "dangerous-call"] == [f"{LIBRARY}.SchedulerType"]

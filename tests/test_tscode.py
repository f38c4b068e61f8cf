"""``torchweights.tools.scan.tscode``: the static analysis of TorchScript source, on source text (archives: the
security suite,
tests/security/test_attack_torchscript_code.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from torchweights.tools.scan.tscode import analyse, is_code_member
from torchweights.tools.scan.tsrules import (
    TORCH_CLASS_NAMESPACES,
    TORCH_OP_NAMESPACES,
    CodeFinding,
)


def _found(source: str) -> list[tuple[int, str, str, str]]:
    return [(f.line, f.severity, f.code, f.name) for f in analyse(source)]


_REGISTRY = """
import json, torch
ops = {str(s.name).split("::")[0] for s in torch._C._jit_get_all_schemas()}
ops |= {name.split("::")[0] for name in torch._C._dispatch_get_all_op_names()}
classes = {
    str(s.arguments[0].type).split(".")[3]
    for s in torch._C._jit_get_custom_class_schemas()
    if str(s.arguments[0].type).startswith("__torch__.torch.classes.")
}
print(json.dumps([sorted(ops), sorted(classes)]))
"""


def test_namespaces_cover_every_one_torch_registers() -> None:
    """Every operator and class namespace of the installed torch is known (ordinary, or reported as network): a
    torch release that adds one fails here, rather than its models drawing custom-op warnings. (Read in a fresh
    interpreter: tests register namespaces of their own.)"""
    out = subprocess.run([sys.executable, "-c", _REGISTRY], check=True, capture_output=True, text=True, timeout=120)
    op_namespaces, class_namespaces = json.loads(out.stdout)
    assert "aten" in op_namespaces and "quantized" in class_namespaces
    for namespace in op_namespaces:
        finding = analyse(f"_0 = ops.{namespace}.anything(x)\n")
        assert all(f.code != "ts-custom-op" for f in finding), namespace
    for namespace in class_namespaces:
        finding = analyse(f"x: __torch__.torch.classes.{namespace}.C\n")
        assert all(f.code != "ts-custom-class" for f in finding), namespace
    assert {"aten", "prim", "quantized"} <= TORCH_OP_NAMESPACES and "quantized" in TORCH_CLASS_NAMESPACES
    assert [f.code for f in analyse("_0 = ops.torchvision.nms(x)\n")] == ["ts-custom-op"]


def test_locals_named_like_modules_or_builtins_are_not_flagged() -> None:
    source = """
def forward(self, input: Tensor, types: List[int], io: Tensor) -> Tensor:
    open = torch.add(input, 1)
    code = self.code
    _0 = torch.size(io, types[0])
    return torch.mul(open, code.scale)
"""
    assert analyse(source) == []


def test_what_old_releases_wrote_is_clean() -> None:
    """Files of torch 1.1-1.3: a version line, ``import __torch__...`` lines, the unnamespaced packed-params class."""
    source = """op_version_set = 1
import __torch__.torch.nn.modules.linear
from __torch__.torch.nn.modules.conv import Conv2d
class Linear(Module):
  __parameters__ = []
  _packed_params : __torch__.torch.classes.LinearPackedParamsBase
  def forward(self: __torch__.Linear, x: Tensor) -> Tensor:
    _0 = ops.quantized.linear_dynamic(x, self._packed_params)
    return torch.to(_0, ops.prim.dtype(x))
"""
    assert analyse(source) == []


def test_normalised_forms_and_aliases() -> None:
    source = """def f(x: Tensor) -> Tensor:
    a = torch
    b = a
    _0 = b.from_file("p", True, 8)
    o = getattr(torch, "ops")
    _1 = o.torchvision.nms(x, x, 0.5)
    _2 = __torch__.torch.classes.mylib.Tokenizer
    return x
"""
    assert _found(source) == [
        (4, "dangerous", "ts-file-access", "torch.from_file"),
        (6, "warning", "ts-custom-op", "torch.ops.torchvision.nms"),
        (7, "warning", "ts-custom-class", "__torch__.torch.classes.mylib.Tokenizer"),
    ]


def test_aliases_are_per_function() -> None:
    """``_0`` bound to a namespace in one function does not make every ``_0.x`` elsewhere a namespace access."""
    source = """def f(x: Tensor) -> Tensor:
    _0 = __torch__.torch.nn.functional.relu
    return _0(x)
def g(x: Tensor) -> Tensor:
    _0 = torch.relu(x)
    return _0.save
"""
    assert analyse(source) == []


def test_dynamic_attribute_severity() -> None:
    source = """def f(self, name: str) -> Tensor:
    _0 = getattr(self, name)
    _1 = getattr(ops, name)
    return _0
"""
    assert _found(source) == [
        (2, "warning", "ts-dynamic-attribute", "getattr(<local>, <computed>)"),
        (3, "dangerous", "ts-dynamic-attribute", "getattr(ops, <computed>)"),
    ]


def test_literal_names_in_strings_are_data() -> None:
    source = 'def f(x: Tensor) -> Tensor:\n    _0 = "torch.load(os.system(\\"id\\"))"\n    return x\n'
    assert analyse(source) == []


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("model/code/__torch__.py", True),
        ("model/code/__torch__/torch/nn/modules/linear.py", True),
        ("model/code/__torch__.py.debug_pkl", False),
        ("pkg/.data/ts_code/code/__torch__.py", True),
        ("pkg/.data/ts_code/code/__torch__/foo.py", True),
        ("pkg/mymodule/code/helpers.py", False),
        ("pkg/mymodule.py", False),
        ("pkg/.data/extern_modules", False),
        ("model/data.pkl", False),
    ],
)
def test_is_code_member(name: str, expected: bool) -> None:
    assert is_code_member(name) is expected


def test_findings_are_capped_and_ordered() -> None:
    source = "\n".join(f'_{i} = torch.load("{i}")' for i in range(1000))
    found = analyse(source)
    assert len(found) == 200
    assert [f.line for f in found] == list(range(1, 201))
    assert all(isinstance(f, CodeFinding) and f.message for f in found)


def test_bytes_and_undecodable_source() -> None:
    assert [f.name for f in analyse(b'_0 = torch.save(x, "\xff\xfe")\n')] == ["torch.save"]

"""TorchScript archives: records named like ``torch.jit.load(path).state_dict()``, bit for bit, without running code.

Archives are made by ``torch.jit.script``/``trace`` and ``save`` in ``tmp_path``. Variants current torch cannot write
(old packing versions, hostile pickles) are built by :func:`_crafted`: ``torch.save`` of stand-in objects that pickle
exactly as TorchScript pickles its objects (``GLOBAL __torch__.X``, ``NEWOBJ``, ``BUILD state``), re-zipped with the
``code/`` and ``constants.pkl`` members TorchScript adds. The same recipe with a supported version is shown to load
in torch, so a failure of ``torch.jit.load`` on the variant is the variant's, not the recipe's.
"""

from __future__ import annotations

import copyreg
import itertools
import pickle
import pickletools
import sys
import types
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.jit._pickle
from torch import nn

import torchweights as tw
from torchweights.formats.torchscript import parse_declarations
from torchweights.unpickle.policy import classify_global

# torch.ao.quantization and quantized tensor constructors warn that they are deprecated; they still write the files.
pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated:DeprecationWarning", "ignore:.*deprecated:UserWarning")

# --------------------------------------------------------------------------------------------------------- helpers


def _save(module: Any, path: Path) -> Path:
    module.save(str(path))
    return path


def _assert_same(loaded: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    """Same names in the same order, same dtype, shape, stride and bits."""
    assert list(loaded) == list(reference)
    for name, expected in reference.items():
        got = loaded[name]
        assert got.dtype == expected.dtype, name
        assert got.shape == expected.shape and got.stride() == expected.stride(), name
        assert torch.equal(got, expected), name


def _without_constants(loaded: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in loaded.items() if not k.startswith("constants.")}


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3)
        self.norm = nn.BatchNorm1d(4)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(5, 2, bias=False)
        self.blocks = nn.ModuleList([_Block(), _Block()])
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4, 3).to(torch.bfloat16))
        self.scale = nn.Parameter(torch.ones(()), requires_grad=False)
        self.register_buffer("steps", torch.arange(6, dtype=torch.int64).reshape(2, 3).t())  # a strided view
        self.register_buffer("cache", torch.zeros(2), persistent=False)
        self.plain = torch.full((2,), 7.0)  # a tensor attribute: not in state_dict
        self.depth = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x).unsqueeze(1).expand(-1, 2, -1)
        for block in self.blocks:
            y = block(y)
        return self.head(y.mean(-1).to(torch.bfloat16)).float() * self.scale + self.steps.sum() + self.plain.sum()  # type: ignore[operator]


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = self.a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


# ----------------------------------------------------------------------------------------- state_dict, bit for bit


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.jit.script(nn.Linear(3, 2)),
        lambda: torch.jit.script(_Net()),
        lambda: torch.jit.script(_Tied()),
        lambda: torch.jit.trace(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), torch.randn(2, 4)),
        lambda: torch.jit.script(nn.Sequential(nn.Embedding(10, 3).half(), nn.GRU(3, 2))),
    ],
    ids=["linear", "nested", "tied", "traced", "half-gru"],
)
def test_records_match_jit_state_dict(tmp_path: Path, make: Any) -> None:
    path = _save(make(), tmp_path / "m.pt")
    ckpt = tw.open(path)
    assert ckpt.format == "torchscript"
    reference = torch.jit.load(str(path)).state_dict()
    _assert_same(_without_constants(tw.load(path)), dict(reference))
    parameters = dict(torch.jit.load(str(path)).named_parameters(remove_duplicate=False))
    for name, record in ckpt.records.items():
        if not name.startswith("constants."):
            assert record.is_parameter == (name in parameters), name


def test_nested_model_details(tmp_path: Path) -> None:
    path = _save(torch.jit.script(_Net()), tmp_path / "net.pt")
    ckpt = tw.open(path)
    # non-persistent buffers are in TorchScript's state_dict (it keeps no persistence flag)
    assert "cache" in ckpt.records and "steps" in ckpt.records
    assert ckpt.records["steps"].stride == (1, 3)
    assert ckpt.records["head.1.weight"].dtype == "bfloat16"
    assert "blocks.1.norm.num_batches_tracked" in ckpt.records
    assert not any("act" in name for name in ckpt.records)  # stateless ReLU: not in state_dict
    assert "plain" not in ckpt.records
    assert any("'plain'" in w and "neither parameters nor buffers" in w for w in ckpt.warnings)
    assert ckpt.metadata["module_class"] == "__torch__._Net" or ckpt.metadata["module_class"].endswith("._Net")
    code = ckpt.metadata["code_files"]
    assert "__torch__.py" in code or any(name.startswith("__torch__/") for name in code)
    with zipfile.ZipFile(path) as zf:
        root = zf.namelist()[0].split("/")[0]
        assert all(zf.getinfo(f"{root}/code/{name}").file_size == size for name, size in code.items())
    assert not ckpt.extras  # training flags, ints: dropped like a pickled module's


def test_tied_weights_share_memory(tmp_path: Path) -> None:
    path = _save(torch.jit.script(_Tied()), tmp_path / "tied.pt")
    loaded = tw.load(path)
    assert loaded["a.weight"].data_ptr() == loaded["b.weight"].data_ptr()


_GLOBAL = torch.arange(6.0).reshape(2, 3)


class _UsesConstant(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + _GLOBAL[1]


def test_constants_and_extra_files(tmp_path: Path) -> None:
    traced = torch.jit.trace(_UsesConstant(), torch.randn(2, 3))
    path = tmp_path / "traced.pt"
    torch.jit.save(traced, str(path), _extra_files={"config.json": '{"a": 1}'})
    ckpt = tw.open(path)
    assert [n for n in ckpt.records if n.startswith("constants.")] == ["constants.c0"]
    assert "CONSTANTS.c0" in traced.code
    loaded = tw.load(path)
    assert torch.equal(loaded["constants.c0"], _GLOBAL)
    storage = ckpt.records["constants.c0"].storage
    assert storage is not None and storage.member is not None and storage.member.endswith("constants/0")
    _assert_same(_without_constants(loaded), dict(torch.jit.load(str(path)).state_dict()))
    assert ckpt.metadata["extra_files"] == {"config.json": 8}


class _TwoParts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x)) + _GLOBAL[0]


def test_load_into_reports_constants_and_skips_them(tmp_path: Path) -> None:
    path = _save(torch.jit.trace(_TwoParts(), torch.randn(2, 3)), tmp_path / "traced.pt")
    model = _TwoParts()
    with pytest.raises(tw.LoadError) as info:
        tw.load_into(model, path)
    assert "constants.c0" in str(info.value)
    report = tw.load_into(model, path, skip=["constants.*"])
    assert report.applied
    assert torch.equal(model.b.weight, torch.jit.load(str(path)).b.weight)


class _Typed(nn.Module):
    """Attributes of the types TorchScript pickles with torch.jit._pickle helpers (inferred from the values)."""

    def __init__(self) -> None:
        super().__init__()
        self.ints, self.floats, self.flags = [1, 2], [0.5], [True]
        self.tensors = [torch.ones(2)]
        self.table = {"a": torch.zeros(1)}
        self.w = nn.Parameter(torch.ones(2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.tensors[0] + self.table["a"] + self.ints[0] + self.floats[0]


def test_torch_jit_pickle_helpers_are_read_as_data(tmp_path: Path) -> None:
    path = _save(torch.jit.script(_Typed()), tmp_path / "typed.pt")
    ckpt = tw.open(path)
    for helper in ("build_intlist", "build_doublelist", "build_boollist", "build_tensorlist", "restore_type_tag"):
        assert f"torch.jit._pickle.{helper}" in ckpt.globals
        assert classify_global(f"torch.jit._pickle.{helper}") == "safe"
    assert list(ckpt.records) == ["w"]
    assert any("'tensors'" in w and "'table'" in w for w in ckpt.warnings)


@pytest.mark.parametrize(
    "name", ["torch.jit.load", "torch.jit._pickle.anything_else", "torch.jit._script.RecursiveScriptModule"]
)
def test_the_rest_of_torch_jit_stays_dangerous(name: str) -> None:
    assert classify_global(name) == "dangerous"


def test_parse_declarations_reads_text_only() -> None:
    source = (
        "class Net(Module):\n"
        '  __parameters__ = ["weight", "we\\"ird", ]\n'
        '  __buffers__ = ["running_mean", ]\n'
        "  weight : Tensor\n"
        "  def forward(self: __torch__.Net, x: Tensor) -> Tensor:\n"
        '    __parameters__ = ["not", "this"]\n'  # indented deeper, but still in the class: last one wins
        "    return x\n"
        "class Point(object):\n"
        "  x : int\n"
        "def helper(x: int) -> int:\n"
        "  return x\n"
    )
    decls = parse_declarations(source, "__torch__.pkg")
    assert set(decls) == {"__torch__.pkg.Net", "__torch__.pkg.Point"}
    assert decls["__torch__.pkg.Net"].is_module and not decls["__torch__.pkg.Point"].is_module
    assert decls["__torch__.pkg.Net"].buffers == frozenset({"running_mean"})


# ------------------------------------------------------------------------------------------- crafted archives


class _Scripted:
    """Pickles as TorchScript writes an object: ``GLOBAL <cls>``, ``NEWOBJ ()``, ``BUILD <state>``."""

    _state: Any

    def __reduce_ex__(self, protocol: Any) -> Any:
        return (copyreg.__newobj__, (type(self),), self._state)  # type: ignore[attr-defined]


_CLASSES: dict[str, type] = {}


def _obj(cls: str, state: Any) -> Any:
    module, _, name = cls.rpartition(".")
    klass = _CLASSES.get(cls)
    if klass is None:
        klass = _CLASSES[cls] = type(name, (_Scripted,), {"__module__": module, "__qualname__": name})
    instance: Any = object.__new__(klass)
    instance._state = state
    return instance


class _Call:
    """Pickles as ``REDUCE fn(*args)`` (``torch.jit._pickle.build_tensorlist([...])``...)."""

    def __init__(self, fn: Any, *args: Any) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> Any:
        return (self.fn, self.args)


@contextmanager
def _importable_classes() -> Iterator[None]:
    """Make the stand-in classes findable by name while pickling (pickle checks that a class can be imported)."""
    added: list[str] = []
    try:
        for cls, klass in _CLASSES.items():
            parts = cls.split(".")[:-1]
            for i in range(1, len(parts) + 1):
                name = ".".join(parts[:i])
                if name not in sys.modules:
                    sys.modules[name] = types.ModuleType(name)
                    added.append(name)
            setattr(sys.modules[".".join(parts)], klass.__qualname__, klass)
        yield
    finally:
        for name in added:
            del sys.modules[name]


def _crafted(path: Path, root: Any, code: dict[str, str], constants: tuple[Any, ...] = ()) -> Path:
    """A TorchScript archive holding ``root``: torch.save's pickle and storages, plus code/ and constants.pkl."""
    tmp = path.with_suffix(".tmp")
    with _importable_classes():
        torch.save(root, tmp)
    with zipfile.ZipFile(tmp) as zin, zipfile.ZipFile(path, "w") as zout:
        top = zin.namelist()[0].split("/")[0] + "/"
        for info in zin.infolist():
            zout.writestr(info, zin.read(info))
        zout.writestr(top + "constants.pkl", pickle.dumps(constants, protocol=2))
        for name, text in code.items():
            zout.writestr(top + "code/" + name, text)
    tmp.unlink()
    return path


_P_CODE = {
    "__torch__.py": (
        "class P(Module):\n  __parameters__ = []\n  __buffers__ = []\n  training : bool\n"
        "  _is_full_backward_hook : Optional[bool]\n"
        "  packed : __torch__.torch.classes.quantized.Conv2dPackedParamsBase\n"
        "  def forward(self: __torch__.P,\n    x: Tensor) -> Tensor:\n    return x\n"
    )
}


def _conv_packed(version: Any, weight: torch.Tensor, bias: torch.Tensor) -> Any:
    if isinstance(version, int):
        config = _Call(torch.jit._pickle.build_intlist, [2, 1, 1, 0, 0, 1, 1, 0, 0, 1, 0])
        tensors = _Call(torch.jit._pickle.restore_type_tag, [None, weight, bias], "List[Optional[Tensor]]")
        state: Any = (version, config, tensors)
    else:
        config_tensor = torch.tensor([2, 1, 1, 0, 0, 1, 1, 0, 0, 1, 0], dtype=torch.int16)
        state = (version, _Call(torch.jit._pickle.build_tensorlist, [config_tensor, weight]), [bias])
    packed = _obj("__torch__.torch.classes.quantized.Conv2dPackedParamsBase", state)
    return _obj("__torch__.P", {"training": True, "_is_full_backward_hook": None, "packed": packed})


def _qweight() -> torch.Tensor:
    return torch.quantize_per_tensor(torch.randn(3, 2, 3, 3), 0.1, 1, torch.qint8)


@pytest.mark.parametrize("version", ["2", 3])
def test_crafted_packed_conv_loads_in_torch_too(tmp_path: Path, version: Any) -> None:
    weight, bias = _qweight(), torch.randn(3)
    path = _crafted(tmp_path / "p.pt", _conv_packed(version, weight, bias), _P_CODE)
    unpacked = torch.jit.load(str(path)).packed.unpack()
    loaded = tw.load(path)
    assert list(loaded) == ["packed.weight", "packed.bias"]
    assert torch.equal(loaded["packed.weight"].int_repr(), unpacked[0].int_repr())
    assert loaded["packed.weight"].q_scale() == weight.q_scale() == pytest.approx(unpacked[0].q_scale())
    assert torch.equal(loaded["packed.bias"], unpacked[1])
    assert not tw.open(path).warnings


@pytest.mark.parametrize("version", ["7", 9])
def test_packing_versions_torch_no_longer_reads(tmp_path: Path, version: Any) -> None:
    weight, bias = _qweight(), torch.randn(3)
    path = _crafted(tmp_path / "old.pt", _conv_packed(version, weight, bias), _P_CODE)
    with pytest.raises(RuntimeError, match="serializ"):
        torch.jit.load(str(path))
    ckpt = tw.open(path)
    assert list(ckpt.records) == ["packed.weight", "packed.bias"]
    assert ckpt.records["packed.weight"].quantization == {"qscheme": "per_tensor_affine", "scale": 0.1, "zero_point": 1}
    assert any(repr(version) in w or f"version {version}" in w for w in ckpt.warnings)
    assert torch.equal(tw.load(ckpt)["packed.weight"].int_repr(), weight.int_repr())


def test_old_linear_packed_params_module_state(tmp_path: Path) -> None:
    """torch 1.4-era LinearPackedParams: the module's own __getstate__ tuple (weight, bias, training)."""
    weight = torch.quantize_per_tensor(torch.randn(3, 4), 0.05, 2, torch.qint8)
    bias = torch.randn(3)
    old = _obj("__torch__.torch.nn.quantized.modules.linear.LinearPackedParams", (weight, bias, False))
    code = {
        "__torch__.py": "class M(Module):\n  __parameters__ = []\n  __buffers__ = []\n  training : bool\n"
        "  fc : __torch__.torch.nn.quantized.modules.linear.LinearPackedParams\n",
        "__torch__/torch/nn/quantized/modules/linear.py": "class LinearPackedParams(Module):\n"
        "  __parameters__ = []\n  __buffers__ = []\n  _packed_params : Tensor\n  training : bool\n",
    }
    path = _crafted(tmp_path / "old_linear.pt", _obj("__torch__.M", {"training": False, "fc": old}), code)
    ckpt = tw.open(path)
    assert list(ckpt.records) == ["fc.weight", "fc.bias"]
    loaded = tw.load(ckpt)
    assert torch.equal(loaded["fc.weight"].int_repr(), weight.int_repr())
    assert loaded["fc.weight"].q_zero_point() == 2
    assert torch.equal(loaded["fc.bias"], bias)


def test_unknown_getstate_tuple_is_named_by_position(tmp_path: Path) -> None:
    thing = _obj("__torch__.Thing", (torch.ones(2), "label", [torch.zeros(3)]))
    code = {"__torch__.py": "class M(Module):\n  __parameters__ = []\n  __buffers__ = []\n  thing : __torch__.Thing\n"}
    path = _crafted(tmp_path / "t.pt", _obj("__torch__.M", {"training": False, "thing": thing}), code)
    assert list(tw.open(path).records) == ["thing.state.0", "thing.state.2.0"]


def test_class_missing_from_code_falls_back_to_requires_grad(tmp_path: Path) -> None:
    root = _obj(
        "__torch__.M",
        {"training": True, "w": nn.Parameter(torch.ones(2)), "running": torch.zeros(2), "sub": _obj("__torch__.S", {})},
    )
    path = _crafted(tmp_path / "bare.pt", root, {"__torch__/other.py": "\n"})
    ckpt = tw.open(path)
    assert list(ckpt.records) == ["w", "running"]
    assert ckpt.records["w"].is_parameter and not ckpt.records["running"].is_parameter
    assert any("no declaration" in w and "__torch__.M" in w for w in ckpt.warnings)


def test_cyclic_and_shared_objects_end(tmp_path: Path) -> None:
    shared = _obj("__torch__.S", {"training": True, "weight": torch.ones(2)})
    root = _obj("__torch__.M", {"training": True, "a": shared, "b": shared})
    root._state["me"] = root  # a cycle back to the root
    code = {
        "__torch__.py": "class M(Module):\n  __parameters__ = []\n  __buffers__ = []\n"
        'class S(Module):\n  __parameters__ = ["weight", ]\n  __buffers__ = []\n'
    }
    ckpt = tw.open(_crafted(tmp_path / "cycle.pt", root, code))
    assert list(ckpt.records)[:2] == ["a.weight", "b.weight"]


def test_dangerous_global_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    payload = b"\x80\x02cposix\nsystem\nq\x00X" + len(f"touch {marker}").to_bytes(4, "little")
    payload += f"touch {marker}".encode() + b"\x85R."
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("evil/version", "3\n")
        zf.writestr("evil/data.pkl", payload)
        zf.writestr("evil/constants.pkl", b"\x80\x02).")
        zf.writestr("evil/code/__torch__.py", "class M(Module):\n  __parameters__ = []\n")
    with pytest.raises(tw.UnsafeCheckpointError) as info:
        tw.open(path)
    assert "posix.system" in info.value.message
    assert not marker.exists()


def test_missing_constant_storage(tmp_path: Path) -> None:
    src = _save(torch.jit.trace(_UsesConstant(), torch.randn(2, 3)), tmp_path / "traced.pt")
    dst = tmp_path / "broken.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if "/constants/" not in info.filename:
                zout.writestr(info, zin.read(info))
    with pytest.raises(tw.CorruptCheckpointError) as err:
        tw.open(dst)
    assert err.value.code == "missing-storage"
    assert "constants/0" in err.value.message


# -------------------------------------------------------------------------------------------- quantized models


def test_dynamic_quantized_linear(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.ao.quantization.quantize_dynamic(nn.Sequential(nn.Linear(4, 3)), {nn.Linear}, dtype=torch.qint8)
    path = _save(torch.jit.script(model), tmp_path / "dyn.pt")
    reference = torch.jit.load(str(path))
    assert dict(reference.state_dict()) == {}  # TorchScript's state_dict cannot see packed weights
    ckpt = tw.open(path)
    assert list(ckpt.records) == ["0._packed_params._packed_params.weight", "0._packed_params._packed_params.bias"]
    weight_record = ckpt.records["0._packed_params._packed_params.weight"]
    ref_weight, ref_bias = getattr(reference, "0")._packed_params._weight_bias()
    assert weight_record.dtype == "qint8"
    assert weight_record.quantization == {
        "qscheme": "per_tensor_affine",
        "scale": ref_weight.q_scale(),
        "zero_point": ref_weight.q_zero_point(),
    }
    loaded = tw.load(ckpt)
    weight = loaded["0._packed_params._packed_params.weight"]
    assert weight.is_quantized and weight.qscheme() == torch.per_tensor_affine
    assert torch.equal(weight.int_repr(), ref_weight.int_repr())
    assert torch.equal(loaded["0._packed_params._packed_params.bias"], ref_bias)


class _Static(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        self.conv = nn.Conv2d(2, 3, 3)
        self.fc = nn.Linear(3, 2)
        self.dequant = torch.ao.quantization.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.fc(self.conv(self.quant(x)).flatten(1)[:, :3]))


def test_static_quantized_per_channel(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _Static().eval()
    model.qconfig = torch.ao.quantization.get_default_qconfig("x86")
    prepared = torch.ao.quantization.prepare(model)
    prepared(torch.randn(4, 2, 5, 5))
    quantized = torch.ao.quantization.convert(prepared)
    path = _save(torch.jit.script(quantized), tmp_path / "static.pt")
    ckpt = tw.open(path)
    assert list(ckpt.records) == [
        "quant.scale",
        "quant.zero_point",
        "conv.weight",
        "conv.bias",
        "fc._packed_params._packed_params.weight",
        "fc._packed_params._packed_params.bias",
    ]
    loaded = tw.load(ckpt)
    eager = quantized.state_dict()
    for name in ("conv.weight", "conv.bias"):
        expected = eager[name]
        got = loaded[name]
        assert got.dtype == expected.dtype and got.shape == expected.shape
        if expected.is_quantized:
            assert got.qscheme() == expected.qscheme() == torch.per_channel_affine
            assert torch.equal(got.int_repr(), expected.int_repr())
            assert torch.equal(got.q_per_channel_scales(), expected.q_per_channel_scales())
            assert torch.equal(got.q_per_channel_zero_points(), expected.q_per_channel_zero_points())
            assert got.q_per_channel_axis() == expected.q_per_channel_axis()
        else:
            assert torch.equal(got, expected)
    quant = ckpt.records["conv.weight"].quantization
    assert quant is not None and quant["axis"] == 0 and quant["scales"].shape == (3,)
    fc_weight, _ = quantized.fc._weight_bias()
    assert torch.equal(loaded["fc._packed_params._packed_params.weight"].int_repr(), fc_weight.int_repr())
    _assert_same(
        {k: loaded[k] for k in ("quant.scale", "quant.zero_point")}, dict(torch.jit.load(str(path)).state_dict())
    )


# ------------------------------------------------------------------------- quantized tensors in any pickle format


def test_torch_saved_quantized_tensors_load_exactly(tmp_path: Path) -> None:
    per_tensor = torch.quantize_per_tensor(torch.randn(3, 4), 0.1, 3, torch.quint8)
    per_channel = torch.quantize_per_channel(
        torch.randn(3, 4), torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64), torch.tensor([0, 1, 2]), 0, torch.qint8
    )
    values = {"q": per_tensor, "view": per_tensor.t(), "qc": per_channel}
    path = tmp_path / "q.pt"
    torch.save(values, path)
    reference = torch.load(path)
    loaded = tw.load(path)
    assert list(loaded) == list(reference)
    for name, expected in reference.items():
        got = loaded[name]
        assert got.dtype == expected.dtype and got.stride() == expected.stride(), name
        assert torch.equal(got.int_repr(), expected.int_repr()), name
        assert got.qscheme() == expected.qscheme(), name
    assert loaded["view"].untyped_storage().data_ptr() == loaded["q"].untyped_storage().data_ptr()
    assert torch.equal(loaded["qc"].q_per_channel_zero_points(), per_channel.q_per_channel_zero_points())


def test_per_channel_parameters_must_fit_the_tensor(tmp_path: Path) -> None:
    good = torch.quantize_per_tensor(torch.randn(3, 4), 0.1, 0, torch.qint8)

    class _Bad:
        def __reduce__(self) -> Any:
            scales = torch.tensor([0.1, 0.2], dtype=torch.float64)  # 2 scales for 3 channels
            zero_points = torch.tensor([0, 0])
            qparams = (torch.per_channel_affine, scales, zero_points, 0)
            return (torch._utils._rebuild_qtensor, (good.storage(), 0, (3, 4), (4, 1), qparams, False, {}))

    path = tmp_path / "bad.pt"
    torch.save({"w": _Bad()}, path)
    with pytest.raises(tw.CorruptCheckpointError) as info:
        tw.open(path)
    assert info.value.code == "bad-record"
    assert "3 channels along axis 0" in info.value.message and "w" in info.value.message


def test_sub_byte_quantized_tensors_are_reported_not_read(tmp_path: Path) -> None:
    packed = torch.quantize_per_tensor(torch.rand(4, 4), 0.1, 0, torch.quint4x2)
    path = tmp_path / "q4.pt"
    torch.save({"packed": packed, "plain": torch.ones(2)}, path)
    ckpt = tw.open(path)
    assert list(ckpt.records) == ["plain"]
    assert any("'packed'" in w and "does not read yet" in w for w in ckpt.warnings)


def test_load_refuses_quantized_records_it_cannot_build(tmp_path: Path) -> None:
    from dataclasses import replace

    path = tmp_path / "q.pt"
    torch.save({"q": torch.quantize_per_tensor(torch.randn(4), 0.1, 0, torch.qint8)}, path)
    record = tw.open(path).records["q"]
    with pytest.raises(tw.UnsupportedCheckpointError) as info:
        tw.load(tw.Checkpoint(str(path), "torch-zip", records={"q": replace(record, storage=None)}))
    assert info.value.code == "unsupported-quantized"
    assert "'q'" in info.value.message and "without data" in info.value.message


def test_load_into_refuses_to_cast_quantized_into_float(tmp_path: Path) -> None:
    path = tmp_path / "qsd.pt"
    torch.save(
        {"weight": torch.quantize_per_tensor(torch.randn(2, 3), 0.1, 3, torch.qint8), "bias": torch.ones(2)}, path
    )
    model = nn.Linear(3, 2)
    before = model.weight.detach().clone()
    with pytest.raises(tw.LoadError) as info:
        tw.load_into(model, path)
    assert "weight" in str(info.value)
    assert torch.equal(model.weight, before)
    report = tw.load_into(model, path, on_mismatch="skip", strict=False)
    assert torch.equal(model.bias, torch.ones(2)) and torch.equal(model.weight, before)
    assert any("quantized" in str(a.reason) for a in report.plan.by_kind("skip"))


def test_module_nesting_is_bounded(tmp_path: Path) -> None:
    leaf = _obj("__torch__.M", {"training": True, "w": nn.Parameter(torch.ones(1))})
    for _ in range(250):
        leaf = _obj("__torch__.M", {"training": True, "child": leaf})
    code = {"__torch__.py": 'class M(Module):\n  __parameters__ = ["w", ]\n  __buffers__ = []\n'}
    path = _crafted(tmp_path / "deep.pt", leaf, code)
    with pytest.raises(tw.ResourceLimitError) as info:
        tw.open(path)
    assert info.value.code == "limit-depth"
    assert len(tw.open(path, limits=tw.Limits(max_depth=300)).records) == 1


# ------------------------------------------------------------------------------ layouts of earlier torch releases


def _rewrite_member(src: Path, dst: Path, change: Any) -> Path:
    """Copy a zip, passing each member through ``change(name, data)`` (None drops the member)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = change(info.filename, zin.read(info))
            if data is not None:
                zout.writestr(info, data)
    return dst


def _with_view_metadata(data: bytes, value: bytes = b"N") -> bytes:
    """A TorchScript pickle as torch 1.3 to 1.5 wrote it: every storage id ends with ``view_metadata`` (``NONE``).

    Their ``Pickler::pushStorageOfTensor`` pushed ``MARK 'storage' <type> <key> <location> <numel> NONE TUPLE
    BINPERSID``; today's pushes the same without ``NONE``. Protocol 2 has no byte offsets, so inserting the opcode
    before each ``TUPLE`` that closes a persistent id is exactly the old bytes.
    """
    pairs = itertools.pairwise(pickletools.genops(data))
    cuts = [pos for (op, _, pos), (nxt, _, _) in pairs if op.name == "TUPLE" and nxt.name == "BINPERSID"]
    assert cuts
    out, last = [], 0
    for pos in cuts:
        out += [data[last:pos], value]
        last = pos
    return b"".join([*out, data[last:]])


def test_storage_ids_of_torch_1_3_to_1_5_carry_view_metadata(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = _save(torch.jit.trace(_UsesConstant(), torch.randn(2, 3)), tmp_path / "new.pt")
    old = _rewrite_member(
        src,
        tmp_path / "old.pt",
        lambda name, data: _with_view_metadata(data) if name.endswith(("/data.pkl", "/constants.pkl")) else data,
    )
    with zipfile.ZipFile(old) as zf:
        names = [op.name for op, _, _ in pickletools.genops(zf.read("new/data.pkl"))]
    ends = [names[i : i + 3] for i in range(len(names) - 2) if names[i + 2] == "BINPERSID"]
    assert ends == [["NONE", "TUPLE", "BINPERSID"]] * 2  # fc.weight, fc.bias: (..., 'cpu', numel, None)
    reference = torch.jit.load(str(old))  # every torch.jit.load reads the first five elements
    loaded = tw.load(old)
    _assert_same(_without_constants(loaded), dict(reference.state_dict()))
    assert torch.equal(loaded["constants.c0"], _GLOBAL)
    assert not tw.open(old).warnings


def test_view_metadata_torch_never_wrote_is_refused(tmp_path: Path) -> None:
    src = _save(torch.jit.script(nn.Linear(2, 2)), tmp_path / "new.pt")
    bad = _rewrite_member(
        src,
        tmp_path / "bad.pt",
        lambda name, data: _with_view_metadata(data, b"K\x07") if name.endswith("/data.pkl") else data,
    )
    with pytest.raises(tw.CorruptCheckpointError) as info:
        tw.open(bad)
    assert info.value.code == "bad-record" and "view metadata 7" in info.value.message


@pytest.mark.parametrize("member", ["data.pkl", "constants.pkl", "version"])
def test_archive_missing_a_required_member(tmp_path: Path, member: str) -> None:
    src = _save(torch.jit.trace(_UsesConstant(), torch.randn(2, 3)), tmp_path / "m.pt")
    dst = _rewrite_member(src, tmp_path / "broken.pt", lambda name, data: None if name == f"m/{member}" else data)
    with pytest.raises(RuntimeError):
        torch.jit.load(str(dst))  # torch refuses it as well
    with pytest.raises(tw.CorruptCheckpointError) as info:
        tw.open(dst)
    assert info.value.code == "missing-member"
    assert f"'m/{member}'" in info.value.message
    assert tw.scan(dst).verdict != "clean"


# ------------------------------------------------------------------------------------ quantized RNN cells (1.5+)


class _Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 4, num_layers=2, bidirectional=True)
        self.gru = nn.GRU(3, 2)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(x)
        z, _ = self.gru(x)
        return self.fc(y) + z.sum()


@pytest.mark.parametrize("dtype", [torch.qint8, torch.float16])
def test_dynamic_quantized_lstm_and_gru_cells(tmp_path: Path, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = torch.ao.quantization.quantize_dynamic(_Recurrent(), {nn.LSTM, nn.GRU, nn.Linear}, dtype=dtype)
    path = _save(torch.jit.script(model), tmp_path / "rnn.pt")
    ckpt = tw.open(path)
    loaded = tw.load(ckpt)
    cells = {"lstm": 4, "gru": 1}  # layers x directions
    expected = []
    for rnn, count in cells.items():
        for i in range(count):
            cell = getattr(model, rnn)._all_weight_values[i].param
            kind, tensors, _, _, packed = cell.__getstate__()[0]  # (state, class name)
            assert kind == ("quantized_dynamic" if dtype == torch.qint8 else "quantized_fp16")
            prefix = f"{rnn}._all_weight_values.{i}.param"
            values = {}
            if tensors:
                values[f"{prefix}.bias_ih"], values[f"{prefix}.bias_hh"] = tensors
            for side, params in zip(("ih", "hh"), packed):
                weight, bias = params.__getstate__()[0]
                values[f"{prefix}.packed_{side}.weight"], values[f"{prefix}.packed_{side}.bias"] = weight, bias
            for name, tensor in values.items():
                expected.append(name)
                got = loaded[name]
                assert got.dtype == tensor.dtype and got.shape == tensor.shape, name
                if tensor.is_quantized:
                    assert torch.equal(got.int_repr(), tensor.int_repr()), name
                    assert got.q_scale() == tensor.q_scale() and got.q_zero_point() == tensor.q_zero_point()
                else:
                    assert torch.equal(got, tensor), name
    assert [n for n in ckpt.records if not n.startswith("fc.")] == [e for e in expected if e.startswith("lstm")] + [
        e for e in expected if e.startswith("gru")
    ]
    assert not ckpt.warnings


def test_unknown_cell_type_is_named_by_position(tmp_path: Path) -> None:
    cell = _obj("__torch__.torch.classes.rnn.CellParamsBase", ("future", [torch.ones(2)], [], [], []))
    code = {"__torch__.py": "class M(Module):\n  __parameters__ = []\n  __buffers__ = []\n"}
    path = _crafted(tmp_path / "cell.pt", _obj("__torch__.M", {"training": False, "cell": cell}), code)
    ckpt = tw.open(path)
    assert list(ckpt.records) == ["cell.tensors.0"]
    assert any("'future'" in w and "named by position" in w for w in ckpt.warnings)


# ----------------------------------------------------------------- model.json archives of torch 1.0-1.2 (fixtures)

_FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _model_json_script() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_torchscript_model_json", _FIXTURES / "make_torchscript_model_json.py"
    )
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@pytest.mark.parametrize("example", ["1_0", "1_2"])
def test_committed_model_json_fixtures_are_what_the_script_writes(tmp_path: Path, example: str) -> None:
    getattr(_model_json_script(), f"example_{example}")(tmp_path / "again.pt")
    assert (tmp_path / "again.pt").read_bytes() == (_FIXTURES / f"torchscript_{example}.pt").read_bytes()


def test_model_json_of_torch_1_0(tmp_path: Path) -> None:
    expected = _model_json_script().example_1_0(tmp_path / "unused.pt")
    path = _FIXTURES / "torchscript_1_0.pt"
    ckpt = tw.open(path)
    assert ckpt.format == "torchscript" and ckpt.metadata["proto_version"] == 1
    assert list(ckpt.records) == ["scale", "steps", "tail", "flags", "fc.weight", "fc.bias"]
    assert [n for n, r in ckpt.records.items() if r.is_parameter] == ["scale", "fc.weight", "fc.bias"]
    assert ckpt.records["steps"].stride == (1, 3) and ckpt.records["tail"].storage_offset == 3
    assert ckpt.metadata["code_files"] == {"archive.py": 74, "archive.fc.py": 19}
    loaded = tw.load(ckpt)
    for name, values in expected.items():
        got = loaded[name]
        assert str(got.dtype) == f"torch.{values.dtype}" and tuple(got.shape) == values.shape, name
        assert np.array_equal(got.numpy(), values), name
    assert loaded["steps"].untyped_storage().data_ptr() == loaded["tail"].untyped_storage().data_ptr()
    assert not ckpt.warnings


def test_model_json_of_torch_1_2_with_attributes(tmp_path: Path) -> None:
    expected = _model_json_script().example_1_2(tmp_path / "unused.pt")
    ckpt = tw.open(_FIXTURES / "torchscript_1_2.pt")
    assert list(ckpt.records) == ["embedding", "fc.weight", "fc.bias"]
    assert ckpt.globals == ("torch.jit._pickle.build_tensor_from_id",)
    assert ckpt.records["fc.weight"].quantization == {"qscheme": "per_tensor_affine", "scale": 0.05, "zero_point": 3}
    assert any("'cache'" in w and "neither parameters nor buffers" in w for w in ckpt.warnings)
    loaded = tw.load(ckpt)
    assert np.array_equal(loaded["embedding"].numpy(), expected["embedding"])
    assert np.array_equal(loaded["fc.weight"].int_repr().numpy(), expected["fc.weight"])
    assert loaded["fc.weight"].q_scale() == 0.05 and loaded["fc.weight"].q_zero_point() == 3
    assert np.array_equal(loaded["fc.bias"].numpy(), expected["fc.bias"])
    assert tw.scan(_FIXTURES / "torchscript_1_2.pt").verdict == "clean"


@pytest.mark.parametrize(
    ("drop", "code"),
    [("archive/attributes.pkl", "missing-member"), ("archive/tensors/0", "missing-storage")],
)
def test_model_json_archive_missing_members(tmp_path: Path, drop: str, code: str) -> None:
    dst = _rewrite_member(_FIXTURES / "torchscript_1_2.pt", tmp_path / "b.pt", lambda n, d: None if n == drop else d)
    with pytest.raises(tw.CorruptCheckpointError) as info:
        tw.open(dst)
    assert info.value.code == code and drop.split("/", 1)[1] in info.value.message


def test_model_json_that_is_not_a_model_def(tmp_path: Path) -> None:
    dst = _rewrite_member(
        _FIXTURES / "torchscript_1_0.pt",
        tmp_path / "b.pt",
        lambda n, d: d.replace(b'"dataType":"FLOAT"', b'"dataType":"STRING"') if n.endswith("model.json") else d,
    )
    with pytest.raises(tw.CorruptCheckpointError) as info:
        tw.open(dst)
    assert info.value.code == "bad-record" and "data type 'STRING'" in info.value.message


def test_model_json_with_a_damaged_byte_keeps_the_crc_error(tmp_path: Path) -> None:
    """The member's own read error (bad-crc) passes through the JSON parser's error handling unchanged."""
    raw = bytearray((_FIXTURES / "torchscript_1_0.pt").read_bytes())
    at = raw.index(b'"protoVersion"') + 2
    raw[at] ^= 0x20  # "protoVersion" -> "pRotoVersion": still JSON, no longer the bytes the CRC was taken of
    dst = tmp_path / "b.pt"
    dst.write_bytes(bytes(raw))
    with pytest.raises(tw.CorruptCheckpointError) as info:
        tw.open(dst)
    assert info.value.code == "bad-crc" and "[" not in info.value.message, info.value


class _Bag(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(10, 4, mode="sum")

    def forward(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.bag(x, offsets)


def test_quantized_embedding_packed_params(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _Bag().eval()
    model.bag.qconfig = torch.ao.quantization.float_qparams_weight_only_qconfig  # type: ignore[assignment]
    quantized = torch.ao.quantization.convert(torch.ao.quantization.prepare(model))
    path = _save(torch.jit.script(quantized), tmp_path / "bag.pt")
    ckpt = tw.open(path)
    assert list(ckpt.records) == ["bag._packed_params._packed_weight.weight"]
    got = tw.load(ckpt)["bag._packed_params._packed_weight.weight"]
    expected = quantized.bag.weight()
    assert got.qscheme() == expected.qscheme() == torch.per_channel_affine_float_qparams
    assert torch.equal(got.int_repr(), expected.int_repr())
    assert torch.equal(got.q_per_channel_scales(), expected.q_per_channel_scales())


def test_static_quantized_cell_names_its_six_tensors(tmp_path: Path) -> None:
    """``QuantizedCellParams::__getstate__`` (torch.jit.quantized RNNs): w_ih, w_hh, b_ih, b_hh, col_offsets."""
    w_ih, w_hh = torch.randint(-128, 127, (8, 3), dtype=torch.int8), torch.randint(-128, 127, (8, 2), dtype=torch.int8)
    b_ih, b_hh = torch.randn(8), torch.randn(8)
    off_ih, off_hh = torch.arange(8, dtype=torch.int32), torch.arange(8, 16, dtype=torch.int32)
    state = ("quantized", [w_ih, w_hh, b_ih, b_hh, off_ih, off_hh], [0.1, 0.2], [0, 1], [])
    cell = _obj("__torch__.torch.classes.rnn.CellParamsBase", state)
    code = {"__torch__.py": "class M(Module):\n  __parameters__ = []\n  __buffers__ = []\n"}
    path = _crafted(tmp_path / "cell.pt", _obj("__torch__.M", {"training": False, "cell": cell}), code)
    loaded = tw.load(path)
    names = ["weight_ih", "weight_hh", "bias_ih", "bias_hh", "col_offsets_ih", "col_offsets_hh"]
    assert list(loaded) == [f"cell.{n}" for n in names]
    for name, tensor in zip(names, (w_ih, w_hh, b_ih, b_hh, off_ih, off_hh), strict=True):
        assert loaded[f"cell.{name}"].dtype == tensor.dtype and torch.equal(loaded[f"cell.{name}"], tensor)

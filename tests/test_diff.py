"""``tw.diff``: identical, renamed-prefix identical, perturbed, shape and dtype changes, tolerances, streaming."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import pytest
import safetensors.torch as safetensors_torch
import torch

import torchweights as tw
from torchweights.errors import RuleError

diff_module = importlib.import_module("torchweights.tools.diff")


def _model_sd(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "encoder.weight": torch.randn(8, 4, generator=gen),
        "encoder.bias": torch.randn(8, generator=gen),
        "norm.running_mean": torch.randn(8, generator=gen),
        "head.weight": torch.randn(3, 8, generator=gen).to(torch.bfloat16),
        "steps": torch.tensor(12),
    }


def test_identical_across_formats(tmp_path: Path) -> None:
    sd = _model_sd()
    torch.save(sd, tmp_path / "a.pt")
    safetensors_torch.save_file(sd, str(tmp_path / "b.safetensors"))
    report = tw.diff(tmp_path / "a.pt", tmp_path / "b.safetensors")
    assert report.summary == "identical" and report.identical and report.equal and report.same_layout
    assert report.counts()["identical"] == len(sd)
    assert all(t.changed == 0 for t in report.tensors)


def test_dataparallel_prefix_and_its_clean_twin_are_identical(tmp_path: Path) -> None:
    sd = _model_sd()
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "dp.pt")
    torch.save(sd, tmp_path / "clean.pt")
    for a, b in (("dp.pt", "clean.pt"), ("clean.pt", "dp.pt")):
        report = tw.diff(tmp_path / a, tmp_path / b)
        assert report.summary == "identical", (a, b, report.tensors)
        assert "'module.'" in report.prefix
    # a Lightning checkpoint and the weights exported from it: container and 'model.' prefix handled
    lightning = {
        "epoch": 2,
        "state_dict": {f"model.{k}": v for k, v in sd.items()},
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(8, 4)}}, "param_groups": []}],
    }
    torch.save(lightning, tmp_path / "run.ckpt")
    report = tw.diff(tmp_path / "run.ckpt", tmp_path / "clean.pt")
    assert report.identical and report.container_a == "state_dict" and report.ignored_a == 1


def test_one_perturbed_tensor(tmp_path: Path) -> None:
    sd = _model_sd()
    torch.save(sd, tmp_path / "a.pt")
    changed = dict(sd)
    w = sd["encoder.weight"].clone()
    w[0, 0] += 0.5
    w[3, 1] = -w[3, 1]
    changed["encoder.weight"] = w
    torch.save(changed, tmp_path / "b.pt")
    report = tw.diff(tmp_path / "a.pt", tmp_path / "b.pt")
    (t,) = report.by_status("different")
    assert t.name == "encoder.weight" and t.changed == 2 and t.fraction_changed == 2 / 32
    expected_abs = max(0.5, 2 * abs(float(sd["encoder.weight"][3, 1])))
    assert t.max_abs == pytest.approx(expected_abs, rel=1e-6)
    a, b = sd["encoder.weight"].double(), w.double()
    expected_rel = float(((a - b).abs() / torch.maximum(a.abs(), b.abs())).nan_to_num(0).max())
    assert t.max_rel == pytest.approx(expected_rel)
    assert report.summary.startswith("same layout, values differ in 1 tensor (largest: 'encoder.weight' max abs")
    assert not report.equal and report.same_layout
    assert report.counts()["identical"] == len(sd) - 1
    # within tolerance: equal, but not identical
    close = tw.diff(tmp_path / "a.pt", tmp_path / "b.pt", atol=10.0)
    assert close.equal and not close.identical and close.by_status("close")[0].name == "encoder.weight"
    assert close.summary.startswith("same layout, values equal within tolerance")


def test_shape_change_and_names_on_one_side_only(tmp_path: Path) -> None:
    sd = _model_sd()
    torch.save(sd, tmp_path / "a.pt")
    other = dict(sd)
    other["encoder.weight"] = torch.zeros(8, 5)
    del other["norm.running_mean"]
    other["extra.weight"] = torch.ones(2)
    torch.save(other, tmp_path / "b.pt")
    report = tw.diff(tmp_path / "a.pt", tmp_path / "b.pt")
    assert not report.same_layout
    (shape,) = report.by_status("shape")
    assert (shape.name, shape.shape_a, shape.shape_b) == ("encoder.weight", (8, 4), (8, 5))
    assert [t.name for t in report.by_status("only-a")] == ["norm.running_mean"]
    assert [t.name for t in report.by_status("only-b")] == ["extra.weight"]
    assert report.summary.startswith("different layouts: 1 only in A, 1 only in B, 1 shape change, 0 dtype changes")


def test_dtype_change_reports_the_cast_error(tmp_path: Path) -> None:
    sd = _model_sd()
    torch.save(sd, tmp_path / "a.pt")
    half = dict(sd)
    half["encoder.weight"] = sd["encoder.weight"].to(torch.bfloat16)
    torch.save(half, tmp_path / "b.pt")
    report = tw.diff(tmp_path / "a.pt", tmp_path / "b.pt")
    (t,) = report.by_status("dtype")
    assert (t.dtype_a, t.dtype_b) == ("float32", "bfloat16")
    error = (sd["encoder.weight"].double() - half["encoder.weight"].double()).abs().max()
    assert t.max_abs == pytest.approx(float(error)) and 0 < t.max_abs < 0.1
    assert "1 dtype change" in report.summary and not report.equal


def test_nan_equals_nan_and_inf_differences_are_reported(tmp_path: Path) -> None:
    a = torch.tensor([1.0, math.nan, math.inf, 0.0])
    torch.save({"x": a, "y": a.clone()}, tmp_path / "a.pt")
    b = a.clone()
    b[2] = 5.0
    torch.save({"x": a.clone(), "y": b}, tmp_path / "b.pt")
    report = tw.diff(tmp_path / "a.pt", tmp_path / "b.pt")
    assert [t.status for t in report.tensors] == ["identical", "different"]
    y = report.tensors[1]
    assert y.max_abs == math.inf and y.changed == 1
    assert json.loads(json.dumps(report.to_dict()))["tensors"][1]["max_abs"] == "inf"


def test_values_stream_in_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tensors are read in aligned blocks of elements; statistics come out the same over many small blocks."""
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(64, 33, generator=gen)
    b = a.clone()
    b[-1, -1] += 3.0
    b[10, 2] += 1.0
    torch.save({"w": a, "t": a.t()}, tmp_path / "a.pt")
    torch.save({"w": b, "t": b.t().contiguous()}, tmp_path / "b.pt")
    whole = tw.diff(tmp_path / "a.pt", tmp_path / "b.pt")
    monkeypatch.setattr(diff_module, "CHUNK_BYTES", 16 * 7)  # 7 elements per block
    blocks: list[int] = []
    real = diff_module._Stats.add

    def counting(self: object, block_a: bytearray, *args: object) -> None:
        blocks.append(len(block_a))
        real(self, block_a, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(diff_module._Stats, "add", counting)
    small = tw.diff(tmp_path / "a.pt", tmp_path / "b.pt")
    assert [t.to_dict() for t in small.tensors] == [t.to_dict() for t in whole.tensors]
    assert small.tensors[0].max_abs == pytest.approx(3.0, rel=1e-5) and small.tensors[0].changed == 2
    assert small.tensors[1].changed == 2  # a strided view against a contiguous copy
    assert 0 < max(blocks) <= 28 and len(blocks) == 4  # only the blocks that differ reach the statistics


def test_report_text_and_json(tmp_path: Path) -> None:
    sd = _model_sd()
    torch.save(sd, tmp_path / "a.pt")
    other = dict(sd)
    other["encoder.bias"] = sd["encoder.bias"] + 1
    torch.save(other, tmp_path / "b.pt")
    report = tw.diff(tmp_path / "a.pt", tmp_path / "b.pt")
    text = str(report)
    assert "different" in text and "encoder.bias" in text and "max abs 1" in text
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["summary"] == report.summary and data["counts"]["different"] == 1
    with pytest.raises(RuleError):
        tw.diff(tmp_path / "a.pt", tmp_path / "b.pt", rtol=-1)

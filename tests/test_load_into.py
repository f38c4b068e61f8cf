"""End to end: real models, real checkpoints, compared bit for bit with a hand-written correct load."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import torchweights as tw

safetensors_torch = pytest.importorskip("safetensors.torch")


def _same(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert list(got) == list(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype, name
        assert torch.equal(got[name], tensor), name


class SmallCNN(torch.nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3)
        )
        self.norm = torch.nn.LayerNorm(8)
        self.fc = torch.nn.Linear(8, classes)


class TinyLM(torch.nn.Module):
    def __init__(self, vocab: int = 50, dim: int = 16, layers: int = 2) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.blocks = torch.nn.ModuleList(
            torch.nn.TransformerEncoderLayer(dim, 2, 32, batch_first=True) for _ in range(layers)
        )
        self.lm_head = torch.nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.embed.weight  # tied
        self.register_buffer("rope_cache", torch.randn(4), persistent=False)


def _trained(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
        for name, b in model.named_buffers():
            if b.is_floating_point():
                b.copy_(torch.rand_like(b) + 0.5)
            elif "num_batches_tracked" in name:
                b.fill_(17)
    return model


def test_sequential_from_dataparallel_lightning_checkpoint(tmp_path: Path) -> None:
    src = _trained(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)))
    opt = torch.optim.Adam(src.parameters())
    src(torch.randn(3, 4)).sum().backward()
    opt.step()
    ckpt = {
        "epoch": 4,
        "state_dict": {f"module.{k}": v for k, v in src.state_dict().items()},
        "optimizer_states": [opt.state_dict()],
        "hyper_parameters": {"lr": 0.1},
    }
    path = tmp_path / "run.ckpt"
    torch.save(ckpt, path)
    dst = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    report = tw.load_into(dst, path)
    assert report.ok and report.applied
    assert report.plan.container.name == "state_dict"
    assert report.plan.prefix.strip == "module."
    _same(dst, src.state_dict())
    assert report.totals["tensors"] == 4 and report.totals["ignored"] > 0


def test_cnn_with_batchnorm_from_half_precision_old_checkpoint(tmp_path: Path) -> None:
    src = _trained(SmallCNN())
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in src.state_dict().items()}
    state.pop("features.1.num_batches_tracked")  # saved before torch 0.4.1
    state["norm.gamma"] = state.pop("norm.weight")  # old LayerNorm names
    state["norm.beta"] = state.pop("norm.bias")
    path = tmp_path / "old.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)

    dst = SmallCNN()
    before_nbt = dst.features[1].num_batches_tracked.clone()
    report = tw.load_into(dst, path)
    assert report.ok
    # hand-written correct load
    expected = SmallCNN()
    hand = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    hand["norm.weight"] = hand.pop("norm.gamma")
    hand["norm.bias"] = hand.pop("norm.beta")
    hand["features.1.num_batches_tracked"] = before_nbt
    expected.load_state_dict(hand)
    _same(dst, expected.state_dict())
    kinds = {a.target: a.kind for a in report.plan.actions if a.target}
    assert kinds["features.1.num_batches_tracked"] == "default"
    casts = [a for a in report.plan.actions if a.cast]
    assert casts and all((a.src_dtype, a.dst_dtype) == ("float16", "float32") for a in casts)


def test_head_mismatch_is_an_error_that_leaves_the_model_untouched(tmp_path: Path) -> None:
    src = _trained(SmallCNN(classes=1000))
    path = tmp_path / "imagenet.pt"
    torch.save({"model": src.state_dict()}, path)
    dst = SmallCNN(classes=10)
    before = copy.deepcopy(dst.state_dict())
    with pytest.raises(tw.LoadError) as info:
        tw.load_into(dst, path)
    assert info.value.code == "shape-mismatch"
    assert "fc.weight" in info.value.message and "(1000, 8)" in info.value.message
    report = info.value.report
    assert isinstance(report, tw.LoadReport) and not report.applied
    _same(dst, before)

    report = tw.load_into(dst, path, skip=["fc.*"])
    assert report.ok
    expected = {k: v for k, v in src.state_dict().items() if not k.startswith("fc.")}
    for k, v in dst.state_dict().items():
        if k.startswith("fc."):
            assert torch.equal(v, before[k])
        else:
            assert torch.equal(v, expected[k])
    report = tw.load_into(SmallCNN(classes=10), path, on_mismatch="skip")
    assert report.ok and {a.target for a in report.plan.by_kind("skip")} == {"fc.weight", "fc.bias"}


def test_tied_embeddings_load_once_and_stay_tied(tmp_path: Path) -> None:
    src = _trained(TinyLM())
    full = tmp_path / "full.pt"
    torch.save(src.state_dict(), full)
    deduped = tmp_path / "dedup.safetensors"
    sd = {k: v.contiguous() for k, v in src.state_dict().items() if k != "lm_head.weight"}
    safetensors_torch.save_file(sd, str(deduped))
    for path in (full, deduped):
        dst = TinyLM()
        report = tw.load_into(dst, path)
        assert report.ok, str(report.plan.problems)
        assert dst.lm_head.weight is dst.embed.weight
        assert [a.target for a in report.plan.by_kind("tied")] == ["lm_head.weight"]
        _same(dst, src.state_dict())


def test_meta_device_model_is_materialised_from_the_checkpoint(tmp_path: Path) -> None:
    src = _trained(TinyLM())
    path = tmp_path / "lm.safetensors"
    safetensors_torch.save_model(src, str(path))
    with torch.device("meta"):
        dst = TinyLM()
    report = tw.load_into(dst, path, strict="model")
    assert report.ok
    params = dict(dst.named_parameters())
    assert not any(p.is_meta for p in params.values())
    assert dst.lm_head.weight is dst.embed.weight
    assert all(isinstance(p, torch.nn.Parameter) and p.requires_grad for p in params.values())
    for name, tensor in src.state_dict().items():
        assert torch.equal(dst.state_dict()[name], tensor), name


def test_full_pickled_model_as_source(tmp_path: Path) -> None:
    src = _trained(SmallCNN())
    path = tmp_path / "whole.pt"
    torch.save({"model": src, "epoch": 2}, path)
    dst = SmallCNN()
    assert tw.load_into(dst, path).ok
    _same(dst, src.state_dict())


def test_ema_container_on_request_and_dtype_checkpoint(tmp_path: Path) -> None:
    live = _trained(SmallCNN(), seed=1)
    ema = _trained(SmallCNN(), seed=2)
    path = tmp_path / "ema.pt"
    torch.save(
        {
            "model": live.state_dict(),
            "model_ema": {k: v.double() if v.is_floating_point() else v for k, v in ema.state_dict().items()},
        },
        path,
    )
    dst = SmallCNN()
    report = tw.load_into(dst, path)
    assert report.plan.container.name == "model"
    _same(dst, live.state_dict())

    dst = SmallCNN()
    report = tw.load_into(dst, path, container="model_ema", dtype="checkpoint")
    assert report.plan.container.name == "model_ema"
    assert dst.fc.weight.dtype == torch.float64
    assert torch.equal(dst.fc.weight, ema.fc.weight.double())


def test_dry_run_and_plain_state_dict_source() -> None:
    src = _trained(SmallCNN())
    dst = SmallCNN()
    before = copy.deepcopy(dst.state_dict())
    report = tw.load_into(dst, {f"_orig_mod.{k}": v for k, v in src.state_dict().items()}, dry_run=True)
    assert report.ok and not report.applied
    _same(dst, before)
    report = tw.load_into(dst, {f"_orig_mod.{k}": v for k, v in src.state_dict().items()})
    assert report.applied
    _same(dst, src.state_dict())


class Transposed(torch.nn.Module):
    """Stores its weight transposed in checkpoints: loading must go through its own hook."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(3, 5))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        key = prefix + "weight"
        if key in state_dict:
            state_dict[key] = state_dict[key].t()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def test_modules_with_custom_loading_go_through_torch(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), Transposed())
    stored = torch.arange(15.0).reshape(5, 3)
    state = {"0.weight": torch.ones(2, 2), "0.bias": torch.zeros(2), "1.weight": stored}
    report = tw.load_into(model, state, skip=[], strict=False)
    assert report.fallback_modules == ("1",)
    assert torch.equal(model[1].weight, stored.t())
    assert torch.equal(model[0].weight, torch.ones(2, 2))


def test_options_are_validated() -> None:
    with pytest.raises(tw.RuleError):
        tw.load_into(SmallCNN(), {}, strict="sometimes")
    with pytest.raises(tw.RuleError) as info:
        tw.load_into(SmallCNN(), {"a.w": torch.zeros(1)}, rename={"(": "x"})
    assert info.value.code == "bad-rename"

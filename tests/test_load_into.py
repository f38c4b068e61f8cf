"""End to end: real models, real checkpoints, compared bit for bit with a hand-written correct load."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import safetensors.torch as safetensors_torch
import torch

import torchweights as tw


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
    params = dict(dst.named_parameters())
    assert not any(p.is_meta for p in params.values())
    assert dst.lm_head.weight is dst.embed.weight
    assert all(isinstance(p, torch.nn.Parameter) and p.requires_grad for p in params.values())
    for name, tensor in src.state_dict().items():
        assert torch.equal(dst.state_dict()[name], tensor), name
    # The non-persistent buffer is in no checkpoint: it stays on meta, and the report says so (never "OK").
    assert dst.rope_cache.is_meta
    assert report.applied and not report.ok and report.left_on_meta == ("rope_cache",)
    assert report.headline().startswith("INCOMPLETE: loaded ")
    assert "persistent=False" in str(report)


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


# ------------------------------------------------------------------------------------------------ issue 11: honesty


class Block(torch.nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(c)
        self.conv2 = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(c)


class ResNetish(torch.nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3)
        self.bn = torch.nn.BatchNorm2d(8)
        self.layer1 = torch.nn.Sequential(Block(8), Block(8))
        self.head = torch.nn.Linear(8, classes)


def _meta_resnet() -> ResNetish:
    with torch.device("meta"):
        return ResNetish()


def _meta_names(model: torch.nn.Module) -> list[str]:
    return [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]


@pytest.fixture
def resnet_file(tmp_path: Path) -> tuple[ResNetish, Path]:
    src = _trained(ResNetish())
    path = tmp_path / "resnet.pt"
    torch.save(src.state_dict(), path)
    return src, path


def test_meta_model_with_skip_is_refused_under_strict(resnet_file: tuple[ResNetish, Path]) -> None:
    _, path = resnet_file
    dst = _meta_resnet()
    before = dict(dst.named_parameters())
    with pytest.raises(tw.LoadError) as info:
        tw.load_into(dst, path, skip=["head.*"])
    assert info.value.code == "left-on-meta"
    assert "would stay on the meta device" in info.value.message and "head.weight" in info.value.message
    assert "init_missing=True" in info.value.message
    assert dict(dst.named_parameters()) == before  # not touched: every parameter is the same meta tensor
    assert len(_meta_names(dst)) == 33
    # a dry run says the same without raising
    report = tw.load_into(dst, path, skip=["head.*"], dry_run=True)
    assert not report.ok and report.left_on_meta == ("head.weight", "head.bias")
    assert report.headline().startswith("FAILED: 2 would stay on the meta device (strict=True)")


def test_meta_model_left_partly_on_meta_is_never_ok(
    resnet_file: tuple[ResNetish, Path], caplog: pytest.LogCaptureFixture
) -> None:
    src, path = resnet_file
    dst = _meta_resnet()
    with caplog.at_level("WARNING", logger="torchweights"):
        report = tw.load_into(dst, path, skip=["head.*"], strict=False)
    assert report.applied and not report.ok
    assert _meta_names(dst) == ["head.weight", "head.bias"] == list(report.left_on_meta)
    text = str(report)
    assert "result     INCOMPLETE: loaded 31 of 33; 2 left on the meta device (skipped)" in text
    data = report.to_dict()
    assert data["ok"] is False and data["left_on_meta"] == ["head.weight", "head.bias"]
    assert data["result"].startswith("INCOMPLETE")
    (record,) = caplog.records
    assert record.name == "torchweights" and record.levelname == "WARNING"
    assert "INCOMPLETE" in record.getMessage() and "head.weight" in record.getMessage()
    assert "\n" not in record.getMessage()
    # keys missing from the file under strict=False: the same
    state = {k: v for k, v in src.state_dict().items() if not k.startswith("head.")}
    dst = _meta_resnet()
    report = tw.load_into(dst, state, strict=False)
    assert not report.ok and report.left_on_meta == ("head.weight", "head.bias")


def test_init_missing_initialises_with_the_modules_reset_parameters(resnet_file: tuple[ResNetish, Path]) -> None:
    src, path = resnet_file
    dst = _meta_resnet()
    torch.manual_seed(123)
    report = tw.load_into(dst, path, skip=["head.*"], init_missing=True)
    torch.manual_seed(123)
    expected = torch.nn.Linear(8, 10)  # __init__ calls reset_parameters once, from the same RNG state
    assert report.ok and report.applied and not _meta_names(dst)
    assert torch.equal(dst.head.weight, expected.weight) and torch.equal(dst.head.bias, expected.bias)
    assert isinstance(dst.head.weight, torch.nn.Parameter) and dst.head.weight.requires_grad
    assert report.headline() == "OK: loaded 31 of 33; 2 initialised by init_missing (skipped)"
    assert "reset_parameters() of 'head'" in str(report)
    for name, tensor in src.state_dict().items():
        if not name.startswith("head."):
            assert torch.equal(dst.state_dict()[name], tensor), name


def test_init_missing_keeps_the_loaded_tensors_of_a_partly_missing_module(
    resnet_file: tuple[ResNetish, Path],
) -> None:
    src, _ = resnet_file
    # BatchNorm's running statistics missing; its weight and bias loaded: reset_parameters() resets all four,
    # the loaded ones keep the file's values.
    state = {k: v for k, v in src.state_dict().items() if not k.startswith("bn.running_")}
    dst = _meta_resnet()
    report = tw.load_into(dst, state, strict=False, init_missing=True)
    assert report.ok and not _meta_names(dst)
    assert torch.equal(dst.bn.weight, src.bn.weight) and torch.equal(dst.bn.bias, src.bn.bias)
    assert torch.equal(dst.bn.running_mean, torch.zeros(8)) and torch.equal(dst.bn.running_var, torch.ones(8))
    # a module half on meta, half with values: the tensor with values keeps them through reset_parameters()
    dst = _trained(ResNetish(), seed=5)
    dst.head.bias = torch.nn.Parameter(torch.empty(10, device="meta"))
    state = {k: v for k, v in src.state_dict().items() if k != "head.bias"}
    report = tw.load_into(dst, state, strict=False, init_missing=True)
    assert report.ok and not _meta_names(dst)
    assert torch.equal(dst.head.weight, src.head.weight)


def test_meta_batchnorm_counter_absent_from_old_files_is_set_to_zero(resnet_file: tuple[ResNetish, Path]) -> None:
    src, _ = resnet_file
    state = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    dst = _meta_resnet()
    report = tw.load_into(dst, state)
    assert report.ok and not _meta_names(dst)
    assert dst.bn.num_batches_tracked.item() == 0 and dst.bn.num_batches_tracked.dtype == torch.int64


class NoReset(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(4))


def test_a_module_without_reset_parameters_stays_on_meta_and_says_so() -> None:
    with torch.device("meta"):
        dst = torch.nn.Sequential(torch.nn.Linear(4, 4), NoReset())
    state = {"0.weight": torch.randn(4, 4), "0.bias": torch.randn(4)}
    with pytest.raises(tw.LoadError) as info:
        tw.load_into(dst, state, strict="model", init_missing=True)
    assert "'1' has no reset_parameters()" in " ".join(info.value.message.split())
    report = tw.load_into(dst, state, strict=False, init_missing=True)
    assert not report.ok and report.left_on_meta == ("1.scale",) and _meta_names(dst) == ["1.scale"]


def test_missing_keys_on_a_real_model_are_left_as_initialised_not_silently_ok(
    resnet_file: tuple[ResNetish, Path], caplog: pytest.LogCaptureFixture
) -> None:
    src, _ = resnet_file
    state = {k: v for k, v in src.state_dict().items() if not k.startswith("head.")}
    dst = ResNetish()
    with caplog.at_level("WARNING", logger="torchweights"):
        report = tw.load_into(dst, state, strict=False)
    assert report.ok
    assert report.headline() == "OK (strict=False): loaded 31 of 33; 2 left as initialised (missing)"
    (record,) = caplog.records
    assert "missing: head.weight, head.bias" in record.getMessage()
    caplog.clear()
    with caplog.at_level("WARNING", logger="torchweights"):
        report = tw.load_into(ResNetish(), src.state_dict())
    assert report.headline() == "OK: loaded 33 of 33" and report.clean and not caplog.records


def test_lossy_casts_are_logged_widening_ones_are_not(
    resnet_file: tuple[ResNetish, Path], caplog: pytest.LogCaptureFixture
) -> None:
    src, _ = resnet_file
    half = {k: v.half() if v.is_floating_point() else v for k, v in src.state_dict().items()}
    with caplog.at_level("WARNING", logger="torchweights"):
        tw.load_into(ResNetish(), half)
    assert not caplog.records
    with caplog.at_level("WARNING", logger="torchweights"):
        tw.load_into(ResNetish().bfloat16(), src.state_dict())
    (record,) = caplog.records
    assert "cast with precision loss: 28 float32 -> bfloat16" in record.getMessage()


def test_a_rename_in_the_model_names_and_the_suggested_rename(resnet_file: tuple[ResNetish, Path]) -> None:
    src, _ = resnet_file
    state = {"module." + k.replace("head.", "fc."): v for k, v in src.state_dict().items()}
    with pytest.raises(tw.LoadError) as info:
        tw.load_into(ResNetish(), state)
    message = info.value.message
    assert 'tw.load_into(..., rename={"^fc\\\\.": "head."})' in message and "skip=" not in message
    dst = ResNetish()
    report = tw.load_into(dst, state, rename={r"^fc\.": "head."})  # written without 'module.'
    assert report.ok and report.headline() == "OK: loaded 33 of 33"
    _same(dst, src.state_dict())
    with pytest.raises(tw.LoadError) as info:
        tw.load_into(ResNetish(), state, rename={r"^classifier\.": "head."})
    assert "rename '^classifier\\.' -> 'head.' matched 0 keys" in info.value.message


class TrialCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(16)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(32)
        self.fc = torch.nn.Linear(32, 10)


class TrialLM(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(100, 32)
        self.ln1 = torch.nn.LayerNorm(32)
        self.attn = torch.nn.MultiheadAttention(32, 4, batch_first=True)
        self.ln2 = torch.nn.LayerNorm(32)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.GELU(), torch.nn.Linear(128, 32))
        self.lnf = torch.nn.LayerNorm(32)


def test_an_unrelated_checkpoint_loads_nothing(tmp_path: Path) -> None:
    # A CNN's state dict into a language model: its BatchNorm 'bn2' must not load into the LayerNorm 'ln1' (same
    # shapes) by a prefix swap; like torch, nothing loads, and the report says nothing matches.
    path = tmp_path / "cnn.pt"
    torch.save(TrialCNN().state_dict(), path)
    lm = TrialLM()
    before = copy.deepcopy(lm.state_dict())
    report = tw.load_into(lm, path, strict=False)
    assert report.plan.prefix.evidence == "no prefix change" and report.plan.suggestion is None
    assert report.headline().startswith("NOTHING LOADED (strict=False): loaded 0 of ")
    _same(lm, before)
    with pytest.raises(tw.LoadError) as info:
        tw.load_into(TrialLM(), path)
    assert "rename=" not in info.value.message and "prefix=" not in info.value.message


def test_ambiguous_pairs_get_no_rename() -> None:
    model = torch.nn.ModuleDict({"a": torch.nn.Linear(4, 4), "b": torch.nn.Linear(4, 4), "c": torch.nn.Linear(2, 2)})
    state = {f"{n}.{leaf}": t for n in ("x", "y") for leaf, t in torch.nn.Linear(4, 4).state_dict().items()}
    state |= {f"c.{k}": v for k, v in model["c"].state_dict().items()}
    with pytest.raises(tw.LoadError) as info:
        tw.load_into(model, state, prefix=None)  # (prefix inference would pair 'x.' with 'a.' on its own)
    assert "rename=" not in info.value.message
    # one pair only: the rename is suggested, and it loads
    del model["b"]
    state = {k: v for k, v in state.items() if not k.startswith("y.")}
    with pytest.raises(tw.LoadError) as info:
        tw.load_into(model, state, prefix=None)
    assert 'rename={"^x\\\\.": "a."}' in info.value.message
    assert tw.load_into(model, state, prefix=None, rename={"^x\\.": "a."}).ok


class Hooked(torch.nn.Module):
    def __init__(self, rows: int) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(rows, 4)
        self.out = torch.nn.Linear(4, 2)


@pytest.mark.parametrize("hook", ["pre", "private_pre", "post"])
def test_hooked_modules_get_shape_checks_before_anything_changes(hook: str) -> None:
    src = _trained(Hooked(131))
    dst = Hooked(130)
    calls: list[str] = []
    if hook == "pre":
        dst.emb.register_load_state_dict_pre_hook(lambda *a, **k: calls.append("pre"))
    elif hook == "private_pre":
        dst.emb._register_load_state_dict_pre_hook(lambda *a, **k: calls.append("pre"))
    else:
        dst.emb.register_load_state_dict_post_hook(lambda *a, **k: calls.append("post"))
    before = copy.deepcopy(dst.state_dict())
    report = tw.load_into(dst, src.state_dict(), dry_run=True)
    assert not report.ok and [a.target for a in report.problems] == ["emb.weight"]
    with pytest.raises(tw.LoadError) as info:
        tw.load_into(dst, src.state_dict())
    assert info.value.code == "shape-mismatch" and "(131, 4)" in info.value.message
    _same(dst, before)
    assert not calls
    # a fitting file goes through the hooks
    good = _trained(Hooked(130), seed=3)
    assert tw.load_into(dst, good.state_dict()).ok and calls
    _same(dst, good.state_dict())


def test_a_custom_loader_converts_only_what_it_accepts() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), Transposed())
    before = copy.deepcopy(model.state_dict())
    state = {"0.weight": torch.ones(2, 2), "0.bias": torch.zeros(2), "1.weight": torch.zeros(5, 4)}
    with pytest.raises(tw.LoadError) as info:
        tw.load_into(model, state)
    assert info.value.code == "shape-mismatch" and "1.weight" in info.value.message
    _same(model, before)
    # on a meta model the module's own loading code still runs, and its result is assigned
    with torch.device("meta"):
        meta = torch.nn.Sequential(torch.nn.Linear(2, 2), Transposed())
    stored = torch.arange(15.0).reshape(5, 3)
    report = tw.load_into(meta, {"0.weight": torch.ones(2, 2), "0.bias": torch.zeros(2), "1.weight": stored})
    assert report.ok and not _meta_names(meta) and torch.equal(meta[1].weight, stored.t())


class Headed(torch.nn.Module):
    """The tester's model: a backbone, a BatchNorm and a head whose attribute name varies."""

    def __init__(self, head: str = "head") -> None:
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 16))
        self.bn = torch.nn.BatchNorm1d(16)
        setattr(self, head, torch.nn.Linear(16, 10))


@pytest.mark.parametrize("wrapper", ["", "module."])
def test_a_renamed_head_is_never_loaded_silently(tmp_path: Path, wrapper: str) -> None:
    src = _trained(Headed())
    path = tmp_path / "sd.pt"
    torch.save({wrapper + k: v for k, v in src.state_dict().items()}, path)
    dst = Headed("classifier")
    before = dst.classifier.weight.detach().clone()
    with pytest.raises(tw.LoadError) as info:
        tw.load_into(dst, path)
    message = info.value.message
    assert 'rename={"^head\\\\.": "classifier."}' in message and "stripped 'head.'" not in message
    assert torch.equal(dst.classifier.weight, before)
    # skip written in the checkpoint's names is honoured; the model's head stays as initialised
    report = tw.load_into(dst, path, skip=["head.*"], strict=False)
    assert [(u.pattern, u.matched) for u in report.plan.skips] == [("head.*", 2)]
    assert {a.key for a in report.plan.by_kind("skip")} == {wrapper + "head.weight", wrapper + "head.bias"}
    assert torch.equal(dst.classifier.weight, before)
    assert report.headline().startswith("OK (strict=False): loaded 11 of 13; 2 left as initialised (missing)")
    # the suggested rename loads the head where asked
    report = tw.load_into(dst, path, rename={r"^head\.": "classifier."})
    assert report.ok and torch.equal(dst.classifier.weight, src.head.weight)


def test_a_skip_that_matches_nothing_is_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = _trained(Headed())
    with caplog.at_level("WARNING", logger="torchweights"):
        report = tw.load_into(Headed(), src.state_dict(), skip=["heads.*"])
    assert report.ok and not report.clean
    assert "skip 'heads.*' matched 0 keys" in str(report)
    (record,) = caplog.records
    assert "skip 'heads.*' matched 0 keys" in record.getMessage()
    with pytest.raises(tw.LoadError) as info:
        tw.load_into(Headed("classifier"), src.state_dict(), skip=["heads.*"])
    message = info.value.message
    assert "skip 'heads.*' matched 0 keys: check its pattern." in message
    with pytest.raises(tw.LoadError) as info:
        tw.load_into(Headed("classifier"), src.state_dict(), rename={r"^heads\.": "classifier."}, strict="model")
    message = info.value.message
    assert "rename '^heads\\.' -> 'classifier.' matched 0 keys" in message
    assert 'rename={"^head\\\\.": "classifier."}' in message and "heads" not in message.split("matched 0 keys")[1]


def test_a_batchnorm_absent_from_the_file_is_missing_counter_included() -> None:
    src = _trained(Headed())
    state = {k: v for k, v in src.state_dict().items() if not k.startswith("bn.")}
    report = tw.load_into(Headed(), state, strict=False)
    assert report.headline() == "OK (strict=False): loaded 8 of 13; 5 left as initialised (missing)"
    assert "old checkpoints" not in str(report) and "0.4.1" not in str(report)
    with torch.device("meta"):
        dst = Headed()
    report = tw.load_into(dst, state, strict=False, init_missing=True)
    assert report.ok and not _meta_names(dst) and dst.bn.num_batches_tracked.item() == 0
    # only the counter absent (a file saved before torch 0.4.1): kept at its default, as torch does
    old = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    report = tw.load_into(Headed(), old)
    assert report.headline() == "OK: loaded 12 of 13; 1 kept at its default (absent from old checkpoints)"


class Rotary(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)
        self.register_buffer("inv_freq", torch.arange(4.0), persistent=False)


@pytest.mark.parametrize("init_missing", [False, True])
def test_the_headline_names_what_stays_on_meta_and_why(init_missing: bool, caplog: pytest.LogCaptureFixture) -> None:
    state = Rotary().state_dict()
    with torch.device("meta"):
        dst = Rotary()
    with caplog.at_level("WARNING", logger="torchweights"):
        report = tw.load_into(dst, state, init_missing=init_missing)
    why = "not persistent: no checkpoint fills it"
    if init_missing:
        why += ", init_missing=True cannot compute it"
    assert report.headline() == (
        f"INCOMPLETE: loaded 2 of 2; 1 buffer left on the meta device ({why}); the model cannot run until the "
        "tensor on the meta device has values"
    )
    (record,) = caplog.records
    assert f"1 buffer left on the meta device ({why})" in record.getMessage() and "inv_freq" in record.getMessage()
    dry = tw.load_into(dst, state, dry_run=True)
    assert "1 buffer would stay on the meta device (not persistent" in dry.headline()
    # a module init_missing cannot initialise says so too
    with torch.device("meta"):
        seq = torch.nn.Sequential(torch.nn.Linear(4, 4), NoReset())
    part = {"0.weight": torch.randn(4, 4), "0.bias": torch.randn(4)}
    report = tw.load_into(seq, part, strict=False, init_missing=init_missing)
    cause = "missing; init_missing=True cannot help: no reset_parameters()" if init_missing else "missing"
    assert f"1 left on the meta device ({cause})" in report.headline()


@pytest.mark.parametrize("source", ["torch", "safetensors", "cast", "mapping"])
def test_in_place_load_bumps_autograd_version_like_torch(tmp_path: Path, source: str) -> None:
    """A graph that saved a weight must not run backward() with the values loaded into it afterwards: torch's
    load_state_dict raises there (its copy_ bumps the version counter), and so must an in-place load that writes
    through raw pointers."""
    torch.manual_seed(0)
    state = {k: v.to(torch.bfloat16) if source == "cast" else v for k, v in torch.nn.Linear(4, 3).state_dict().items()}
    path = tmp_path / "w.safetensors" if source == "safetensors" else tmp_path / "w.pt"
    if source == "safetensors":
        safetensors_torch.save_file(state, str(path))
    else:
        torch.save(state, path)

    def graph(model: torch.nn.Linear) -> torch.Tensor:
        x = torch.randn(2, 4, requires_grad=True)
        return (model(x) * model.weight.sum()).pow(2).sum()  # saves the weight for backward

    reference = torch.nn.Linear(4, 3)
    loss = graph(reference)
    reference.load_state_dict({k: v.float() for k, v in state.items()})
    with pytest.raises(RuntimeError, match="modified by an inplace operation") as torch_error:
        loss.backward()

    model = torch.nn.Linear(4, 3)
    weight = model.weight
    version = weight._version
    loss = graph(model)
    tw.load_into(model, state if source == "mapping" else path, strict=True)
    assert model.weight is weight  # loaded in place (a cast goes through the scratch path, still in place)
    assert weight._version > version
    assert torch.equal(model.weight, state["weight"].float())
    with pytest.raises(RuntimeError, match="modified by an inplace operation") as our_error:
        loss.backward()
    assert type(our_error.value) is type(torch_error.value)


class _Stateful(torch.nn.Module):
    """A module with extra state (as Transformer Engine's FP8 modules have): a dict or a tensor."""

    def __init__(self, tensor_state: bool) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 3)
        self.tensor_state = tensor_state
        self.extra: object = torch.zeros(4) if tensor_state else {"step": 0, "scale": 1.0}

    def get_extra_state(self) -> object:
        return self.extra

    def set_extra_state(self, state: object) -> None:
        self.extra = state


class _WithExtra(torch.nn.Module):
    def __init__(self, tensor_state: bool) -> None:
        super().__init__()
        self.block = _Stateful(tensor_state)
        self.head = torch.nn.Linear(3, 2)


def _trained_with_extra(tensor_state: bool) -> _WithExtra:
    torch.manual_seed(3)
    model = _WithExtra(tensor_state)
    model.block.extra = (
        torch.randn(4) if tensor_state else {"step": 1234, "scale": 0.5, "history": [1.5, 2.5], "name": "fp8"}
    )
    return model


def _same_extra(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    return a == b


@pytest.mark.parametrize("tensor_state", [False, True])
@pytest.mark.parametrize("layout", ["plain", "wrapped", "mapping"])
def test_extra_state_is_restored_like_torch(tmp_path: Path, tensor_state: bool, layout: str) -> None:
    """torch's loader calls set_extra_state with the value under ``prefix + "_extra_state"``; so must load_into,
    under strict=True, whether the value is a dict (kept in Checkpoint.extras) or a tensor (a record), also
    behind a container and a DataParallel prefix, and from an in-memory state dict."""
    trained = _trained_with_extra(tensor_state)
    state = trained.state_dict()
    assert "block._extra_state" in state
    reference = _WithExtra(tensor_state)
    reference.load_state_dict(state, strict=True)

    source: object = state
    if layout != "mapping":
        path = tmp_path / "ckpt.pt"
        saved: dict[str, object] = dict(state)
        if layout == "wrapped":
            saved = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}
        torch.save(saved, path)
        source = path
    model = _WithExtra(tensor_state)
    report = tw.load_into(model, source, strict=True)  # type: ignore[arg-type]
    assert _same_extra(model.block.extra, reference.block.extra)
    assert _same_extra(model.block.extra, trained.block.extra)
    for name, tensor in reference.state_dict().items():
        if isinstance(tensor, torch.Tensor):
            assert torch.equal(model.state_dict()[name], tensor), name
    extra = report.plan.by_kind("extra")
    assert [a.target for a in extra] == ["block._extra_state"]
    assert not report.plan.by_kind("unexpected") and not report.plan.by_kind("missing")
    text = str(report)
    assert "extra state restored (1)" in text and "OK: loaded 5 of 5" in text
    assert report.to_dict()["totals"]["extra"] == 1


def test_missing_extra_state_fails_strict_like_torch(tmp_path: Path) -> None:
    """A module with set_extra_state and no ``_extra_state`` entry: torch's strict load reports the key missing;
    strict=False loads the rest and leaves the state as it was."""
    trained = _trained_with_extra(False)
    state = {k: v for k, v in trained.state_dict().items() if not k.endswith("_extra_state")}
    with pytest.raises(RuntimeError, match="block._extra_state"):
        _WithExtra(False).load_state_dict(state, strict=True)
    path = tmp_path / "ckpt.pt"
    torch.save(state, path)
    model = _WithExtra(False)
    with pytest.raises(tw.LoadError) as info:
        tw.load_into(model, path, strict=True)
    assert "block._extra_state" in str(info.value)
    assert model.block.extra == {"step": 0, "scale": 1.0}
    report = tw.load_into(model, path, strict=False)
    assert [a.target for a in report.plan.by_kind("missing")] == ["block._extra_state"]
    assert model.block.extra == {"step": 0, "scale": 1.0}
    assert torch.equal(model.head.weight, trained.head.weight)


@pytest.mark.parametrize("tensor_state", [False, True])
def test_extra_state_can_be_skipped(tmp_path: Path, tensor_state: bool) -> None:
    trained = _trained_with_extra(tensor_state)
    path = tmp_path / "ckpt.pt"
    torch.save(trained.state_dict(), path)
    model = _WithExtra(tensor_state)
    before = model.block.extra
    report = tw.load_into(model, path, strict=True, skip=["block._extra_state"])
    assert model.block.extra is before
    assert not report.plan.by_kind("extra") and not report.plan.by_kind("missing")
    assert [a.key for a in report.plan.by_kind("skip")] == ["block._extra_state"]
    assert torch.equal(model.block.lin.weight, trained.block.lin.weight)


def test_a_load_of_nothing_never_reads_ok(tmp_path: Path) -> None:
    """strict=False allows a checkpoint that fits nothing, but the result line must not call it OK."""
    source = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    torch.save(source.state_dict(), tmp_path / "cnn.pt")
    target = torch.nn.ModuleDict({"emb": torch.nn.Embedding(10, 4), "norm": torch.nn.LayerNorm(4)})
    report = tw.load_into(target, tmp_path / "cnn.pt", strict=False)
    assert report.ok and not report.clean and not report.loaded
    assert report.headline().startswith("NOTHING LOADED (strict=False): loaded 0 of 3;")
    assert "NOTHING LOADED" in report.log_line()

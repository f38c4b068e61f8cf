"""Adapters through ``load_into`` (the transforms' own values are in tests/test_adapt_*.py): planned only when
asked for, each adapted key a line of the report, named in the error's fix otherwise, the model untouched on every
raise; with ``align="auto"`` on refactored code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import torchweights as tw
from _refactors import NewGPT, NewResNet, OldGPT, OldResNet, randomised, snapshot, unchanged
from torchweights.errors import LoadError, RuleError


@pytest.mark.parametrize("channels", [1, 4])
def test_input_conv_with_alignment_from_a_file(tmp_path: Path, channels: int) -> None:
    old = randomised(OldResNet())
    path = tmp_path / "rgb.safetensors"
    save_file({k: v.contiguous() for k, v in old.state_dict().items()}, str(path))
    new = randomised(NewResNet(in_ch=channels), seed=7)
    before = snapshot(new)
    with pytest.raises(LoadError) as error:
        tw.load_into(new, path, align="auto")
    assert error.value.code == "shape-mismatch"
    assert "input_conv" in str(error.value)  # the fix names the adapter
    assert unchanged(new, before)
    report = tw.load_into(new, path, align="auto", adapt=["input_conv"])
    assert report.ok
    (adapted,) = [a for a in report.loaded if a.adapt is not None]
    assert adapted.target == "stem.conv.weight" and adapted.adapt.adapter == "input_conv"  # type: ignore[union-attr]
    assert adapted.adapt.sources == ("conv1.weight",)  # type: ignore[union-attr]
    w = old.conv1.weight.detach()
    if channels == 1:
        expected = w.sum(dim=1, keepdim=True)
    else:  # repeat the RGB channels, keep the first 4, scale by 3/4
        expected = torch.cat([w, w[:, :1]], dim=1) * (3 / 4)
    assert torch.allclose(new.stem.conv.weight, expected, atol=1e-6)
    assert torch.equal(new.stages[3].blocks[1].conv_b.weight, old.layer4[1].conv2.weight)
    assert "input_conv" in str(report)


def test_input_conv_only_on_the_first_kernel() -> None:
    """A changed channel count inside the network is an architecture change: no adapter loads it."""
    old = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3))
    new = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(4, 8, 3))
    with pytest.raises(LoadError) as error:
        tw.load_into(new, old.state_dict(), adapt="all")
    assert error.value.code == "shape-mismatch"
    assert "input_conv" not in str(error.value)


class _Split(nn.Module):
    def __init__(self, d: int = 8, kv: int = 8) -> None:
        super().__init__()
        self.attn = nn.Module()
        self.attn.q = nn.Linear(d, d)
        self.attn.k = nn.Linear(d, kv)
        self.attn.v = nn.Linear(d, kv)
        self.attn.proj = nn.Linear(d, d)


class _Fused(nn.Module):
    def __init__(self, d: int = 8, kv: int = 8) -> None:
        super().__init__()
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(d, d + 2 * kv)
        self.attn.proj = nn.Linear(d, d)


@pytest.mark.parametrize("kv", [8, 4])  # 4: grouped-query attention (k and v narrower than q)
def test_qkv_split_and_fuse(tmp_path: Path, kv: int) -> None:
    fused = randomised(_Fused(kv=kv))
    path = tmp_path / "fused.pt"
    torch.save(fused.state_dict(), path)
    split = randomised(_Split(kv=kv), seed=3)
    before = snapshot(split)
    with pytest.raises(LoadError) as error:
        tw.load_into(split, path)
    assert "qkv" in str(error.value) and unchanged(split, before)
    report = tw.load_into(split, path, adapt=["qkv"])
    assert report.ok
    w, b = fused.attn.qkv.weight.detach(), fused.attn.qkv.bias.detach()
    assert torch.equal(split.attn.q.weight, w[:8]) and torch.equal(split.attn.k.weight, w[8 : 8 + kv])
    assert torch.equal(split.attn.v.weight, w[8 + kv :]) and torch.equal(split.attn.v.bias, b[8 + kv :])
    assert split.attn.q.weight.data_ptr() != split.attn.k.weight.data_ptr()
    assert {a.target for a in report.loaded if a.adapt is not None} == {
        f"attn.{r}.{leaf}" for r in "qkv" for leaf in ("weight", "bias")
    }
    assert not report.plan.by_kind("unexpected")  # the fused tensors are used, not left over
    # and back: three projections into one
    back = _Fused(kv=kv)
    assert tw.load_into(back, split.state_dict(), adapt=["qkv"]).ok
    assert torch.equal(back.attn.qkv.weight, w) and torch.equal(back.attn.qkv.bias, b)


class _GPTSplit(NewGPT):
    """NewGPT with the fused qkv split into q, k, v."""

    def __init__(self, n: int = 3, d: int = 16) -> None:
        super().__init__(n=n, d=d)
        for layer in self.layers:
            del layer.self_attention.qkv
            for name in ("q", "k", "v"):
                setattr(layer.self_attention, name, nn.Linear(d, d))


def test_qkv_split_inside_an_aligned_model() -> None:
    """h.{i}.attn.c_attn (fused) -> layers.{i}.self_attention.{q,k,v}: alignment maps the blocks, the adapter
    splits the projection, and what it took out of the way (c_proj -> out) aligns in a second pass."""
    old = randomised(OldGPT(n=3))
    new = _GPTSplit(n=3)
    report = tw.load_into(new, old.state_dict(), align="auto", adapt=["qkv"])
    assert report.ok, report
    for i in range(3):
        w = old.h[i].attn.c_attn.weight.detach()
        attention = new.layers[i].self_attention
        assert torch.equal(attention.q.weight, w[:16]) and torch.equal(attention.v.weight, w[32:])
        assert torch.equal(attention.out.weight, old.h[i].attn.c_proj.weight)
        assert torch.equal(new.layers[i].ffn.fc2.bias, old.h[i].mlp.c_proj.bias)


def test_pos_embed_resampled(tmp_path: Path) -> None:
    """A ViT's position embeddings from a 4x4 grid to 6x6, the class token kept."""
    d = 8
    old = nn.Module()
    old.pos_embed = nn.Parameter(torch.randn(1, 1 + 16, d))
    new = nn.Module()
    new.pos_embed = nn.Parameter(torch.zeros(1, 1 + 36, d))
    with pytest.raises(LoadError) as error:
        tw.load_into(new, old.state_dict())
    assert "pos_embed" in str(error.value)
    report = tw.load_into(new, old.state_dict(), adapt=["pos_embed"])
    assert report.ok
    grid = old.pos_embed.detach()[:, 1:].reshape(1, 4, 4, d).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(grid, size=(6, 6), mode="bicubic", antialias=True, align_corners=False)
    expected = expected.permute(0, 2, 3, 1).reshape(1, 36, d)
    assert torch.equal(new.pos_embed[:, :1], old.pos_embed[:, :1])
    assert torch.allclose(new.pos_embed[:, 1:], expected, atol=1e-6)


def test_unknown_adapter_is_a_rule_error() -> None:
    with pytest.raises(RuleError) as error:
        tw.load_into(nn.Linear(2, 2), nn.Linear(2, 2).state_dict(), adapt=["input_convv"])
    assert error.value.code == "bad-adapt" and "input_conv" in str(error.value)


def test_meta_model_gets_adapted_tensors() -> None:
    old = randomised(OldResNet())
    with torch.device("meta"):
        new = NewResNet(in_ch=1)
    report = tw.load_into(new, old.state_dict(), align="auto", adapt=["input_conv"])
    assert report.ok and not report.left_on_meta
    assert torch.allclose(new.stem.conv.weight, old.conv1.weight.sum(1, keepdim=True), atol=1e-6)
    assert isinstance(new.stem.conv.weight, nn.Parameter) and new.stem.conv.weight.requires_grad


def test_readme_adapter_table_is_the_registry() -> None:
    """README's adapter table has one row per registered adapter, with its summary, in table order."""
    from torchweights.adapt.registry import ADAPTERS

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `") and "` | " in line]
    table = [f"| `{a.name}` | {a.summary} |" for a in ADAPTERS.values()]
    start = rows.index(table[0])
    assert rows[start : start + len(table)] == table


def test_pos_embed_leaves_a_text_models_position_table_alone() -> None:
    """BERT's embeddings.position_embeddings sits beside word_embeddings: a 1-D sequence of positions, never
    resampled as an image grid, even with adapt="all"; a ViT's table beside a cls_token is."""
    old = nn.Module()
    old.embeddings = nn.Module()
    old.embeddings.word_embeddings = nn.Embedding(30, 8)
    old.embeddings.position_embeddings = nn.Embedding(197, 8)
    new = nn.Module()
    new.embeddings = nn.Module()
    new.embeddings.word_embeddings = nn.Embedding(30, 8)
    new.embeddings.position_embeddings = nn.Embedding(577, 8)
    with pytest.raises(LoadError) as error:
        tw.load_into(new, old.state_dict(), adapt="all")
    assert error.value.code == "shape-mismatch" and "pos_embed" not in str(error.value)
    vit_old = nn.Module()
    vit_old.cls_token = nn.Parameter(torch.randn(1, 1, 8))
    vit_old.pos_embed = nn.Parameter(torch.randn(1, 197, 8))
    vit_new = nn.Module()
    vit_new.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
    vit_new.pos_embed = nn.Parameter(torch.zeros(1, 577, 8))
    assert tw.load_into(vit_new, vit_old.state_dict(), adapt="all").ok


class _TimmViT(nn.Module):
    def __init__(self, depth: int = 3, d: int = 16) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, d, 4, 4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 17, d))
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            block = nn.Module()
            block.norm1 = nn.LayerNorm(d)
            block.attn = nn.Module()
            block.attn.qkv = nn.Linear(d, 3 * d)
            block.attn.proj = nn.Linear(d, d)
            block.norm2 = nn.LayerNorm(d)
            block.mlp = nn.Module()
            block.mlp.fc1 = nn.Linear(d, 4 * d)
            block.mlp.fc2 = nn.Linear(4 * d, d)
            self.blocks.append(block)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 10)


class _HFViT(nn.Module):
    def __init__(self, depth: int = 3, d: int = 16, grid: int = 4) -> None:
        super().__init__()
        self.embeddings = nn.Module()
        self.embeddings.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.embeddings.position_embeddings = nn.Parameter(torch.zeros(1, 1 + grid * grid, d))
        self.embeddings.patch_embeddings = nn.Module()
        self.embeddings.patch_embeddings.projection = nn.Conv2d(3, d, 4, 4)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList()
        for _ in range(depth):
            layer = nn.Module()
            layer.attention = nn.Module()
            layer.attention.attention = nn.Module()
            for name in ("query", "key", "value"):
                setattr(layer.attention.attention, name, nn.Linear(d, d))
            layer.attention.output = nn.Module()
            layer.attention.output.dense = nn.Linear(d, d)
            layer.intermediate = nn.Module()
            layer.intermediate.dense = nn.Linear(d, 4 * d)
            layer.output = nn.Module()
            layer.output.dense = nn.Linear(4 * d, d)
            layer.layernorm_before = nn.LayerNorm(d)
            layer.layernorm_after = nn.LayerNorm(d)
            self.encoder.layer.append(layer)
        self.layernorm = nn.LayerNorm(d)
        self.classifier = nn.Linear(d, 10)


def test_timm_vit_into_hf_vit_names_with_qkv_split_and_a_larger_grid() -> None:
    """timm's ViT checkpoint into HF's ViT naming at another resolution: alignment places the blocks, the qkv
    adapter splits attn.qkv into attention.attention.query/key/value (found through the block's counterpart), the
    output projection pairs once q/k/v are out of the way, pos_embed resamples 4x4 -> 6x6. The two norms per block
    only declaration order could tell apart: the user's rename settles them."""
    old = randomised(_TimmViT())
    new = _HFViT(grid=6)
    rename = {r"\.norm1\.": ".layernorm_before.", r"\.norm2\.": ".layernorm_after."}
    with pytest.raises(LoadError) as error:
        tw.load_into(new, old.state_dict(), align="auto", adapt=["qkv", "pos_embed"])
    assert error.value.code == "ambiguous-alignment"
    report = tw.load_into(new, old.state_dict(), align="auto", adapt=["qkv", "pos_embed"], rename=rename)
    assert report.ok, report
    for i in range(3):
        b, layer = old.blocks[i], new.encoder.layer[i]
        w, bias = b.attn.qkv.weight.detach(), b.attn.qkv.bias.detach()
        assert torch.equal(layer.attention.attention.query.weight, w[:16])
        assert torch.equal(layer.attention.attention.key.weight, w[16:32])
        assert torch.equal(layer.attention.attention.value.bias, bias[32:])
        assert torch.equal(layer.attention.output.dense.weight, b.attn.proj.weight)
        assert torch.equal(layer.intermediate.dense.weight, b.mlp.fc1.weight)
        assert torch.equal(layer.output.dense.bias, b.mlp.fc2.bias)
        assert torch.equal(layer.layernorm_after.weight, b.norm2.weight)
    assert torch.equal(new.embeddings.patch_embeddings.projection.weight, old.patch_embed.proj.weight)
    assert torch.equal(new.embeddings.cls_token, old.cls_token)
    assert torch.equal(new.embeddings.position_embeddings[:, :1], old.pos_embed[:, :1])
    assert torch.equal(new.classifier.weight, old.head.weight) and torch.equal(new.layernorm.bias, old.norm.bias)


def test_a_fused_qkv_is_the_adapters_not_a_mismatched_q() -> None:
    """transformer.h.{i}.attn.qkv/proj into blocks.{i}.attn.q/k/v/o: the pass that pairs modules with shapes
    ignored runs only after group adapters, so the fused qkv is split (not paired with q as a shape mismatch) and
    proj then pairs with o; the report counts each checkpoint tensor once."""
    d = 8
    old = nn.Module()
    old.transformer = nn.Module()
    old.transformer.h = nn.ModuleList()
    for _ in range(2):
        block = nn.Module()
        block.attn = nn.Module()
        block.attn.qkv = nn.Linear(d, 3 * d)
        block.attn.proj = nn.Linear(d, d)
        block.mlp = nn.Module()
        block.mlp.fc = nn.Linear(d, 4 * d)
        block.mlp.out = nn.Linear(4 * d, d)
        old.transformer.h.append(block)
    randomised(old)
    new = nn.Module()
    new.blocks = nn.ModuleList()
    for _ in range(2):
        block = nn.Module()
        block.attn = nn.Module()
        for name in "qkvo":
            setattr(block.attn, name, nn.Linear(d, d))
        block.mlp = nn.Module()
        block.mlp.up = nn.Linear(d, 4 * d)
        block.mlp.down = nn.Linear(4 * d, d)
        new.blocks.append(block)
    report = tw.load_into(new, old.state_dict(), align="auto", adapt=["qkv"])
    assert report.ok and not report.plan.by_kind("mismatch")
    for i in range(2):
        w = old.transformer.h[i].attn.qkv.weight.detach()
        assert torch.equal(new.blocks[i].attn.k.weight, w[d : 2 * d])
        assert torch.equal(new.blocks[i].attn.o.weight, old.transformer.h[i].attn.proj.weight)
    assert f"{len(old.state_dict())} in the checkpoint" in str(report)

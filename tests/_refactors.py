"""Refactored model pairs for the alignment tests (``test_align.py``): the same network written twice with other
module names and nesting, as code bases get refactored. Each ``old`` / ``new`` pair has the same tensors in the same
order of computation; :func:`truth` says which old key each new key must load from, worked out independently of
the aligner (by building both models from the same seed and matching values).
"""

from __future__ import annotations

import torch
from torch import nn


class _Basic(nn.Module):
    """A ResNet basic block whose four layers and shortcut are named by the caller."""

    def __init__(self, cin: int, cout: int, stride: int, names: tuple[str, str, str, str], short: str) -> None:
        super().__init__()
        a, b, c, d = names
        setattr(self, a, nn.Conv2d(cin, cout, 3, stride, 1, bias=False))
        setattr(self, b, nn.BatchNorm2d(cout))
        setattr(self, c, nn.Conv2d(cout, cout, 3, 1, 1, bias=False))
        setattr(self, d, nn.BatchNorm2d(cout))
        if stride != 1 or cin != cout:
            if short == "downsample":
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            else:
                self.shortcut = nn.Module()
                self.shortcut.conv = nn.Conv2d(cin, cout, 1, stride, bias=False)
                self.shortcut.bn = nn.BatchNorm2d(cout)


WIDTHS = (8, 16, 32, 64)


class OldResNet(nn.Module):
    """torchvision-style names: conv1, bn1, layer1..4.{i}.conv1/bn1/conv2/bn2/downsample.{0,1}, fc."""

    def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2), classes: int = 10, in_ch: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, WIDTHS[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(WIDTHS[0])
        cin = WIDTHS[0]
        for i, (n, w) in enumerate(zip(layers, WIDTHS, strict=True)):
            blocks = []
            for j in range(n):
                blocks.append(_Basic(cin, w, 2 if j == 0 and i else 1, ("conv1", "bn1", "conv2", "bn2"), "downsample"))
                cin = w
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(WIDTHS[-1], classes)


class NewResNet(nn.Module):
    """The same network as stem.{conv,bn}, stages.{s}.blocks.{b}.conv_a/bn_a/conv_b/bn_b/shortcut.{conv,bn},
    head.fc."""

    def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2), classes: int = 10, in_ch: int = 3) -> None:
        super().__init__()
        self.stem = nn.Module()
        self.stem.conv = nn.Conv2d(in_ch, WIDTHS[0], 7, 2, 3, bias=False)
        self.stem.bn = nn.BatchNorm2d(WIDTHS[0])
        stages = []
        cin = WIDTHS[0]
        for i, (n, w) in enumerate(zip(layers, WIDTHS, strict=True)):
            stage = nn.Module()
            blocks = []
            for j in range(n):
                blocks.append(_Basic(cin, w, 2 if j == 0 and i else 1, ("conv_a", "bn_a", "conv_b", "bn_b"), "short"))
                cin = w
            stage.blocks = nn.ModuleList(blocks)
            stages.append(stage)
        self.stages = nn.ModuleList(stages)
        self.head = nn.Module()
        self.head.fc = nn.Linear(WIDTHS[-1], classes)


class OldGPT(nn.Module):
    """GPT-2-style names: wte, wpe, h.{i}.ln_1/attn.c_attn/attn.c_proj/ln_2/mlp.c_fc/mlp.c_proj, ln_f; with the old
    persistent attention-mask buffer ``h.{i}.attn.bias`` when ``mask``."""

    def __init__(self, n: int = 4, d: int = 16, vocab: int = 50, ctx: int = 12, mask: bool = False) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(ctx, d)
        self.h = nn.ModuleList()
        for _ in range(n):
            block = nn.Module()
            block.ln_1 = nn.LayerNorm(d)
            block.attn = nn.Module()
            block.attn.c_attn = nn.Linear(d, 3 * d)
            block.attn.c_proj = nn.Linear(d, d)
            if mask:
                block.attn.register_buffer("masked_bias", torch.tensor(-1e4))
                block.attn.register_buffer("bias", torch.tril(torch.ones(ctx, ctx)).view(1, 1, ctx, ctx))
            block.ln_2 = nn.LayerNorm(d)
            block.mlp = nn.Module()
            block.mlp.c_fc = nn.Linear(d, 4 * d)
            block.mlp.c_proj = nn.Linear(4 * d, d)
            self.h.append(block)
        self.ln_f = nn.LayerNorm(d)


class NewGPT(nn.Module):
    """The same network as embed, pos_embed, layers.{i}.norm1/self_attention.qkv/self_attention.out/norm2/ffn.fc1/
    ffn.fc2, norm; with a non-persistent causal mask buffer (not in its state dict)."""

    def __init__(self, n: int = 4, d: int = 16, vocab: int = 50, ctx: int = 12) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos_embed = nn.Embedding(ctx, d)
        self.layers = nn.ModuleList()
        for _ in range(n):
            block = nn.Module()
            block.norm1 = nn.LayerNorm(d)
            block.self_attention = nn.Module()
            block.self_attention.qkv = nn.Linear(d, 3 * d)
            block.self_attention.out = nn.Linear(d, d)
            block.self_attention.register_buffer("mask", torch.tril(torch.ones(ctx, ctx)), persistent=False)
            block.norm2 = nn.LayerNorm(d)
            block.ffn = nn.Module()
            block.ffn.fc1 = nn.Linear(d, 4 * d)
            block.ffn.fc2 = nn.Linear(4 * d, d)
            self.layers.append(block)
        self.norm = nn.LayerNorm(d)


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` with every float parameter and buffer set to distinct random values (so a wrong pairing shows)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
            elif tensor.dtype == torch.int64:
                tensor.copy_(torch.randint(0, 1000, tensor.shape, generator=generator))
    return model


def truth(old: nn.Module, new_keys: list[str], rename: dict[str, str]) -> dict[str, str]:
    """Which old key each new key loads from, from a hand-written table of module renames (applied to the new key's
    module path, longest first): the reference the aligner is checked against."""
    out = {}
    old_keys = set(old.state_dict())
    for key in new_keys:
        for new, old_name in sorted(rename.items(), key=lambda kv: -len(kv[0])):
            if key == new or key.startswith(new + "."):
                candidate = old_name + key[len(new) :]
                if candidate in old_keys:
                    out[key] = candidate
                break
    return out


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every tensor of ``model``'s state dict (to check later that nothing changed)."""
    return {k: v.clone() for k, v in model.state_dict().items()}


def unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    """Whether every tensor of ``model`` still equals its :func:`snapshot`."""
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

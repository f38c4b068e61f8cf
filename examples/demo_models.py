"""Models used by the demo (and importable by `torchweights check --model examples/demo_models.py:target`)."""

from __future__ import annotations

import torch


class TinyNet(torch.nn.Module):
    """A small image classifier: conv stem with BatchNorm, a stack of linear blocks, a classifier head."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.BatchNorm2d(16), torch.nn.ReLU())
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(16, 16) for _ in range(4))
        self.head = torch.nn.Linear(16, classes)


def pretrained() -> TinyNet:
    """The model that was trained (1000 ImageNet classes)."""
    return TinyNet(classes=1000)


def target() -> TinyNet:
    """The model we want to fine-tune (10 classes)."""
    return TinyNet(classes=10)


class RefactoredNet(torch.nn.Module):
    """TinyNet after a refactor: every module renamed and nested differently, and a grayscale (1-channel) input."""

    def __init__(self, classes: int = 1000, in_channels: int = 1) -> None:
        super().__init__()
        self.features = torch.nn.Module()
        self.features.conv = torch.nn.Conv2d(in_channels, 16, 3)
        self.features.norm = torch.nn.BatchNorm2d(16)
        self.layers = torch.nn.ModuleList(torch.nn.Module() for _ in range(4))
        for layer in self.layers:
            layer.linear = torch.nn.Linear(16, 16)
        self.classifier = torch.nn.Linear(16, classes)


def refactored() -> RefactoredNet:
    """The refactored model, for grayscale images."""
    return RefactoredNet()

"""The small model the cookbook recipes load into (docs/snippets/mynets.py)."""

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32))
        self.norm = nn.BatchNorm1d(32)
        self.head = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.backbone(x)))


class RefactoredNet(nn.Module):
    """Net after a refactor: the same layers, every module renamed (backbone.0 -> layers.0.proj, norm -> bn, head ->
    classifier)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Module() for _ in range(2))
        self.layers[0].proj = nn.Linear(16, 32)
        self.layers[1].proj = nn.Linear(32, 32)
        self.bn = nn.BatchNorm1d(32)
        self.classifier = nn.Linear(32, classes)

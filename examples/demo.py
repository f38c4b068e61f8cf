"""torchweights demo: the checkpoints that make torch.load painful, read safely. Runs offline on generated data.

make demo        (or: .venv/bin/python examples/demo.py)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

import numpy as np
import torch

import torchweights as tw
from torchweights.cli import main as cli


def banner(title: str) -> None:
    print(f"\n{'=' * 100}\n{title}\n{'=' * 100}")


class TinyNet(torch.nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.BatchNorm2d(16), torch.nn.ReLU())
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(16, 16) for _ in range(4))
        self.head = torch.nn.Linear(16, classes)


def make_training_checkpoint(folder: Path) -> Path:
    """What a Lightning-style run leaves behind: DataParallel + torch.compile prefixes, optimizer, hparams."""
    model = TinyNet(classes=1000)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    model.head(model.blocks[0](torch.randn(2, 16))).sum().backward()
    opt.step()
    state = {f"_orig_mod.module.{k}": v for k, v in model.state_dict().items()}
    ckpt = {
        "epoch": 9,
        "global_step": np.int64(1870),  # numpy scalars: torch.load(weights_only=True) refuses these
        "best_acc": np.float64(0.8125),
        "state_dict": state,
        "optimizer_states": [opt.state_dict()],
        "hyper_parameters": argparse.Namespace(lr=3e-4, classes=1000, arch="tinynet"),
    }
    path = folder / "epoch=9-step=1870.ckpt"
    torch.save(ckpt, path, pickle_protocol=4)  # protocol 4: "Unsupported operand 149" for weights_only=True
    return path


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = make_training_checkpoint(folder)

        banner(f"1. What is inside '{path.name}'?   torchweights inspect FILE   (reads pickles and headers only)")
        cli(["inspect", str(path), "--depth", "3"])

        banner("2. torch.load(weights_only=True) refuses it; tw.load reads it without executing anything")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.load(path, weights_only=True)
        except Exception as exc:
            print("torch.load(weights_only=True):", textwrap.shorten(str(exc), 200))
        tensors = tw.load(path)
        ckpt = tw.open(path)
        print(f"tw.load: {len(tensors)} tensors; extras kept as data:")
        for key in ("epoch", "global_step", "best_acc", "hyper_parameters"):
            print(f"  {key:<18} {ckpt.extras[key]!r}")

        banner("3. A full pickled model whose class no longer exists: its weights still come out")
        full = folder / "full_model.pt"
        torch.save(TinyNet(), full)
        opened = tw.open(full)
        print(f"classes referenced (never imported): {[g for g in opened.globals if g.endswith('TinyNet')]}")
        print(f"tensors named like state_dict(): {list(opened.records)[:6]} ...")

        banner("4. Files that are not weights are diagnosed before parsing")
        pointer = folder / "pytorch_model.bin"
        pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:4d7a21\nsize 438000000\n")
        half = folder / "truncated.pt"
        half.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        for bad in (pointer, half):
            try:
                tw.open(bad)
            except tw.TorchWeightsError as exc:
                print(f"{type(exc).__name__} [{exc.code}]:")
                print(textwrap.indent(textwrap.fill(exc.message, 98), "  "))

        banner("5. A pickle that tries to run a command is refused; nothing is executed")
        marker = folder / "pwned"

        class Evil:
            def __reduce__(self) -> tuple[object, tuple[str]]:
                import os

                return (os.system, (f"touch {marker}",))

        evil = folder / "evil.pt"
        torch.save({"w": torch.zeros(2), "payload": Evil()}, evil)
        try:
            tw.load(evil)
        except tw.UnsafeCheckpointError as exc:
            print(textwrap.fill(str(exc), 100))
        print(f"marker file created: {marker.exists()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

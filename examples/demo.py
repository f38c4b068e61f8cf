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

sys.path.insert(0, str(Path(__file__).parent))
from demo_models import TinyNet, pretrained, refactored, target


def banner(title: str) -> None:
    print(f"\n{'=' * 100}\n{title}\n{'=' * 100}")


def make_training_checkpoint(folder: Path) -> Path:
    """What a Lightning-style run leaves behind: DataParallel + torch.compile prefixes, optimizer, hparams."""
    model = pretrained()
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
        cli(["inspect", str(path), "--depth", "2"])

        banner("2. torch.load + load_state_dict fail on this file; tw.load_into says exactly what to do")
        model = target()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.load(path, weights_only=True)
        except Exception as exc:
            print("torch.load(weights_only=True):", textwrap.shorten(str(exc), 160))
        try:
            model.load_state_dict(torch.load(path, weights_only=False))
        except Exception as exc:
            print("load_state_dict:", textwrap.shorten(str(exc), 160))
        print()
        try:
            tw.load_into(model, path)
        except tw.LoadError as exc:
            print(f"{type(exc).__name__} [{exc.code}]: {exc.message}")

        banner("3. tw.load_into(model, path, skip=['head.*']): loads the rest, accounts for every key")
        report = tw.load_into(model, path, skip=["head.*"])
        print(report)

        banner("4. Dry run from the command line: torchweights check FILE --model examples/demo_models.py:target")
        models = Path(__file__).with_name("demo_models.py")
        code = cli(["check", str(path), "--model", f"{models}:target", "--skip", "head.*"])
        print(f"(exit code {code})")

        banner("5. A full pickled model (torch.save(model)): its class is never imported, its weights still come out")
        full = folder / "full_model.pt"
        torch.save(TinyNet(), full)
        opened = tw.open(full)
        print(f"classes referenced (never imported): {[g for g in opened.globals if g.endswith('TinyNet')]}")
        print(f"tensors named like state_dict(): {list(opened.records)[:6]} ...")

        banner("6. Files that are not weights are diagnosed before parsing")
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

        banner("7. A pickle that tries to run a command is refused; nothing is executed")
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

        banner("8. torchweights scan: is it safe to load? (static; the clean file, then the exploit)")
        cli(["scan", str(path), str(evil)])
        print(f"marker file created: {marker.exists()}")

        banner("9. A whole pickled model back as an nn.Module (torch.save(model)); the same model with a payload")
        whole = folder / "whole.pt"
        net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2)).eval()
        torch.save(net, whole)
        model = tw.load_model(whole)  # torch.nn classes only: no trust needed
        x = torch.randn(3, 4)
        print(model)
        print(f"same output as the original: {torch.equal(model(x), net(x))}")
        net.payload = Evil()
        torch.save(net, whole)
        try:
            tw.load_model(whole, trust=["torch"])
        except tw.UnsafeCheckpointError as exc:
            print(textwrap.fill(str(exc), 100))
        print(f"marker file created: {marker.exists()}")

        banner("10. Values: a NaN and an all-zero layer load 'OK' with torch; check_values=True names them")
        reference = folder / "pretrained.pt"
        torch.save(pretrained().state_dict(), reference)
        damaged = folder / "damaged.pt"
        state = torch.load(reference, weights_only=True)
        state["blocks.1.weight"][3, 5] = float("nan")  # a NaN from a diverged step
        state["blocks.2.weight"].zero_()  # a layer that was never initialised
        torch.save(state, damaged)
        model = pretrained()
        print("torch: load_state_dict(...) ->", model.load_state_dict(torch.load(damaged, weights_only=True)))
        print()
        print(tw.load_into(pretrained(), damaged, check_values=True))

        banner("11. An HTML report with plots: torchweights report FILE --model M:F --against OTHER --html OUT")
        page = Path(__file__).resolve().parent.parent / "build" / "demo-report.html"
        options = ["--model", f"{models}:pretrained", "--against", str(reference), "--html", str(page)]
        code = cli(["report", str(damaged), *options])
        print(f"(exit code {code}: tensors flagged; open {page} in a browser)")

        banner("12. Across refactors: renamed modules paired by structure (align='auto'), a grayscale stem adapted")
        new = refactored()  # stem -> features, blocks.{i} -> layers.{i}.linear, head -> classifier; 1 input channel
        try:
            tw.load_into(new, reference)
        except tw.LoadError as exc:
            print(f"without align: {type(exc).__name__} [{exc.code}]: {exc.message.splitlines()[0]}\n")
        try:
            tw.load_into(new, reference, align="auto")
        except tw.LoadError as exc:
            print(f"align='auto' alone: {type(exc).__name__} {exc}\n")
        print("Review the pairs before loading anything (a dry run): torchweights check FILE --model M:F --align auto")
        options = ["--model", f"{models}:refactored", "--align", "auto", "--adapt", "input_conv"]
        code = cli(["check", str(reference), *options])
        print(f"(exit code {code})\n")
        report = tw.load_into(new, reference, align="auto", adapt=["input_conv"])
        print(f"tw.load_into(model, path, align='auto', adapt=['input_conv']) -> {report.headline()}")
        x = torch.randn(2, 1, 8, 8)
        rgb = torch.load(reference, weights_only=True)
        summed = torch.nn.functional.conv2d(x.expand(-1, 3, -1, -1), rgb["stem.0.weight"], rgb["stem.0.bias"])
        print(f"grayscale stem == RGB stem on a gray image: {torch.allclose(new.features.conv(x), summed, atol=1e-5)}")

        banner("13. Distributed: a torch.distributed.checkpoint folder, written and read without unpickling code")
        dcp_folder = folder / "dcp"
        print(tw.convert(reference, dcp_folder, to="dcp").summary)
        import torch.distributed.checkpoint as dcp

        state = pretrained().state_dict()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "torch.distributed is ... uninitialized, assuming a single process"
            dcp.load(state, checkpoint_id=str(dcp_folder))  # torch's own reader takes the folder
        print(f"torch's dcp.load reads it: {all(torch.equal(v, rgb[k]) for k, v in state.items())}")
        print(tw.scan(dcp_folder).summary)
        print(tw.load_into(pretrained(), dcp_folder).headline())
        print(
            "On FSDP2 models, every rank reads only its own shards: torchrun --standalone --nproc-per-node 2 "
            "examples/distributed_load.py"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

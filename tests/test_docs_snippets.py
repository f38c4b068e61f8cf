"""The cookbook's code is true: every snippet of docs/snippets/ runs against checkpoints made here, and the page
shows only snippets (each included from a file, none written inline).

The checkpoints are the files the recipes name, made with torch in a tmp dir: a state dict, a whole pickled model,
a resume checkpoint, DataParallel and torch.compile prefixes, a Lightning checkpoint, renamed keys, a safetensors
file, bad downloads (LFS pointer, truncated file, HTML page) and a file whose pickle names ``os.system``.
"""

from __future__ import annotations

import os
import pickle
import re
import runpy
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SNIPPETS = ROOT / "docs" / "snippets"
COOKBOOK = ROOT / "docs" / "cookbook.md"
RECIPES = sorted(p.name for p in SNIPPETS.iterdir() if p.suffix in (".py", ".sh") and p.name != "mynets.py")


class _Payload:
    """Pickles as a call of ``os.system`` (never unpickled here: only scanned)."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned",))


def _make_files(folder: Path) -> None:
    shutil.copy(SNIPPETS / "mynets.py", folder / "mynets.py")
    sys.path.insert(0, str(folder))
    try:
        from mynets import Net
    finally:
        sys.path.remove(str(folder))
    torch.manual_seed(0)
    model = Net()
    sd = model.state_dict()
    torch.save(sd, folder / "model.pt")
    torch.save(model, folder / "whole_model.pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 16)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10)
    last = {"model": sd, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": 9}
    torch.save(last, folder / "last.pt")
    torch.save({"module." + k: v for k, v in sd.items()}, folder / "dp_model.pt")
    torch.save({"_orig_mod." + k: v for k, v in sd.items()}, folder / "compiled_model.pt")
    lightning = {
        "epoch": 9,
        "global_step": 900,
        "state_dict": {"model." + k: v for k, v in sd.items()},
        "optimizer_states": [optimizer.state_dict()],
        "hyper_parameters": {"classes": 10, "lr": 1e-3},
    }
    torch.save(lightning, folder / "epoch=9.ckpt")
    torch.save({re.sub(r"^head\.", "fc.", k): v for k, v in sd.items()}, folder / "old_names.pt")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))
    (folder / "lfs_pointer.bin").write_text(
        "version https://git-lfs.github.com/spec/v1\n"
        "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 438012345\n"
    )
    whole = (folder / "model.pt").read_bytes()
    (folder / "truncated.pt").write_bytes(whole[: len(whole) // 2])
    (folder / "login.bin").write_text("<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Log in</body>\n")
    (folder / "checkpoints").mkdir()
    shutil.copy(folder / "model.pt", folder / "checkpoints" / "model.pt")
    (folder / "checkpoints" / "suspicious.pt").write_bytes(pickle.dumps({"w": 1.0, "x": _Payload()}, protocol=2))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cookbook")
    _make_files(folder)
    return folder


@pytest.fixture
def in_files(files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh copy of the files as the working directory, with ``mynets`` importable."""
    work = tmp_path / "work"
    shutil.copytree(files, work)
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(work))
    sys.modules.pop("mynets", None)
    yield work
    sys.modules.pop("mynets", None)


@pytest.mark.parametrize("name", [n for n in RECIPES if n.endswith(".py")])
def test_python_recipe_runs(name: str, in_files: Path) -> None:
    """The recipe runs to its end: its own asserts state what each step gives."""
    runpy.run_path(str(SNIPPETS / name), run_name="__main__")


def test_shell_recipe_runs(in_files: Path) -> None:
    """scan_ci.sh with ``torchweights`` on PATH: the clean file passes, the glob with the payload file fails."""
    bin_dir = in_files / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "torchweights"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m torchweights "$@"\n')
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    script = (SNIPPETS / "scan_ci.sh").read_text()
    result = subprocess.run(["bash", "-e", "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "refused: exit 1" in result.stdout and "all clean" not in result.stdout
    assert '"verdict": "clean"' in (in_files / "scan.json").read_text()


def test_cookbook_code_is_the_tested_snippets() -> None:
    """Every recipe file is included in the cookbook, and every code block of the page is an include."""
    page = COOKBOOK.read_text()
    included = re.findall(r'^--8<-- "docs/snippets/([\w.=-]+)"$', page, flags=re.MULTILINE)
    assert sorted(set(included)) == sorted([*RECIPES, "mynets.py"])
    blocks = re.findall(r"^```\w*\n(.*?)^```$", page, flags=re.MULTILINE | re.DOTALL)
    assert blocks and all(re.fullmatch(r'--8<-- "docs/snippets/[\w.=-]+"\n', b) for b in blocks), blocks

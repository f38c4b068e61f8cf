"""Tests of ``torchweights inspect`` and the CLI entry point."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import torchweights.api
from torchweights import dtypes
from torchweights.cli import main
from torchweights.errors import CorruptCheckpointError, NotACheckpointError
from torchweights.records import Checkpoint, StorageRef, TensorRecord

# ------------------------------------------------------------------------------------------------ fixtures


def record(name: str, dtype: str, shape: tuple[int, ...], file: str = "model.pt") -> TensorRecord:
    stride: list[int] = []
    step = 1
    for size in reversed(shape):
        stride.insert(0, step)
        step *= size
    nbytes = math.prod(shape) * dtypes.itemsize(dtype)
    storage = StorageRef(key=name, file=file, offset=0, nbytes=nbytes)
    return TensorRecord(name, tuple(name.split(".")), dtype, shape, tuple(stride), 0, storage)


def make_checkpoint(path: str) -> Checkpoint:
    records = [record("model.embed_tokens.weight", "float32", (100, 16), path)]
    for i in range(12):
        records += [record(f"model.layers.{i}.self_attn.{p}_proj.weight", "bfloat16", (16, 16), path) for p in "qkv"]
        records.append(record(f"model.layers.{i}.mlp.weight", "bfloat16", (64, 16), path))
    records.append(record("lm_head.weight", "float32", (100, 16), path))
    records.append(record("step", "int64", (), path))

    class Opaque:
        def __repr__(self) -> str:
            return "Opaque(" + "z" * 500 + ")"

    extras: dict[str, Any] = {
        "epoch": 7,
        "loss": 0.25,
        "name": "run-1",
        "flag": None,
        "nan": float("nan"),
        "args": Opaque(),
    }
    extras.update({f"optimizer.param_groups.{i}.lr": 1e-3 for i in range(4)})
    return Checkpoint(
        path=path,
        format="torch-zip",
        files=(path,),
        records={r.name: r for r in records},
        extras=extras,
        globals=("collections.OrderedDict", "my_project.Config", "os.system"),
        metadata={"version": "3", "byteorder": "little", "data": {"format": "pt", "blob": "q" * 1000}},
        warnings=["renamed duplicate 'x' to 'x.1'"],
    )


@pytest.fixture
def ckpt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Checkpoint:
    path = tmp_path / "model.pt"
    path.write_bytes(b"\0" * 1234)
    checkpoint = make_checkpoint(str(path))
    calls: list[tuple[str, list[str]]] = []

    def fake_open(p: str, *, allow_globals: Any = ()) -> Checkpoint:
        calls.append((p, list(allow_globals)))
        return checkpoint

    monkeypatch.setattr(torchweights.api, "open", fake_open)
    checkpoint.calls = calls  # type: ignore[attr-defined]
    return checkpoint


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def lines_of(out: str) -> list[str]:
    return [line.rstrip() for line in out.splitlines()]


def find_line(out: str, start: str) -> str:
    matches = [line for line in lines_of(out) if line.strip().startswith(start)]
    assert matches, f"no line starting with {start!r} in:\n{out}"
    return matches[0]


# ------------------------------------------------------------------------------------------------ text output


def test_text_header(ckpt: Checkpoint, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["inspect", ckpt.path], capsys)
    assert code == 0
    assert err == ""
    head = lines_of(out)[:6]
    assert head[0].split() == ["path", ckpt.path]
    assert head[1].split() == ["format", "torch-zip"]
    assert head[2].split(None, 1) == ["files", "1 file, 1.2 kB (1,234 bytes)"]
    assert head[3].split() == ["tensors", "51"]
    numel = 2 * 1600 + 12 * (3 * 256 + 1024) + 1
    assert head[4].split() == ["params", "24.7K", f"({numel:,})"]
    nbytes = 2 * 1600 * 4 + 12 * (3 * 256 + 1024) * 2 + 8
    assert head[5].split(None, 1) == ["data", f"55.8 kB ({nbytes:,} bytes)"]
    # every header value starts in the same column
    assert len({line.index(line.split()[1]) for line in head}) == 1


def test_text_dtypes_sorted_by_bytes(ckpt: Checkpoint, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run_main(["inspect", ckpt.path], capsys)
    lines = lines_of(out)
    start = lines.index("dtypes")
    assert lines[start + 1].split() == ["dtype", "tensors", "params", "bytes"]
    assert [line.split() for line in lines[start + 2 : start + 5]] == [
        ["bfloat16", "48", "21.5K", "43.0", "kB"],
        ["float32", "2", "3.2K", "12.8", "kB"],
        ["int64", "1", "1", "8", "B"],
    ]
    assert lines[start + 5] == ""
    # right-aligned numeric columns end in the same column
    assert len({len(line) for line in lines[start + 1 : start + 5]}) == 1


def test_text_tree_folds_layers(ckpt: Checkpoint, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run_main(["inspect", ckpt.path], capsys)
    lines = lines_of(out)
    start = lines.index("tree")
    tree = lines[start + 1 : lines.index("", start)]
    assert tree[0].split() == ["name", "tensors", "params", "bytes"]
    assert [line.split()[0] for line in tree[1:]] == [
        "model",
        "embed_tokens.weight",
        "layers.{0..11}",
        "self_attn",
        "mlp.weight",
        "lm_head.weight",
        "step",
    ]
    assert find_line(out, "layers.{0..11}").split() == ["layers.{0..11}", "48", "21.5K", "43.0", "kB"]
    assert find_line(out, "layers.{0..11}").startswith("    layers")  # depth 1 under "model"
    assert not any(f"layers.{i}." in out for i in range(12))


def test_text_depth_option(ckpt: Checkpoint, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run_main(["inspect", ckpt.path, "--depth", "1"], capsys)
    assert "layers.{0..11}" not in out
    assert find_line(out, "model").split()[:2] == ["model", "49"]
    _, out, _ = run_main(["inspect", ckpt.path, "--depth", "0"], capsys)
    assert "tree" not in lines_of(out)
    _, out, _ = run_main(["inspect", ckpt.path, "--depth", "4"], capsys)
    assert find_line(out, "q_proj.weight").split()[:2] == ["q_proj.weight", "12"]


def test_text_metadata_extras_globals_warnings(ckpt: Checkpoint, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run_main(["inspect", ckpt.path], capsys)
    assert find_line(out, "version").split() == ["version", "3"]
    assert find_line(out, "data.format").split() == ["data.format", "pt"]
    blob = find_line(out, "data.blob")
    assert blob.endswith("... (1000 chars)") and len(blob) < 120
    assert "extras (10)" in lines_of(out)
    assert find_line(out, "epoch").split() == ["epoch", "int", "7"]
    assert find_line(out, "optimizer.param_groups.{0..3}.lr").split()[:4] == [
        "optimizer.param_groups.{0..3}.lr",
        "4",
        "x",
        "float",
    ]
    args = find_line(out, "args")
    assert "Opaque(zzz" in args and len(args) < 120
    assert "globals (3: 1 dangerous, 1 unknown, 1 safe)" in lines_of(out)
    assert find_line(out, "safe").split() == ["safe", "collections.OrderedDict"]
    assert find_line(out, "unknown ").split() == ["unknown", "my_project.Config"]
    assert find_line(out, "dangerous").split() == ["dangerous", "os.system"]
    assert "warnings (1)" in lines_of(out)
    assert "  - renamed duplicate 'x' to 'x.1'" in lines_of(out)


def test_text_never_prints_raw_dicts(ckpt: Checkpoint, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run_main(["inspect", ckpt.path], capsys)
    assert "{'" not in out and '{"' not in out
    assert all(len(line) < 120 for line in lines_of(out))


def test_text_escapes_control_characters(ckpt: Checkpoint, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt.extras["evil\x1b[2J"] = "red\x1b[31m"
    _, out, _ = run_main(["inspect", ckpt.path], capsys)
    assert "\x1b" not in out
    assert find_line(out, "evil").split() == ["evil\\x1b[2J", "str", "red\\x1b[31m"]


def test_text_minimal_checkpoint(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    empty = Checkpoint(path="nowhere.safetensors", format="safetensors", files=("nowhere.safetensors",))
    monkeypatch.setattr(torchweights.api, "open", lambda p, allow_globals=(): empty)
    code, out, _ = run_main(["inspect", "nowhere.safetensors"], capsys)
    assert code == 0
    assert lines_of(out) == [
        "path     nowhere.safetensors",
        "format   safetensors",
        "files    1 file, size unknown",
        "tensors  0",
        "params   0 (0)",
        "data     0 B (0 bytes)",
    ]


def test_text_lists_shards(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shards = []
    for i in range(2):
        shard = tmp_path / f"model-0000{i + 1}-of-00002.safetensors"
        shard.write_bytes(b"\0" * (1000 * (i + 1)))
        shards.append(str(shard))
    index = tmp_path / "model.safetensors.index.json"
    ck = Checkpoint(
        path=str(index),
        format="sharded-safetensors",
        files=(str(index), *shards),
        records={"a.weight": record("a.weight", "float16", (4,), shards[0])},
    )
    monkeypatch.setattr(torchweights.api, "open", lambda p, allow_globals=(): ck)
    _, out, _ = run_main(["inspect", str(index)], capsys)
    assert find_line(out, "files").startswith("files    3 files, ")
    lines = lines_of(out)
    listing = lines[lines.index("files") + 1 : lines.index("files") + 4]
    assert [line.split()[-2:] for line in listing[1:]] == [["1.0", "kB"], ["2.0", "kB"]]
    assert listing[1].split()[0] == shards[0]


def test_allow_global_passed_through(ckpt: Checkpoint, capsys: pytest.CaptureFixture[str]) -> None:
    run_main(["inspect", ckpt.path, "--allow-global", "a.B", "--allow-global", "c.D"], capsys)
    run_main(["inspect", ckpt.path], capsys)
    assert ckpt.calls == [(ckpt.path, ["a.B", "c.D"]), (ckpt.path, [])]  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------------ --json


def test_json_schema(ckpt: Checkpoint, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["inspect", ckpt.path, "--json"], capsys)
    assert code == 0 and err == ""
    data = json.loads(out)
    assert list(data) == [
        "path",
        "format",
        "files",
        "metadata",
        "tensors",
        "totals",
        "tied",
        "dtypes",
        "extras",
        "globals",
        "warnings",
        "modules",
    ]
    assert data["path"] == ckpt.path
    assert data["format"] == "torch-zip"
    assert data["files"] == [{"path": ckpt.path, "size": 1234}]
    assert data["metadata"] == {"version": "3", "byteorder": "little", "data": {"format": "pt", "blob": "q" * 1000}}
    assert len(data["tensors"]) == 51
    assert data["tensors"][0] == {
        "name": "model.embed_tokens.weight",
        "dtype": "float32",
        "shape": [100, 16],
        "nbytes": 6400,
    }
    assert data["tensors"][-1] == {"name": "step", "dtype": "int64", "shape": [], "nbytes": 8}
    assert [t["name"] for t in data["tensors"]] == list(ckpt.records)
    assert data["totals"] == {"tensors": 51, "numel": ckpt.numel, "nbytes": ckpt.nbytes, "tied": 0}
    assert data["tied"] == {}
    assert data["dtypes"] == {
        "bfloat16": {"tensors": 48, "numel": 21504, "nbytes": 43008},
        "float32": {"tensors": 2, "numel": 3200, "nbytes": 12800},
        "int64": {"tensors": 1, "numel": 1, "nbytes": 8},
    }
    assert list(data["dtypes"]) == ["bfloat16", "float32", "int64"]
    extras = data["extras"]
    assert extras["epoch"] == 7 and extras["loss"] == 0.25 and extras["name"] == "run-1" and extras["flag"] is None
    assert extras["nan"] == "nan"  # not a JSON number
    assert extras["args"].startswith("Opaque(zzz") and len(extras["args"]) == 200
    assert extras["optimizer.param_groups.3.lr"] == 0.001
    assert data["globals"] == [
        {"name": "collections.OrderedDict", "verdict": "safe"},
        {"name": "my_project.Config", "verdict": "unknown"},
        {"name": "os.system", "verdict": "dangerous"},
    ]
    assert data["warnings"] == ["renamed duplicate 'x' to 'x.1'"]


def test_json_is_strict(ckpt: Checkpoint, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt.metadata["weird"] = {1: float("inf"), "t": (1, 2), "b": b"\x00"}
    _, out, _ = run_main(["inspect", ckpt.path, "--json"], capsys)

    def reject(token: str) -> None:
        raise AssertionError(f"non-standard JSON constant {token}")

    data = json.loads(out, parse_constant=reject)
    assert data["metadata"]["weird"] == {"1": "inf", "t": [1, 2], "b": "b'\\x00'"}
    assert out.count("\n") == 1  # one object on one line


# ------------------------------------------------------------------------------------------------ errors and entry


def test_error_exit_code_and_message(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def fail(p: str, *, allow_globals: Any = ()) -> Checkpoint:
        raise NotACheckpointError("x", code="lfs-pointer")

    monkeypatch.setattr(torchweights.api, "open", fail)
    code, out, err = run_main(["inspect", "model.bin"], capsys)
    assert code == 2
    assert out == ""
    assert err == (
        "NotACheckpointError [lfs-pointer]: x\nmore: https://torchweights.readthedocs.io/en/latest/errors/#lfs-pointer\n"
    )


def test_error_subclass_uses_its_own_name(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def fail(p: str, *, allow_globals: Any = ()) -> Checkpoint:
        raise CorruptCheckpointError("the zip ends early", code="truncated")

    monkeypatch.setattr(torchweights.api, "open", fail)
    error = {"code": "truncated", "type": "CorruptCheckpointError", "message": "the zip ends early", "fix": None}
    error["docs_url"] = "https://torchweights.readthedocs.io/en/latest/errors/#truncated"
    assert run_main(["inspect", "model.pt", "--json"], capsys) == (
        2,
        json.dumps({"error": error}) + "\n",
        "CorruptCheckpointError [truncated]: the zip ends early\n"
        "more: https://torchweights.readthedocs.io/en/latest/errors/#truncated\n",
    )


@pytest.mark.parametrize(
    "argv",
    [["inspect"], ["frobnicate"], ["inspect", "x", "--depth", "-1"], ["inspect", "x", "--depth", "two"]],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "inspect" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("torchweights ")


def test_inspect_does_not_import_torch_with_records(tmp_path: Path) -> None:
    """The CLI layer alone (reader patched out) imports neither torch nor numpy."""
    script = textwrap.dedent(
        """
        import sys
        import torchweights.api
        from torchweights.records import Checkpoint, StorageRef, TensorRecord
        rec = TensorRecord("a.0.w", ("a", "0", "w"), "bfloat16", (2, 3), (3, 1), 0, StorageRef("0", "f", 0, 12))
        ck = Checkpoint("f", "safetensors", ("f",), {"a.0.w": rec}, {"e": 1}, ("collections.OrderedDict",))
        torchweights.api.open = lambda p, allow_globals=(): ck
        from torchweights.cli import main
        assert main(["inspect", "f"]) == 0
        assert main(["inspect", "f", "--json"]) == 0
        heavy = sorted(m for m in ("torch", "numpy", "safetensors") if m in sys.modules)
        assert not heavy, heavy
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------------------------------------ end to end


@pytest.fixture
def safetensors_file(tmp_path: Path) -> Path:
    import numpy as np
    from safetensors.numpy import save_file

    path = tmp_path / "model.safetensors"
    tensors = {f"layers.{i}.weight": np.zeros((4, 3), dtype=np.float32) for i in range(3)}
    tensors["head.bias"] = np.zeros((5,), dtype=np.float16)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


@pytest.fixture
def torch_file(tmp_path: Path) -> Path:
    import torch

    path = tmp_path / "model.pt"
    state = {f"layers.{i}.weight": torch.zeros(4, 3) for i in range(3)}
    state["head.bias"] = torch.zeros(5, dtype=torch.float16)
    torch.save({"state_dict": state, "epoch": 3}, path)
    return path


def test_e2e_safetensors_text(safetensors_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["inspect", str(safetensors_file)], capsys)
    assert code == 0, err
    assert find_line(out, "format").split() == ["format", "safetensors"]
    assert find_line(out, "tensors").split() == ["tensors", "4"]
    assert find_line(out, "layers.{0..2}.weight").split()[:3] == ["layers.{0..2}.weight", "3", "36"]
    assert find_line(out, "float32").split()[:2] == ["float32", "3"]


def test_e2e_safetensors_json(safetensors_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["inspect", str(safetensors_file), "--json"], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["format"] == "safetensors"
    assert data["files"] == [{"path": str(safetensors_file), "size": os.path.getsize(safetensors_file)}]
    assert {t["name"]: (t["dtype"], t["shape"], t["nbytes"]) for t in data["tensors"]} == {
        "layers.0.weight": ("float32", [4, 3], 48),
        "layers.1.weight": ("float32", [4, 3], 48),
        "layers.2.weight": ("float32", [4, 3], 48),
        "head.bias": ("float16", [5], 10),
    }
    assert data["totals"] == {"tensors": 4, "numel": 41, "nbytes": 154, "tied": 0}
    assert data["dtypes"] == {
        "float32": {"tensors": 3, "numel": 36, "nbytes": 144},
        "float16": {"tensors": 1, "numel": 5, "nbytes": 10},
    }


def test_e2e_torch_save(torch_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["inspect", str(torch_file)], capsys)
    assert code == 0, err
    assert find_line(out, "format").split() == ["format", "torch-zip"]
    assert find_line(out, "tensors").split() == ["tensors", "4"]
    assert "state_dict.layers.{0..2}" in out or "layers.{0..2}" in out
    assert find_line(out, "epoch").split() == ["epoch", "int", "3"]
    code, out, err = run_main(["inspect", str(torch_file), "--json"], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["format"] == "torch-zip"
    assert data["totals"] == {"tensors": 4, "numel": 41, "nbytes": 154, "tied": 0}
    assert data["extras"] == {"epoch": 3}
    assert all(g["verdict"] in ("safe", "dangerous", "unknown") for g in data["globals"])


def test_e2e_module_state_dict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A real ``nn.Module.state_dict()`` (an OrderedDict carrying ``_metadata``), the most common checkpoint."""
    import torch

    model = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(3)])
    path = tmp_path / "sd.pt"
    torch.save(model.state_dict(), path)
    code, out, err = run_main(["inspect", str(path)], capsys)
    assert code == 0, err
    assert find_line(out, "tensors").split() == ["tensors", "6"]
    assert find_line(out, "{0..2}").split()[:3] == ["{0..2}", "6", "60"]


def test_e2e_module_entry_does_not_import_torch(safetensors_file: Path) -> None:
    """``python -m torchweights.cli inspect FILE --json`` works and never imports torch."""
    result = subprocess.run(
        [sys.executable, "-m", "torchweights.cli", "inspect", str(safetensors_file), "--json"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["totals"]["tensors"] == 4
    script = textwrap.dedent(
        f"""
        import sys
        from torchweights.cli import main
        assert main(["inspect", {str(safetensors_file)!r}, "--json"]) == 0
        assert "torch" not in sys.modules, "inspect imported torch"
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr

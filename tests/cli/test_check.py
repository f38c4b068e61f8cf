"""Tests of ``torchweights check CKPT --model MODULE:FACTORY``: exit codes, text, JSON, options, factory errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from torchweights.cli import main

MODELS = textwrap.dedent(
    """
    import torch

    BUILT = []

    class Net(torch.nn.Module):
        def __init__(self, classes=10):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8))
            self.norm = torch.nn.LayerNorm(8)
            self.head = torch.nn.Linear(8, classes)

    def build():
        model = Net(10)
        BUILT.append(model.head.weight.device.type)
        return model

    def build_1000():
        return Net(1000)

    def needs_real_tensors():
        model = Net(10)
        model.head.weight.sum().item()  # fails on the meta device: check must retry for real
        BUILT.append(model.head.weight.device.type)
        return model

    def build_meta():  # a factory that builds its model on the meta device itself
        with torch.device("meta"):
            return Net(10)

    def broken():
        raise RuntimeError("no GPU here")

    def not_a_module():
        return 42

    class Factories:
        @staticmethod
        def build():
            return Net(10)
    """
)


@pytest.fixture
def files(tmp_path: Path) -> Iterator[dict[str, str]]:
    sys.modules.pop("tw_check_models", None)  # each test imports its own copy from its own tmp_path
    models = tmp_path / "tw_check_models.py"
    models.write_text(MODELS)
    namespace: dict[str, object] = {}
    exec(compile(MODELS, str(models), "exec"), namespace)
    net = namespace["Net"]
    torch.manual_seed(0)
    fits = tmp_path / "fits.ckpt"
    state = net().state_dict()  # type: ignore[operator]
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, fits)
    big_head = tmp_path / "imagenet.pt"
    torch.save(net(1000).state_dict(), big_head)  # type: ignore[operator]
    extra = tmp_path / "extra.pt"
    torch.save({**state, "aux.weight": torch.zeros(3)}, extra)
    garbage = tmp_path / "notes.pt"
    garbage.write_text("these are not weights\n" * 10)
    yield {
        "models": str(models),
        "fits": str(fits),
        "big_head": str(big_head),
        "extra": str(extra),
        "garbage": str(garbage),
        "dir": str(tmp_path),
    }
    sys.modules.pop("tw_check_models", None)


def run_check(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["check", *argv])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------------------ exit 0 and 1


def test_a_fitting_checkpoint_exits_0(files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_check([files["fits"], "--model", f"{files['models']}:build"], capsys)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["source", files["fits"]]
    assert lines[1].split() == ["model", "Net"]
    assert lines[2].startswith("result     DRY RUN (strict=True): would load 8 of 8; the model was not changed")
    assert "prefix     stripped 'module.' on 8/8 keys; 0 collisions" in lines
    assert "container  'state_dict' matches 8 of its 8 keys (8 with equal shapes)" in out
    assert "to load (8)" in lines and "to fix" not in out


def test_the_model_is_built_on_the_meta_device(
    files: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(files["dir"])
    code, _, _ = run_check([files["fits"], "--model", "tw_check_models:build"], capsys)
    assert code == 0
    # built on meta, then once more with fake tensors (no memory) to see which devices a real call gives
    assert sys.modules["tw_check_models"].BUILT == ["meta", "cpu"]


def test_a_factory_that_fails_on_meta_is_called_for_real(
    files: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(files["dir"])
    code, _, err = run_check([files["fits"], "--model", "tw_check_models:needs_real_tensors"], capsys)
    assert (code, err) == (0, "")
    assert sys.modules["tw_check_models"].BUILT[-1] == "cpu"


def test_dotted_factory_attribute(files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = run_check([files["fits"], "--model", f"{files['models']}:Factories.build"], capsys)
    assert code == 0


def test_a_mismatched_head_exits_1_and_says_what_to_skip(
    files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    model = f"{files['models']}:build"
    code, out, err = run_check([files["big_head"], "--model", model], capsys)
    assert (code, err) == (1, "")
    lines = out.splitlines()
    assert lines[2] == "result     FAILED: 2 mismatched (strict=True); the model was not changed"
    assert "shape mismatch (2)" in lines
    assert "  head.weight  checkpoint (1000, 8)  model (10, 8)" in lines
    assert "  head.bias    checkpoint (1000,)    model (10,)" in lines
    assert '    tw.load_into(..., skip=["head.*"])' in lines
    assert "    CLI: --skip 'head.*'" in lines

    code, out, err = run_check([files["big_head"], "--model", model, "--skip", "head.*"], capsys)
    assert (code, err) == (0, "")
    assert "skipped (2): skip='head.*'" in out.splitlines()

    code, out, _ = run_check([files["big_head"], "--model", model, "--on-mismatch", "skip"], capsys)
    assert code == 0 and "skipped (2): shape mismatch (on_mismatch='skip')" in out


def test_strictness_decides_about_unexpected_keys(files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    model = f"{files['models']}:build"
    code, out, _ = run_check([files["extra"], "--model", model], capsys)
    assert code == 1 and "unexpected (1): no model key matches" in out and "--strict model" in out
    code, out, _ = run_check([files["extra"], "--model", model, "--strict", "model"], capsys)
    assert code == 0 and "not loaded (strict='model')" in out
    code, _, _ = run_check([files["big_head"], "--model", model, "--strict", "false"], capsys)
    assert code == 0


def test_rename_and_prefix_options(files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    model = f"{files['models']}:build"
    code, out, _ = run_check([files["fits"], "--model", model, "--prefix", ""], capsys)
    assert code == 1 and "missing (8)" in out
    code, out, _ = run_check([files["fits"], "--model", model, "--prefix", "", "--rename", r"^module\.="], capsys)
    assert code == 0, out
    assert "renamed (8): user rename" in out


# ------------------------------------------------------------------------------------------------ JSON


def test_json_output(files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    model = f"{files['models']}:build"
    code, out, _ = run_check([files["big_head"], "--model", model, "--json"], capsys)
    assert code == 1
    data = json.loads(out)
    assert {"source", "model", "ok", "applied", "strict", "container", "prefix", "totals", "actions"} <= set(data)
    assert data["ok"] is False and data["applied"] is False and data["model"] == "Net"
    mismatched = [a for a in data["actions"] if a["kind"] == "mismatch"]
    assert [(a["target"], a["src_shape"], a["dst_shape"]) for a in mismatched] == [
        ("head.weight", [1000, 8], [10, 8]),
        ("head.bias", [1000], [10]),
    ]
    assert data["totals"]["mismatch"] == 2 and data["totals"]["load"] == 6

    code, out, _ = run_check([files["fits"], "--model", model, "--json"], capsys)
    data = json.loads(out)
    assert code == 0 and data["ok"] is True and data["prefix"]["strip"] == "module."


# ------------------------------------------------------------------------------------------------ exit 2


def test_an_unreadable_checkpoint_exits_2(files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    model = f"{files['models']}:build"
    code, out, err = run_check([files["garbage"], "--model", model], capsys)
    assert code == 2 and out == ""
    assert err.startswith("NotACheckpointError [")
    code, _, err = run_check([files["dir"] + "/nothing-here.pt", "--model", model], capsys)
    assert code == 2 and err.startswith("CheckpointNotFoundError [not-found]: ")


def test_an_unknown_container_exits_2(files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_check([files["fits"], "--model", f"{files['models']}:build", "--container", "nope"], capsys)
    assert code == 2 and err.startswith("RuleError [bad-container]: ")


@pytest.mark.parametrize(
    ("factory", "says"),
    [
        ("no_such_module_xyz:build", ["cannot import 'no_such_module_xyz'", "PYTHONPATH", "path/to/models.py"]),
        ("{models}:nope", ["has no attribute 'nope'", "build"]),
        ("{models}:broken", ["calling it failed with RuntimeError: no GPU here", "without arguments"]),
        ("{models}:not_a_module", ["returned a int, not a torch.nn.Module"]),
        ("{dir}/missing.py:build", ["is not a file"]),
    ],
)
def test_a_factory_that_cannot_be_used_exits_2(
    files: dict[str, str], capsys: pytest.CaptureFixture[str], factory: str, says: list[str]
) -> None:
    code, out, err = run_check([files["fits"], "--model", factory.format(**files)], capsys)
    assert code == 2 and out == ""
    assert err.startswith("cannot build the model: --model ")
    for text in says:
        assert text in err


def test_a_bad_model_argument_is_a_usage_error(files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["check", files["fits"], "--model", "no_colon_here"])
    assert info.value.code == 2
    assert "expected MODULE:FACTORY" in capsys.readouterr().err


def test_console_entry_point(files: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "torchweights.cli", "check", files["big_head"], "--model", f"{files['models']}:build"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert "shape mismatch (2)" in result.stdout


# ------------------------------------------------------------------------------------------------ meta factories


def test_a_factory_that_builds_on_meta_agrees_with_the_python_dry_run(
    files: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchweights as tw

    monkeypatch.syspath_prepend(files["dir"])
    state = torch.load(files["fits"])["state_dict"]
    partial = Path(files["dir"]) / "partial.pt"
    torch.save({k: v for k, v in state.items() if ".head." not in k}, partial)
    code, out, _ = run_check([str(partial), "--model", "tw_check_models:build_meta", "--strict", "false"], capsys)
    models = sys.modules["tw_check_models"]
    expected = tw.load_into(models.build_meta(), partial, strict=False, dry_run=True)
    assert not expected.ok and "2 left on the meta device (missing)" in expected.headline()
    flat = " ".join(out.split())
    assert expected.headline() in flat and code == 1
    assert "the factory itself leaves 8 tensors on the meta device" in flat
    # the same factory without meta: the real build has values, the keys are left as initialised
    code, out, _ = run_check([str(partial), "--model", "tw_check_models:build", "--strict", "false"], capsys)
    assert code == 0 and "2 left as initialised (missing)" in " ".join(out.split())
    # --meta-model plans any factory's model as a meta model
    code, out, _ = run_check(
        [str(partial), "--model", "tw_check_models:build", "--strict", "false", "--meta-model"], capsys
    )
    flat = " ".join(out.split())
    assert code == 1 and expected.headline() in flat and "--meta-model: planned for a model on the meta device" in flat


def test_a_factory_fake_tensors_cannot_build_says_what_is_assumed(
    files: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch._subclasses import fake_tensor

    class Unusable:  # a factory fake tensors cannot follow (some in-place moves between devices, data checks)
        def __init__(self, **_: object) -> None:
            pass

        def __enter__(self) -> None:
            raise RuntimeError("_apply(): Couldn't swap Linear.weight")

        def __exit__(self, *_: object) -> None:
            pass

    monkeypatch.setattr(fake_tensor, "FakeTensorMode", Unusable)
    code, out, _ = run_check([files["fits"], "--model", f"{files['models']}:build"], capsys)
    flat = " ".join(out.split())
    assert code == 0
    assert "tensors a real call of the factory initialises are assumed to have values" in flat
    assert "Couldn't swap Linear.weight" in flat and "pass --meta-model" in flat

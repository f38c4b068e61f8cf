"""load_into(check_values=True): planted NaN/Inf/all-zero/constant tensors are found by name, ordinary weights
(random, trained, BatchNorm statistics, embeddings with a zero padding row, zero biases, LayerNorm) are not; the
report, its JSON, the log line, dry runs and ``torchweights check --check-values``."""

from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import torchweights as tw
from torchweights.cli import main
from torchweights.values.findings import FindingKind


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.emb = nn.Embedding(20, 8, padding_idx=0)
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        h = self.bn(self.conv(x)).mean(dim=(2, 3)) + self.emb(ids)
        return self.head(torch.relu(self.fc(self.norm(h))))


def trained() -> Net:
    """A Net trained a few steps, its conv bias zeroed (zero by design), BatchNorm statistics updated."""
    torch.manual_seed(0)
    net = Net()
    nn.init.zeros_(net.conv.bias)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(5):
        x, ids = torch.randn(4, 3, 6, 6), torch.randint(0, 20, (4,))
        loss = net(x, ids).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        net.conv.bias.zero_()
        net.emb.weight[0].zero_()
    return net


def save(state: dict[str, torch.Tensor], folder: Path, fmt: str) -> Path:
    path = folder / f"ckpt.{fmt}"
    if fmt == "pt":
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def planted() -> dict[str, torch.Tensor]:
    state = {k: v.clone() for k, v in trained().state_dict().items()}
    state["conv.weight"].zero_()  # an all-zero kernel
    state["fc.weight"][1, 2] = float("nan")
    state["fc.weight"][3, 3] = float("nan")
    state["bn.running_var"][0] = float("inf")
    state["head.weight"].fill_(0.25)  # constant
    return state


def by_kind(report: tw.LoadReport) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in report.value_findings:
        out.setdefault(f.kind.value, []).append(f.name)
    return out


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_planted_values_are_found_by_name(fmt: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = save(planted(), tmp_path, fmt)
    with caplog.at_level(logging.WARNING, logger="torchweights"):
        report = tw.load_into(Net(), path, check_values=True)
    assert by_kind(report) == {
        "zero": ["conv.weight"],
        "inf": ["bn.running_var"],
        "nan": ["fc.weight"],
        "constant": ["head.weight"],
    }
    nan = next(f for f in report.value_findings if f.kind is FindingKind.NAN)
    assert nan.detail == "2 of 64 values are NaN"
    assert report.ok and not report.clean  # warnings: the keys are all accounted for
    assert report.headline() == (
        "WARN: loaded 14 of 14; values: 1 NaN tensor, 1 Inf tensor, 1 all-zero weight, 1 constant weight"
    )
    text = str(report)
    section = text[text.index("values (4 findings)") :].splitlines()
    assert section[1].split() == ["conv.weight", "zero", "all", "216", "values", "are", "zero"]
    assert section[4].split() == ["head.weight", "constant", "all", "32", "values", "are", "0.25"]
    data = json.loads(report.to_json())
    assert data["checked_values"] is True and data["result"].startswith("WARN: ")
    assert {"name": "fc.weight", "kind": "nan", "detail": "2 of 64 values are NaN"} in data["value_findings"]
    [record] = caplog.records
    assert record.levelno == logging.WARNING and record.name == "torchweights"
    message = record.getMessage()
    assert "; NaN in: fc.weight;" in message and "; all zero: conv.weight;" in message
    assert "; Inf in: bn.running_var;" in message and "; constant: head.weight." in message
    assert message.count("NaN tensor") == 1  # counted once, in the result part


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_ordinary_weights_raise_no_alarm(fmt: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Random init, trained weights, BatchNorm running statistics and num_batches_tracked, a zero padding row, a
    zero conv bias, LayerNorm's ones and zeros: clean, and nothing logged at WARNING."""
    for state in (Net().state_dict(), trained().state_dict()):
        path = save(state, tmp_path, fmt)
        with caplog.at_level(logging.DEBUG, logger="torchweights"):
            report = tw.load_into(Net(), path, check_values=True)
        assert report.value_findings == () and report.checked_values
        assert report.clean and report.headline() == "OK: loaded 14 of 14"
        assert "values (checked: no NaN, Inf, all-zero or constant weights)" in str(report)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_fresh_batchnorm_layernorm_and_biases_are_not_constant(tmp_path: Path) -> None:
    def build() -> nn.Module:
        model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.LayerNorm(4), nn.Conv1d(4, 4, 1))
        nn.init.zeros_(model[0].bias)
        return model

    path = save(build().state_dict(), tmp_path, "pt")
    assert tw.load_into(build(), path, check_values=True).value_findings == ()


def test_left_at_initial_values_and_dry_runs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = planted()
    del state["head.weight"], state["head.bias"]
    path = save(state, tmp_path, "pt")
    with caplog.at_level(logging.WARNING, logger="torchweights"):
        report = tw.load_into(Net(), path, strict=False, check_values=True)
    initial = [f for f in report.value_findings if f.kind is FindingKind.INITIAL]
    assert [(f.name, f.detail) for f in initial] == [
        ("head.weight", "nothing loaded (missing): left as initialised"),
        ("head.bias", "nothing loaded (missing): left as initialised"),
    ]
    assert report.headline().startswith("WARN (strict=False): loaded 12 of 14; 2 left as initialised (missing); ")
    assert len(caplog.records) == 1 and "missing: head.weight, head.bias" in caplog.records[0].getMessage()
    model = Net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dry = tw.load_into(model, path, strict=False, dry_run=True, check_values=True)
    assert by_kind(dry) == by_kind(report)  # read from the file, named as the model names them
    assert dry.headline().endswith("values: 1 NaN tensor, 1 Inf tensor, 1 all-zero weight; the model was not changed")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    unchecked = tw.load_into(Net(), path, strict=False)
    assert unchecked.value_findings == () and not unchecked.checked_values
    assert "value_findings" in unchecked.to_dict() and "values (" not in str(unchecked)


def test_init_missing_and_tied_weights(tmp_path: Path) -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(6, 4)
            self.out = nn.Linear(4, 6, bias=False)
            self.out.weight = self.emb.weight
            self.extra = nn.Linear(4, 4)

    source = Tied()
    with torch.no_grad():
        source.emb.weight[1, 1] = float("nan")
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("extra.")}
    path = save(state, tmp_path, "pt")
    with torch.device("meta"):
        model = Tied()
    report = tw.load_into(model, path, strict=False, init_missing=True, check_values=True)
    assert [(f.name, f.kind.value) for f in report.value_findings] == [
        ("emb.weight", "nan"),  # checked once, not again as out.weight
        ("extra.weight", "initial"),
        ("extra.bias", "initial"),
    ]
    assert report.value_findings[1].detail == "nothing loaded (missing): initialised by init_missing"


def test_the_library_adds_no_handlers() -> None:
    logger = logging.getLogger("torchweights")
    assert all(isinstance(h, logging.NullHandler) for h in logger.handlers)


def test_check_cli_check_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "tw_values_models.py"
    models.write_text(
        textwrap.dedent(
            """
            from torch import nn

            def build():
                return nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
            """
        )
    )
    state = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)).state_dict()
    state["1.weight"][0, 0] = float("inf")
    path = save(state, tmp_path, "pt")
    argv = ["check", str(path), "--model", f"{models}:build"]
    assert main([*argv, "--check-values"]) == 1  # asked for, value findings fail the check (a CI job)
    out = capsys.readouterr().out
    assert "values (1 finding)" in out and "1.weight  inf  1 of 8 values are infinite" in out
    assert main([*argv, "--check-values", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["value_findings"] == [{"name": "1.weight", "kind": "inf", "detail": "1 of 8 values are infinite"}]
    assert main(argv) == 0  # not asked: the values are not read
    assert "values (" not in capsys.readouterr().out
    state["1.weight"][0, 0] = 0.5
    assert main(["check", str(save(state, tmp_path, "pt")), "--model", f"{models}:build", "--check-values"]) == 0

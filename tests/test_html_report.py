"""``tw.html_report`` and ``torchweights report --html``: one self-contained page, escaped, with the load report,
the value findings, the plots and the change against a reference; the verb's exit codes and errors."""

from __future__ import annotations

import builtins
import json
import math
import re
import sys
import textwrap
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import torch

import torchweights as tw
from torchweights.cli import main
from torchweights.errors import RuleError
from torchweights.tools.html_report import TABLE_ROWS, relative_change

HOSTILE = "<script>alert(1)</script>.weight"


class Page(HTMLParser):
    """Every tag with its attributes, and the text, of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse_page(markup: str) -> Page:
    """The tags and text of ``markup`` (also used by test_reprs)."""
    page = Page()
    page.feed(markup)
    page.close()
    return page


def _state(planted: bool = True) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    sd = {f"blocks.{i}.weight": torch.randn(16, 16) * 0.05 for i in range(6)}
    sd.update({f"blocks.{i}.bias": torch.zeros(16) for i in range(6)})  # zero by design: never flagged
    if planted:
        sd["blocks.1.weight"] = torch.zeros(16, 16)
        sd["blocks.4.weight"][2, 2] = float("inf")
    return sd


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {"planted": tmp_path / "planted.pt", "clean": tmp_path / "clean.pt", "hostile": tmp_path / "hostile.pt"}
    torch.save(_state(), out["planted"])
    torch.save(_state(planted=False), out["clean"])
    hostile = {HOSTILE: torch.randn(4, 4), 'x"onload="y$z$': torch.zeros(3, 3), "a\x1b[31m": torch.ones(2)}
    torch.save(hostile, out["hostile"])
    return out


def test_the_page_is_one_self_contained_file(files: dict[str, Path], tmp_path: Path) -> None:
    report = tw.html_report(files["planted"], tmp_path / "r.html", against=files["clean"])
    markup = (tmp_path / "r.html").read_text()
    assert markup == report.html and report.out == str(tmp_path / "r.html")
    page = parse_page(markup)
    tags = {tag for tag, _ in page.tags}
    assert not tags & {"script", "link", "iframe", "object", "embed", "img", "base"}
    for tag, attrs in page.tags:
        for name in ("src", "href", "xlink:href", "action"):
            value = attrs.get(name)
            assert value is None or value.startswith("#"), (tag, name, value)  # only ids inside the page
    assert not re.search(r"url\((?!#)|@import|//[a-z]", markup.replace("http://www.w3.org/", ""))
    csp = [a["content"] for t, a in page.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp == ["default-src 'none'; style-src 'unsafe-inline'; img-src data:"]
    ids = re.findall(r'\bid="([^"]+)"', markup)
    assert len(ids) == len(set(ids))  # four plots, no id shared between them
    assert markup.count("<svg") == 4  # per-layer statistics, dtypes, modules, change


def test_names_from_the_file_are_escaped_everywhere(files: dict[str, Path]) -> None:
    markup = tw.html_report(files["hostile"]).html
    page = parse_page(markup)
    assert not any(tag == "script" for tag, _ in page.tags)
    assert not any(name.startswith("on") for _, attrs in page.tags for name in attrs)
    text = "".join(page.text)
    assert HOSTILE in text and 'x"onload="y$z$' in text  # shown, as text
    assert "a\\x1b[31m" in text and "\x1b" not in markup  # control characters escaped as the text reports do
    assert "'x\"onload=\"y$z$': zero" not in text and "x&quot;onload=&quot;y$z$" in markup


def test_findings_are_named_in_the_text_and_marked(files: dict[str, Path]) -> None:
    report = tw.html_report(files["planted"])
    assert set(report.flagged) == {"blocks.1.weight", "blocks.4.weight"}
    assert report.flagged["blocks.1.weight"] == ["zero: all 256 values are zero (in the file)"]
    assert report.flagged["blocks.4.weight"] == ["inf: 1 of 256 values are infinite (in the file)"]
    assert not report.ok and "2 flagged ('blocks.1.weight', 'blocks.4.weight')" in report.summary
    page = parse_page(report.html)
    text = "".join(page.text)
    assert "2 flagged tensors" in text and "all 256 values are zero" in text
    rows = re.findall(r'<tr class="flag"><td>([^<]*)</td>', report.html)
    assert rows == ["blocks.1.weight", "blocks.4.weight"]  # highlighted in the table of every tensor
    clean = tw.html_report(files["clean"])
    assert clean.ok and clean.flagged == {} and "No value findings" in clean.html
    assert 'class="head ok"' in clean.html and 'class="head bad"' in report.html


def test_every_tensor_is_in_the_table_with_its_statistics(tmp_path: Path) -> None:
    sd = {f"layer.{i}.weight": torch.full((2, 3), float(i + 1)) for i in range(TABLE_ROWS + 7)}
    torch.save(sd, tmp_path / "many.pt")
    report = tw.html_report(tmp_path / "many.pt")
    text = "".join(parse_page(report.html).text)
    assert all(name in text for name in sd)
    assert "7 more rows" in report.html  # folded past TABLE_ROWS, still in the page
    stats = report.stats
    assert stats is not None and stats["layer.2.weight"].mean == 3.0
    assert re.search(r"<td>layer\.2\.weight</td><td class=\"n\">24 B</td><td class=\"n\">float32</td>", report.html)
    assert set(report.flagged) == set(sd)  # each is a constant weight matrix
    assert all(
        words == [f"constant: all 6 values are {i + 1} (in the file)"]
        for i, words in enumerate(report.flagged.values())
    )


def test_the_change_against_a_reference(tmp_path: Path) -> None:
    torch.manual_seed(1)
    base = {"a.weight": torch.randn(8, 8), "b.weight": torch.randn(8, 8), "c.bias": torch.randn(8)}
    tuned = {
        "module.a.weight": base["a.weight"],
        "module.b.weight": base["b.weight"] * 1.5,
        "module.c.bias": base["c.bias"].half(),
        "module.steps": torch.tensor(3),
    }
    torch.save(base, tmp_path / "base.pt")
    torch.save(tuned, tmp_path / "tuned.pt")
    report = tw.html_report(tmp_path / "tuned.pt", against=tmp_path / "base.pt")
    assert list(report.changes) == ["a.weight", "b.weight", "c.bias"]  # paired as diff pairs them; ints left out
    assert report.changes["a.weight"] == 0.0
    b64 = base["b.weight"].double()
    want = float(torch.linalg.norm((base["b.weight"] * 1.5).double() - b64) / torch.linalg.norm(b64))
    assert report.changes["b.weight"] == pytest.approx(want, rel=1e-12) and want == pytest.approx(0.5)
    expected = float(
        torch.linalg.norm(base["c.bias"].half().double() - base["c.bias"].double())
        / torch.linalg.norm(base["c.bias"].double())
    )
    assert report.changes["c.bias"] == pytest.approx(expected, rel=1e-12)
    text = "".join(parse_page(report.html).text)
    assert "2 tensors of 3 compared changed." in text and "Change against" in text


def test_relative_change_edge_cases() -> None:
    zero = torch.zeros(5)
    assert relative_change(zero, zero) == 0.0
    assert relative_change(torch.ones(5), zero) == math.inf
    assert math.isnan(relative_change(torch.tensor([float("nan")]), torch.ones(1)))
    big_a, big_b = torch.randn(3, 1000), torch.randn(3, 1000)
    want = float(torch.linalg.norm(big_a.double() - big_b.double()) / torch.linalg.norm(big_b.double()))
    assert relative_change(big_a, big_b) == pytest.approx(want, rel=1e-12)


_MODELS = textwrap.dedent(
    """
    import torch

    def build():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 16), torch.nn.Linear(16, 4))
    """
)


def _model_files(tmp_path: Path) -> tuple[Path, Path]:
    models = tmp_path / "models.py"
    models.write_text(_MODELS)
    torch.manual_seed(0)
    sd = {
        "0.weight": torch.randn(16, 16),
        "0.bias": torch.randn(16),
        "1.weight": torch.zeros(16, 16),
        "1.bias": torch.randn(16),
    }  # layer 2 missing: left as initialised
    sd["0.weight"][0, 0] = float("nan")
    ckpt = tmp_path / "model.pt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}}, ckpt)
    return models, ckpt


def test_the_load_report_and_its_value_findings(tmp_path: Path) -> None:
    models, ckpt = _model_files(tmp_path)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 16), torch.nn.Linear(16, 4))
    report = tw.html_report(ckpt, model=model)
    assert report.load is not None and report.load.checked_values
    kinds = {f.name: str(f.kind) for f in report.load.value_findings}
    assert kinds == {"0.weight": "nan", "1.weight": "zero", "2.weight": "initial", "2.bias": "initial"}
    # findings about loaded keys are named as the file names them; the rest by the model's name
    assert set(report.flagged) == {"state_dict.model.0.weight", "state_dict.model.1.weight", "2.weight", "2.bias"}
    assert "(model key '1.weight')" in report.flagged["state_dict.model.1.weight"][0]
    assert torch.isnan(model[0].weight[0, 0])  # the load was real
    text = "".join(parse_page(report.html).text)
    assert "Load into" in text and report.load.headline() in text and "2.weight" in text


def test_the_verb_exit_codes(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out" / "clean.html"
    assert main(["report", str(files["clean"]), "--html", str(out)]) == 0
    assert out.is_file() and "nothing flagged" in capsys.readouterr().out
    assert main(["report", str(files["planted"]), "--html", str(out), "--against", str(files["clean"])]) == 1
    assert "2 flagged ('blocks.1.weight', 'blocks.4.weight')" in capsys.readouterr().out
    assert "blocks.4.weight" in out.read_text()  # replaced
    assert main(["report", str(tmp_path / "missing.pt"), "--html", str(tmp_path / "x.html")]) == 2
    assert "CheckpointNotFoundError [not-found]" in capsys.readouterr().err and not (tmp_path / "x.html").exists()
    with pytest.raises(SystemExit) as e:
        main(["report", str(files["clean"])])  # --html is required
    assert e.value.code == 2


def test_the_verb_with_a_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models, ckpt = _model_files(tmp_path)
    out = tmp_path / "m.html"
    assert main(["report", str(ckpt), "--model", f"{models}:build", "--html", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "4 flagged" in printed and "load: " in printed
    assert "state_dict.model.1.weight" in out.read_text()
    assert main(["report", str(ckpt), "--model", f"{models}:nothing", "--html", str(out)]) == 2
    assert "cannot build the model: --model" in capsys.readouterr().err


def test_help_names_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "0 the page was written and nothing is flagged" in text and "--against OTHER" in text
    assert "pip install 'torchweights[report]'" in text


def test_the_verb_as_json(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.html"
    assert main(["report", str(files["planted"]), "--html", str(out), "--against", str(files["clean"]), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["out"] == str(out) and data["ok"] is False and data["load"] is None
    assert data["flagged"]["blocks.1.weight"] == ["zero: all 256 values are zero (in the file)"]
    assert data["changes"]["blocks.4.weight"] == "inf"  # an infinite value in A: as a string in JSON
    assert main(["report", str(tmp_path / "nope.pt"), "--html", str(out), "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "not-found"


def _block_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def refuse(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(builtins, "__import__", refuse)


def test_missing_matplotlib_is_our_error_with_the_fix(
    files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _block_matplotlib(monkeypatch)
    with pytest.raises(RuleError) as e:
        tw.html_report(files["clean"], tmp_path / "a.html")
    assert e.value.code == "needs-matplotlib" and "pip install 'torchweights[report]'" in e.value.message
    out = tmp_path / "b.html"
    assert main(["report", str(files["clean"]), "--html", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("RuleError [needs-matplotlib]: ") and "Fix: pip install 'torchweights[report]'" in err
    assert not out.exists() and not (tmp_path / "a.html").exists()

"""Reports in notebooks: every report has a one-line ``repr`` and a ``_repr_html_`` that escapes what comes from the
file (tensor names are attacker-controlled), while ``str`` stays the text the CLI prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import torchweights as tw
from test_html_report import parse_page
from torchweights.report.html import CARD_ROWS, Table, card, esc, table

HOSTILE = '<script>alert("x")</script>'


def _parse(markup: str) -> Any:
    """The tag names and the text of ``markup``."""
    page = parse_page(markup)
    page.names = [tag for tag, _ in page.tags]
    return page


def _reports(tmp_path: Path) -> dict[str, Any]:
    """One report of every kind, each about a file with a tensor named like a script."""
    sd = {"fc.weight": torch.randn(3, 4), "fc.bias": torch.zeros(3), HOSTILE: torch.ones(2)}
    src = tmp_path / "a.pt"
    torch.save(sd, src)
    other = tmp_path / "b.pt"
    torch.save({**sd, "fc.weight": sd["fc.weight"] + 1, HOSTILE: torch.full((2,), 2.0)}, other)
    model = torch.nn.Sequential()
    model.add_module("fc", torch.nn.Linear(4, 3))
    return {
        "LoadReport": tw.load_into(model, src, strict=False, dry_run=True),
        "ScanReport": tw.scan(src),
        "DiffReport": tw.diff(src, other),
        "VerifyReport": tw.verify(src),
        "ConvertReport": tw.convert(src, tmp_path / "out.safetensors"),
    }


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _reports(tmp_path_factory.mktemp("reprs"))


KINDS = ["LoadReport", "ScanReport", "DiffReport", "VerifyReport", "ConvertReport"]


@pytest.mark.parametrize("kind", KINDS)
def test_repr_is_one_line_naming_the_kind_and_the_summary(kind: str, reports: dict[str, Any]) -> None:
    report = reports[kind]
    text = repr(report)
    assert "\n" not in text and text.startswith(f"<{kind} ") and text.endswith(">")
    assert report.summary in text
    assert str(report) != text and "\n" in str(report)  # str is still the full text report


@pytest.mark.parametrize("kind", KINDS)
def test_repr_html_escapes_names_from_the_file(kind: str, reports: dict[str, Any]) -> None:
    markup = reports[kind]._repr_html_()
    parsed = _parse(markup)
    assert "script" not in parsed.names  # no tag came from a name
    assert parsed.names[0] == "style" and "div" in parsed.names
    text = "".join(parsed.text)
    assert kind in text and reports[kind].summary in text
    assert not any(t in markup for t in ("http:", "https:", "src=", "<link"))


@pytest.mark.parametrize("kind", ["LoadReport", "DiffReport"])
def test_the_hostile_name_is_shown_as_text(kind: str, reports: dict[str, Any]) -> None:
    markup = reports[kind]._repr_html_()
    assert HOSTILE in "".join(_parse(markup).text)  # named (unexpected key; a tensor that differs), as text
    assert esc(HOSTILE) in markup and HOSTILE not in markup


def test_state_colours_follow_the_outcome(tmp_path: Path, reports: dict[str, Any]) -> None:
    assert 'class="head warn"' in reports["LoadReport"]._repr_html_()  # loads, with an unexpected tensor
    assert 'class="head ok"' in reports["VerifyReport"]._repr_html_()
    assert 'class="head bad"' in reports["DiffReport"]._repr_html_()  # values differ
    torch.save({"w": torch.ones(2)}, tmp_path / "w.pt")
    failing = tw.load_into(torch.nn.Linear(2, 2), tmp_path / "w.pt", dry_run=True)
    assert 'class="head bad"' in failing._repr_html_()


def test_long_tables_fold_but_keep_every_row() -> None:
    rows = [[f"t{i}", i] for i in range(CARD_ROWS + 5)]
    markup = table(Table("t", ("name", "n"), rows, numeric=frozenset({1}), flagged=frozenset({2})), CARD_ROWS)
    assert markup.count("<details>") == 1 and "5 more rows" in markup
    assert all(f"<td>t{i}</td>" in markup for i in range(len(rows)))
    assert '<tr class="flag"><td>t2</td><td class="n">2</td></tr>' in markup


def test_esc_escapes_markup_quotes_and_control_characters() -> None:
    assert esc("a<b>&\"'") == "a&lt;b&gt;&amp;&quot;&#x27;"
    assert esc("a\x00b\x1b[31m") == "a\\x00b\\x1b[31m"
    assert 'title="x&quot; onclick=&quot;y"' in f'title="{esc(chr(120) + chr(34) + " onclick=" + chr(34) + "y")}"'


def test_card_puts_notes_and_facts_as_text() -> None:
    markup = card("K", "ok", "fine", [("path", HOSTILE)], notes=[HOSTILE])
    parsed = _parse(markup)
    assert "script" not in parsed.names and parsed.text.count(HOSTILE) == 1
    assert "note: " + HOSTILE in "".join(parsed.text)

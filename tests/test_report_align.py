"""The load report of ``align="auto"`` and adapters: the aligned section and headline, the ambiguity error, the
advice that names an adapter or ``align="auto"``, JSON and the notebook card (on real models renamed by hand)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import torchweights as tw
from torchweights.adapt import registry
from torchweights.adapt.base import Adapter, Context, Step
from torchweights.errors import LoadError
from torchweights.plan.align import rename_mapping
from torchweights.report.text import render


class Block(nn.Module):
    def __init__(self, first: str, second: str) -> None:
        super().__init__()
        setattr(self, first, nn.Linear(8, 16))
        setattr(self, second, nn.Linear(16, 8))


class Old(nn.Module):
    """``blocks.{i}.fc / proj`` and ``head``."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.blocks = nn.ModuleList([Block("fc", "proj") for _ in range(4)])
        self.head = nn.Linear(8, classes)


class New(nn.Module):
    """The same model after a refactor: ``layers.{i}.linear / out`` and ``classifier``."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 8)
        self.layers = nn.ModuleList([Block("linear", "out") for _ in range(4)])
        self.classifier = nn.Linear(8, classes)


class Twins(nn.Module):
    """Two identical siblings that nothing but declaration order tells apart once renamed."""

    def __init__(self, names: tuple[str, str]) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        for name in names:
            setattr(self, name, nn.Linear(8, 8))


@pytest.fixture
def old(tmp_path: Path) -> str:
    torch.manual_seed(0)
    path = tmp_path / "old.pt"
    torch.save(Old().state_dict(), path)
    return str(path)


@pytest.fixture
def pad_rows(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A tiny reshape adapter registered for the test: a 2-D tensor with fewer rows, zero-padded."""

    def fit(target: str, src: tuple[int, ...], dst: tuple[int, ...], context: Context) -> Step | None:
        if len(src) == len(dst) and src[1:] == dst[1:] and src[0] < dst[0]:
            return Step("pad_rows", (), (("rows", src[0]),), f"{src[0]} -> {dst[0]} rows (zero-padded)")
        return None

    def apply(step: Step, tensors: object, dst: tuple[int, ...]) -> torch.Tensor:
        raise AssertionError("dry runs only")

    monkeypatch.setitem(registry.ADAPTERS, "pad_rows", Adapter("pad_rows", "reshape", "pad rows", apply, fit=fit))
    yield "pad_rows"


def test_aligned_pairs_are_listed_folded_with_confidence(old: str) -> None:
    report = tw.load_into(New(12), old, align="auto", strict=False, dry_run=True)
    alignment = report.plan.alignment
    assert alignment is not None and len(alignment.pairs) == 10 and not alignment.ambiguous
    text = render(report)
    head = report.headline()
    assert head.startswith(
        f"DRY RUN (strict=False): would load 18 of 20 (18 aligned, confidence {alignment.confidence:.2f})"
    )
    lines = text.splitlines()
    assert lines[lines.index(next(line for line in lines if line.startswith("aligned ("))) + 1].split()[:4] == [
        "embed",
        "->",
        "stem",
        "2",
    ]
    rows = {tuple(line.split()[:3]) for line in lines if "->" in line}
    assert ("blocks.{0..3}.fc", "->", "layers.{0..3}.linear") in rows
    assert ("blocks.{0..3}.proj", "->", "layers.{0..3}.out") in rows
    assert ("head", "->", "classifier") in rows  # paired, then reported as a mismatch
    assert "classifier.weight  checkpoint (10, 8)  model (12, 8)" in text
    assert "renamed (" not in text  # the aligned section says it once, by module
    assert next(line for line in lines if line.startswith("align ")).startswith(
        "align      paired 20 of 20 unmatched model keys (10 pairs, confidence"
    )
    assert "options    strict=False, align='auto'" in text


def test_long_alignments_fold_and_full_shows_every_pair(tmp_path: Path) -> None:
    words = [f"w{chr(97 + i)}" for i in range(25)]  # no layer index: 25 rows that do not fold

    def model(prefix: str) -> nn.Module:
        return nn.ModuleDict({f"{prefix}_{w}": nn.Linear(i + 1, i + 2) for i, w in enumerate(words)})

    path = tmp_path / "many.pt"
    torch.save(model("old").state_dict(), path)
    report = tw.load_into(model("new"), str(path), align="auto", dry_run=True)
    assert report.ok and len(report.plan.alignment.pairs) == 25  # type: ignore[union-attr]
    short, full = render(report), render(report, full=True)
    assert "  ... and 5 more" in short and "old_wy  ->  new_wy" not in short
    assert "... and" not in full and "old_wy  ->  new_wy" in full


def test_json_carries_the_alignment_and_keeps_every_key(old: str) -> None:
    report = tw.load_into(New(), old, align="auto")
    assert report.ok and report.applied
    data = json.loads(report.to_json())
    assert data["alignment"] == json.loads(json.dumps(report.plan.alignment.to_dict()))  # type: ignore[union-attr]
    assert [p["target"] for p in data["alignment"]["pairs"]][:2] == ["stem", "layers.0.linear"]
    assert data["adapter_hints"] == [] and data["load_error"] is None
    plain = json.loads(tw.load_into(Old(), old).to_json())
    assert plain["alignment"] is None and set(plain) == set(data)
    assert {"source", "model", "ok", "result", "totals", "actions", "suggested_rename"} <= set(data)
    assert all("align" in a["via"] for a in data["actions"] if a["kind"] == "load")
    assert data["result"] == "OK: loaded 20 of 20 (20 aligned, confidence " + f"{report.plan.alignment.confidence:.2f})"  # type: ignore[union-attr]


def test_rename_mapping_loads_the_same_without_alignment(old: str) -> None:
    aligned_model, renamed_model = New(), New()
    aligned = tw.load_into(aligned_model, old, align="auto")
    mapping = rename_mapping(aligned.plan.alignment)  # type: ignore[arg-type]
    renamed = tw.load_into(renamed_model, old, rename=mapping)
    assert renamed.ok and renamed.plan.alignment is None
    assert {(a.target, a.source) for a in aligned.loaded} == {(a.target, a.source) for a in renamed.loaded}
    for (name, a), (_, b) in zip(aligned_model.state_dict().items(), renamed_model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_ambiguous_alignment_raises_with_the_settling_rename(tmp_path: Path) -> None:
    path = tmp_path / "twins.pt"
    torch.save(Twins(("first", "second")).state_dict(), path)
    model = Twins(("left", "right"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(LoadError) as raised:
        tw.load_into(model, str(path), align="auto", strict=False)
    error = raised.value
    assert error.code == "ambiguous-alignment"
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched
    message = str(error)
    assert "1. checkpoint 'first', 'second'" in message and "model      'left', 'right'" in message
    fix = error.to_dict()["fix"]
    assert fix is not None and "rename={'^first\\\\.': 'left.', '^second\\\\.': 'right.'}" in fix
    report = error.report
    assert report is not None and not report.ok
    assert report.headline().startswith("FAILED: 1 ambiguous group (align='auto')")
    text = render(report)
    assert "ambiguous (1 group): only declaration order could pair them; nothing of them loaded" in text
    assert report.to_dict()["load_error"]["code"] == "ambiguous-alignment"


def test_a_missing_rename_suggests_align_only_where_it_helps(tmp_path: Path) -> None:
    class Attn(nn.Module):
        def __init__(self, names: tuple[str, ...]) -> None:
            super().__init__()
            for name in names:
                setattr(self, name, nn.Linear(8, 8))

    def gpt(names: tuple[str, ...], top: str) -> nn.Module:
        return nn.ModuleDict({top: nn.ModuleList([Attn(names) for _ in range(3)])})

    path = tmp_path / "gpt.pt"
    torch.save(gpt(("query", "key", "value"), "h").state_dict(), path)
    with pytest.raises(LoadError) as raised:  # three (8, 8) projections: no rename pairs them by shape
        tw.load_into(gpt(("q", "k", "v"), "layers"), str(path))
    message = str(raised.value)
    assert "18 of the 18 missing keys pair with unexpected tensors of their shapes by structure" in message
    assert 'tw.load_into(..., align="auto")' in message
    assert "CLI: --align auto" in render(raised.value.report)  # type: ignore[arg-type]
    with pytest.raises(LoadError) as plain:  # a head renamed: the rename says it, no alignment needed
        tw.load_into(New(), {k.replace("classifier.", "fc."): v for k, v in New().state_dict().items()})
    assert "align=" not in str(plain.value) and "rename" in str(plain.value)


def test_the_fix_names_the_adapter_and_adapted_keys_are_listed(old: str, pad_rows: str) -> None:
    model = New(12)  # the head has 12 rows where the checkpoint's has 10
    with pytest.raises(LoadError) as raised:
        tw.load_into(model, old, rename=_mapping(old))
    report = raised.value.report
    assert report is not None and report.plan.adapter_hints
    message = str(raised.value)
    assert "The adapter 'pad_rows' would load 2 keys that do not fit as stored" in message
    assert "classifier.weight: 10 -> 12 rows (zero-padded)" in message
    assert 'adapt=["pad_rows"]' in message and "skip=" not in message  # adapted, not thrown away
    assert "--adapt pad_rows" in render(report)
    assert report.to_dict()["adapter_hints"][0] == {
        "adapter": "pad_rows",
        "detail": "classifier.weight: 10 -> 12 rows (zero-padded)",
    }
    planned = tw.load_into(New(12), old, rename=_mapping(old), adapt=["pad_rows"], dry_run=True)
    assert planned.ok, planned.problem_text()
    assert planned.headline().endswith("would load 20 of 20 (2 adapted); the model was not changed")
    text = render(planned)
    assert "adapted (2): loaded through adapters (adapt=[...])" in text
    row = next(line for line in text.splitlines() if line.startswith("  classifier.weight "))
    assert row.split()[1:] == ["pad_rows", "10", "->", "12", "rows", "(zero-padded)", "from", "head.weight"]
    assert "adapt: pad_rows" not in text  # not a rename row as well
    step = next(a for a in planned.loaded if a.target == "classifier.weight").adapt
    assert step is not None and step.sources == ("head.weight",)


def _mapping(old: str) -> dict[str, str]:
    return rename_mapping(tw.load_into(New(), old, align="auto", dry_run=True).plan.alignment)  # type: ignore[arg-type]


def test_the_card_shows_pairs_and_adapted_keys_escaped(old: str, pad_rows: str) -> None:
    state = {k.replace("blocks.", "<b>blocks."): v for k, v in torch.load(old).items()}
    report = tw.load_into(New(12), state, align="auto", adapt=["pad_rows"], dry_run=True)
    assert report.ok, report.problem_text()
    card = report._repr_html_()
    assert "<caption>aligned (10 pairs, confidence" in card
    assert "&lt;b&gt;blocks.0.fc" in card and "<b>blocks" not in card
    assert "<caption>adapted</caption>" in card and "10 -&gt; 12 rows (zero-padded)" in card
    assert "<dt>align</dt><dd>paired 20 of 20 unmatched model keys" in card

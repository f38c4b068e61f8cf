"""String vocabularies are enums whose members are strings: ``Action.kind`` (:class:`ActionKind`),
``Finding.severity`` (:class:`Severity`), ``ScanReport.verdict`` (:class:`Verdict`) and ``TensorDiff.status``
(:class:`Status`). Comparisons with plain strings, printing, formatting and JSON stay exactly what they were."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

import torchweights as tw
from torchweights.plan.model import KINDS, Action, ActionKind
from torchweights.text import StrEnum
from torchweights.tools.diff import STATUSES, Status, TensorDiff
from torchweights.tools.scan.report import SEVERITIES, Finding, Severity, Verdict

VOCABULARIES: dict[type[StrEnum], list[str]] = {  # the words JSON consumers rely on
    ActionKind: ["mismatch", "missing", "unexpected", "skip", "default", "tied", "load", "extra", "ignored"],
    Severity: ["dangerous", "suspicious", "error", "warning", "info"],
    Verdict: ["clean", "dangerous", "unreadable"],
    Status: ["only-a", "only-b", "shape", "dtype", "different", "close", "identical"],
}


class _Call:
    """Pickles as a call of ``os.system`` (never run: the file is only scanned)."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, ("true",)


@pytest.mark.parametrize("vocabulary", list(VOCABULARIES), ids=lambda v: v.__name__)
def test_members_are_their_words(vocabulary: type[StrEnum]) -> None:
    assert [m.value for m in vocabulary] == VOCABULARIES[vocabulary]
    for member in vocabulary:
        word = member.value
        assert isinstance(member, str) and member == word and word == member and hash(member) == hash(word)
        assert str(member) == f"{member}" == f"{member:>1}".strip() == "".join([member]) == word
        assert json.dumps(member) == json.dumps(word) and json.dumps({member: 1}) == json.dumps({word: 1})
        assert vocabulary(word) is member and {word: 1}[member] == 1


def test_ordered_tuples_keep_their_order() -> None:
    assert list(KINDS) == VOCABULARIES[ActionKind] and list(SEVERITIES) == VOCABULARIES[Severity]
    assert list(STATUSES) == VOCABULARIES[Status]


def test_plain_strings_still_build_records() -> None:
    assert Action("load", target="w").kind is ActionKind.LOAD
    assert Finding("warning", "unknown-global", "m", "f").severity is Severity.WARNING
    assert TensorDiff("w", "close").status is Status.CLOSE
    assert Finding("warning", "c", "m", "f").to_dict() == Finding(Severity.WARNING, "c", "m", "f").to_dict()
    with pytest.raises(ValueError):
        Action("loaded")


def test_reports_carry_enums_and_their_json_is_plain_words(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    torch.save({"weight": torch.randn(3, 2), "bias": torch.randn(3), "f": _Call()}, path)
    scan = tw.scan(path)
    assert scan.verdict is Verdict.DANGEROUS and scan.verdict == "dangerous"
    assert all(isinstance(f.severity, Severity) for f in scan.findings)
    data = json.loads(json.dumps(scan.to_dict()))
    assert data["verdict"] == "dangerous" and type(data["verdict"]) is str
    assert {f["severity"] for f in data["findings"]} <= set(VOCABULARIES[Severity])
    assert json.dumps(scan.to_dict()) == json.dumps(data)  # what the enums dump is what plain strings dump

    weights = tmp_path / "w.pt"
    torch.save({"weight": torch.randn(3, 2), "bias": torch.randn(3), "x": torch.zeros(1)}, weights)
    report = tw.load_into(torch.nn.Linear(2, 3), weights, strict=False)
    assert {a.kind for a in report.plan.actions} == {ActionKind.LOAD, ActionKind.UNEXPECTED}
    text = report.to_json(sort_keys=True)
    assert '"kind": "load"' in text and '"kind": "unexpected"' in text and "ActionKind" not in text
    assert json.dumps(json.loads(text), sort_keys=True) == text
    assert "ActionKind" not in str(report) and "ActionKind" not in report.problem_text()

    other = tmp_path / "v.pt"
    torch.save({"weight": torch.randn(3, 2), "bias": torch.randn(3)}, other)
    diff = tw.diff(weights, other)
    assert {t.status for t in diff.tensors} == {Status.DIFFERENT, Status.ONLY_A}
    assert json.loads(json.dumps(diff.to_dict()))["counts"] == {s.value: n for s, n in diff.counts().items()}
    assert "Status." not in str(diff) and "Status." not in json.dumps(diff.to_dict())

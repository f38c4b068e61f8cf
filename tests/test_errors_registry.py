"""The registry of error codes (:data:`torchweights.errors.CODES`) and the codes the source raises agree.

The suite-wide hook in tests/conftest.py checks every error actually built while the tests run; this file checks
the source statically, so that a code on a path no test reaches is still registered, and no registry line is left
for a code nothing raises any more.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import torchweights
from _tools import load_tool
from torchweights import errors
from torchweights.errors import CODES, ErrorCode, TorchWeightsError, describe

SRC = Path(torchweights.__file__).parent
_CODE_SHAPE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


def _source_files() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _fstring_patterns() -> list[re.Pattern[str]]:
    """Each f-string of the package as a pattern (``f"unsupported-{fmt}"`` -> ``^unsupported\\-[a-z0-9-]+$``)."""
    patterns: list[re.Pattern[str]] = []
    for path in _source_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.JoinedStr) and isinstance(node.values[0], ast.Constant):
                parts = [re.escape(v.value) if isinstance(v, ast.Constant) else "[a-z0-9-]+" for v in node.values]
                patterns.append(re.compile("^" + "".join(parts) + "$"))
    return patterns


def _literal_codes() -> dict[str, set[str]]:
    """Code literals passed as ``code=`` (either branch of a conditional too) and ``default_code`` values."""
    found: dict[str, set[str]] = {}

    def literals(node: ast.expr) -> list[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, ast.IfExp):
            return literals(node.body) + literals(node.orelse)
        return []

    for path in _source_files():
        where = str(path.relative_to(SRC))
        for node in ast.walk(ast.parse(path.read_text())):
            values: list[str] = []
            if (isinstance(node, ast.keyword) and node.arg == "code") or (
                isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "default_code" for t in node.targets)
            ):
                values = literals(node.value)
            for value in values:
                found.setdefault(value, set()).add(where)
    return found


def test_every_literal_code_is_registered() -> None:
    literal = _literal_codes()
    del literal[TorchWeightsError.default_code]  # the base class is never raised itself
    assert len(literal) > 50  # the walk really found the raise sites
    missing = {code: sorted(where) for code, where in literal.items() if code not in CODES}
    assert not missing, f"codes raised but not in torchweights.errors.CODES: {missing}"


def test_every_registered_code_is_raised_somewhere() -> None:
    """A registered code appears in the source besides its registry line: as a literal (a raise site, a table of
    codes such as the zip checks') or as the expansion of an f-string code."""
    texts = [p.read_text() for p in _source_files()]
    patterns = _fstring_patterns()
    dead = [
        code
        for code in CODES
        if sum(text.count(f'"{code}"') for text in texts) < 2 and not any(p.match(code) for p in patterns)
    ]
    assert not dead, f"registered codes nothing raises: {dead}"


def _one_line(text: str) -> bool:
    return bool(text) and text == text.strip() and "\n" not in text and not text.endswith(".")


def test_registry_entries_are_well_formed() -> None:
    for code, entry in CODES.items():
        assert _CODE_SHAPE.match(code), code
        assert isinstance(entry, ErrorCode), code
        assert issubclass(entry.cls, TorchWeightsError) and entry.cls is not TorchWeightsError, code
        assert describe(code) == entry.meaning
        for text in (entry.meaning, entry.causes, entry.fix):
            assert _one_line(text), (code, text)
    for cls in vars(errors).values():
        if isinstance(cls, type) and issubclass(cls, TorchWeightsError) and cls is not TorchWeightsError:
            assert CODES[cls.default_code].cls is cls, cls  # every class's default code is its own


def test_every_entry_has_its_own_causes_and_fix() -> None:
    """Causes and fix are written for each code: no entry repeats its meaning as its causes, and no two codes share
    both causes and fix (a copied entry)."""
    for code, entry in CODES.items():
        assert entry.causes != entry.meaning and len(entry.causes) >= 20 and len(entry.fix) >= 15, code
    pairs = [(entry.causes, entry.fix) for entry in CODES.values()]
    assert len(set(pairs)) == len(pairs)


def test_an_error_says_where_to_read_more() -> None:
    """``docs_url`` is the code's anchor on the errors page; the traceback note carries it; the message does not."""
    err = errors.CorruptCheckpointError("the bytes differ", code="bad-crc")
    assert err.docs_url == errors.docs_url("bad-crc") == errors.DOCS_URL + "#bad-crc"
    assert str(err) == "[bad-crc] the bytes differ" and err.message == "the bytes differ"
    assert err.__notes__ == [f"more: {err.docs_url}"]
    outer = err.in_context("shard 'a.bin'")
    assert outer.docs_url == err.docs_url and outer.__notes__ == err.__notes__
    outer.add_note("another")
    assert err.__notes__ == [f"more: {err.docs_url}"]  # the copy's notes are its own


def test_the_documentation_url_is_the_projects() -> None:
    """One base URL: the errors page lies under the Documentation URL of pyproject.toml."""
    import tomllib

    urls = tomllib.loads((SRC.parent.parent / "pyproject.toml").read_text())["project"]["urls"]
    assert urls["Documentation"].rstrip("/") + "/errors/" == errors.DOCS_URL


def test_describe_refuses_unknown_codes() -> None:
    with pytest.raises(KeyError):
        describe("no-such-code")


def test_the_suite_hook_refuses_an_unregistered_code() -> None:
    from conftest import UnregisteredCodeError

    with pytest.raises(UnregisteredCodeError, match="does not list"):
        errors.CorruptCheckpointError("x", code="made-up-code")
    with pytest.raises(UnregisteredCodeError, match="lists under RuleError"):
        errors.CorruptCheckpointError("x", code="bad-strict")


def test_errors_page_is_the_registry() -> None:
    """docs/errors.md is what tools/make_error_table.py writes from the registry now, with an entry (an anchor the
    ``docs_url`` of the code points to) for every code."""
    make_error_table = load_tool("make_error_table")
    page = make_error_table.PAGE.read_text()
    assert page == make_error_table.render(), "run tools/make_error_table.py: docs/errors.md is not errors.CODES"
    headings = re.findall(r"^### `([a-z0-9-]+)`$", page, flags=re.MULTILINE)
    assert sorted(headings) == sorted(CODES)  # each code once
    assert "Common causes:** a download that needed a login" in page  # the html-page entry, as written


def test_readme_links_the_errors_page() -> None:
    readme = (SRC.parent.parent / "README.md").read_text()
    assert "](docs/errors.md)" in readme and errors.DOCS_URL in readme

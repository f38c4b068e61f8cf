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
from torchweights import errors
from torchweights.errors import CODES, TorchWeightsError, describe

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


def test_registry_entries_are_well_formed() -> None:
    for code, (cls, meaning) in CODES.items():
        assert _CODE_SHAPE.match(code), code
        assert issubclass(cls, TorchWeightsError) and cls is not TorchWeightsError, code
        assert meaning and meaning == meaning.strip() and "\n" not in meaning and not meaning.endswith("."), code
        assert describe(code) == meaning
    for cls in vars(errors).values():
        if isinstance(cls, type) and issubclass(cls, TorchWeightsError) and cls is not TorchWeightsError:
            assert CODES[cls.default_code][0] is cls, cls  # every class's default code is its own


def test_describe_refuses_unknown_codes() -> None:
    with pytest.raises(KeyError):
        describe("no-such-code")


def test_the_suite_hook_refuses_an_unregistered_code() -> None:
    from conftest import UnregisteredCodeError

    with pytest.raises(UnregisteredCodeError, match="does not list"):
        errors.CorruptCheckpointError("x", code="made-up-code")
    with pytest.raises(UnregisteredCodeError, match="lists under RuleError"):
        errors.CorruptCheckpointError("x", code="bad-strict")


def test_readme_lists_the_registry() -> None:
    """The README's table of codes is the registry, row for row."""
    readme = (SRC.parent.parent / "README.md").read_text()
    readme = readme[readme.index("<summary>All error codes</summary>") :]
    readme = readme[: readme.index("</details>")]
    rows = re.findall(r"^\| `([a-z0-9-]+)` \| (\w+) \| (.+) \|$", readme, flags=re.MULTILINE)
    want = [(code, cls.__name__, meaning) for code, (cls, meaning) in CODES.items()]
    assert rows == want, "run tools/make_error_table.py to rewrite the README table from errors.CODES"

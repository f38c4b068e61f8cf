"""The docs site builds offline with warnings as errors, and its generated pages are the code's.

One ``mkdocs build --strict`` into a tmp dir (about 10 s), then checks on the HTML: an anchor for every error code
(where ``TorchWeightsError.docs_url`` points), the ``--help`` of every verb on the CLI page, every public name of
``torchweights`` on the API page, and nothing that a browser would fetch from another site (fonts, scripts,
stylesheets, images).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import torchweights
from _tools import ROOT, load_tool
from torchweights.errors import CODES, DOCS_URL

MKDOCS = Path(sys.executable).with_name("mkdocs")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(
        [str(MKDOCS), "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def test_every_error_code_has_its_anchor(site: Path) -> None:
    html = (site / "errors" / "index.html").read_text()
    ids = set(re.findall(r'id="([a-z0-9-]+)"', html))
    assert set(CODES) <= ids, sorted(set(CODES) - ids)
    assert DOCS_URL.endswith("/errors/")  # the page's address on the site, as site/errors/index.html is here


def test_cli_page_is_the_parser(site: Path) -> None:
    hooks = load_tool("mkdocs_hooks")
    from torchweights.cli import COMMANDS, build_parser

    verbs = hooks.verbs(build_parser())
    assert list(verbs) == list(COMMANDS)
    html = (site / "cli" / "index.html").read_text()
    assert hooks.MARKER not in html
    for name, parser in verbs.items():
        assert f"torchweights {name} --help" in html
        for action in parser._actions:
            for flag in action.option_strings:
                assert flag in html, (name, flag)


def test_api_page_documents_every_public_name(site: Path) -> None:
    html = (site / "api" / "index.html").read_text()
    for name in set(torchweights.__all__) - {"__version__"}:
        assert re.search(rf'id="torchweights\.[\w.]*\b{name}"', html), name


def test_nothing_is_fetched_from_another_site(site: Path) -> None:
    """Links may point anywhere; what a page loads (src=, stylesheets, fonts, imports) comes from the site itself."""
    for page in site.rglob("*.html"):
        html = page.read_text()
        assert not re.findall(r'\bsrc="(?:https?:)?//', html), page
        assert not re.findall(r'<link[^>]+rel="(?:stylesheet|preload|preconnect)"[^>]+href="(?:https?:)?//', html), page
        assert "fonts.googleapis" not in html and "fonts.gstatic" not in html, page
    for asset in site.rglob("*.css"):
        assert not re.findall(r"@import\s+url\(\s*['\"]?(?:https?:)?//", asset.read_text()), asset


def test_readme_and_pages_agree_on_the_site() -> None:
    """The README's links to the moved Speed section and the errors page, and pyproject's Documentation URL, name
    the same site as the errors' docs_url."""
    readme = (ROOT / "README.md").read_text()
    assert "](docs/speed.md)" in readme and "](docs/errors.md)" in readme
    assert "## Measured" not in readme  # the tables live in docs/speed.md
    assert "## Measured: the first call in a fresh process" in (ROOT / "docs" / "speed.md").read_text()

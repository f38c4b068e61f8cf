"""Rewrite the README's table of error codes (the "All error codes" block) from ``torchweights.errors.CODES``.

Run it after adding a code to the registry (tests/test_errors_registry.py fails until the two agree)::

    .venv/bin/python tools/make_error_table.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from torchweights.errors import CODES  # noqa: E402

HEADER = "| code | error | meaning |\n|---|---|---|\n"


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    start = text.index(HEADER, text.index("<summary>All error codes</summary>"))
    end = text.index("</details>", start)
    rows = "".join(f"| `{code}` | {cls.__name__} | {meaning} |\n" for code, (cls, meaning) in CODES.items())
    readme.write_text(text[:start] + HEADER + rows + "\n" + text[end:])


if __name__ == "__main__":
    main()

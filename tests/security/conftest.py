"""The security suite's last word: when every test has run, no payload has left a marker file anywhere under
pytest's temporary folder, even one written a moment later by a child process (``subprocess.Popen``)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from ._helpers import markers


@pytest.fixture(scope="session", autouse=True)
def no_marker_anywhere(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    time.sleep(0.3)
    found = markers(tmp_path_factory.getbasetemp())
    assert not found, f"a payload ran: {found}"

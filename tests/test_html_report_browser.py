"""The HTML report rendered by a real browser: headless Chromium (Debian's ``chromium``; ``.ci/run`` installs it).

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON messages ending in a NUL
byte on file descriptors 3 and 4), so no client library is needed. One page load collects what the brief asks for:
console messages and uncaught exceptions (none allowed; a Content Security Policy violation is one), every network
request (only the page's own ``file:`` address and ``data:`` addresses allowed), the page text (it must name the
flagged tensors) and a screenshot (decoded with matplotlib: it must not be blank).

Where chromium is missing the test is skipped on a developer's machine and fails under CI (``CI`` set), so CI never
passes without having rendered the page.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import torchweights as tw

TIMEOUT = 60.0


class Browser:
    """Headless Chromium and one page, over ``--remote-debugging-pipe``."""

    def __init__(self, executable: str, profile: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire() -> None:  # in the child: the protocol's descriptors 3 (commands in) and 4 (replies out)
            # first out of the way (either end may itself be 3 or 4), then down: dup2 makes 3 and 4 inheritable
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        args = [
            executable,
            "--headless",
            "--remote-debugging-pipe",
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            f"--user-data-dir={profile}",
            "about:blank",
        ]
        self.process = subprocess.Popen(
            args, preexec_fn=wire, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.session = ""

    def send(self, method: str, params: dict[str, Any] | None = None, session: bool = True) -> dict[str, Any]:
        """Send one command and wait for its reply (events that arrive meanwhile are kept in :attr:`events`)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next_id:
                assert "error" not in reply, (method, reply["error"])
                return dict(reply.get("result", {}))
            self.events.append(reply)

    def wait_for(self, method: str) -> dict[str, Any]:
        """The first event ``method`` (already received, or the next ones)."""
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._read()
            self.events.append(event)
            if event.get("method") == method:
                return event

    def _read(self) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_browser], [], [], max(0.0, left))
            if not ready:
                raise TimeoutError("chromium did not answer within the timeout")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise EOFError("chromium closed its pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return dict(json.loads(message))

    def open_page(self) -> None:
        """Attach to the page target and enable the domains the checks listen to."""
        targets = self.send("Target.getTargets", session=False)["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        attached = self.send("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True}, session=False)
        self.session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 1800, "deviceScaleFactor": 1, "mobile": False},
        )

    def close(self) -> None:
        with contextlib.suppress(OSError, EOFError, TimeoutError, AssertionError):  # it may be gone already
            self.send("Browser.close", session=False)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: CI must render the HTML report (.ci/run installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium); CI installs it and runs this test")
    return found


def _sample(folder: Path) -> tuple[Path, Path]:
    """A checkpoint with a NaN layer and an attacker-named tensor, and a fine-tuned twin to compare against."""
    torch.manual_seed(0)
    sd = {f"blocks.{i}.weight": torch.randn(32, 32) * 0.05 for i in range(8)}
    sd["blocks.5.weight"][3, 3] = float("nan")
    sd["<script>alert(1)</script>"] = torch.randn(4, 4)
    tuned = {k: v + 0.01 * torch.randn_like(v) for k, v in sd.items()}
    a, b = folder / "a.pt", folder / "b.pt"
    torch.save(sd, a)
    torch.save(tuned, b)
    return a, b


def _distinct_colours(png: bytes) -> tuple[int, float]:
    """Distinct colours of a PNG and the fraction of pixels that are not the background (its top-left pixel)."""
    import matplotlib.image
    import numpy as np

    pixels = matplotlib.image.imread(io.BytesIO(png), format="png")[..., :3]
    flat = (pixels.reshape(-1, 3) * 255).round().astype(np.uint8)
    distinct = len(np.unique(flat, axis=0))
    background = flat[0]
    return distinct, float((flat != background).any(axis=1).mean())


def test_the_report_renders_in_chromium_without_errors(tmp_path: Path) -> None:
    executable = _chromium()
    a, b = _sample(tmp_path)
    out = tmp_path / "report.html"
    report = tw.html_report(a, out, against=b)
    assert "blocks.5.weight" in report.flagged

    browser = Browser(executable, tmp_path / "profile")
    try:
        browser.open_page()
        url = out.resolve().as_uri()
        browser.send("Page.navigate", {"url": url})
        browser.wait_for("Page.loadEventFired")
        text = browser.send("Runtime.evaluate", {"expression": "document.body.innerText", "returnByValue": True})
        scripts = browser.send("Runtime.evaluate", {"expression": "document.scripts.length", "returnByValue": True})
        shot = browser.send("Page.captureScreenshot", {"format": "png"})
        browser.send("Runtime.evaluate", {"expression": "0"})  # let late console events arrive before counting
    finally:
        browser.close()

    problems = [
        e
        for e in browser.events
        if e.get("method") in ("Runtime.exceptionThrown", "Runtime.consoleAPICalled")
        or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] in ("error", "warning"))
    ]
    assert problems == [], problems
    requests = [e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"]
    assert requests and all(r == url or r.startswith("data:") for r in requests), requests

    page_text = text["result"]["value"]
    assert "blocks.5.weight" in page_text and "NaN" in page_text  # the flagged tensor is named, with why
    assert "<script>alert(1)</script>" in page_text  # the hostile name is shown as text, not run
    assert scripts["result"]["value"] == 0

    png = base64.b64decode(shot["data"])
    Path(tmp_path / "report.png").write_bytes(png)
    distinct, inked = _distinct_colours(png)
    assert distinct > 50, distinct  # text, tables and plots, not a blank or one-colour page
    assert inked > 0.05, inked

"""Progress: the ``progress=`` callback of every API (told from the calling thread, never decreasing, ending at the
total), the throttle, and the command line's bar (on a pseudo-terminal: a bar on stderr; piped, ``--json`` or
``TQDM_DISABLE``: none)."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import torchweights as tw
from torchweights import progress
from torchweights.storage import io_settings


class Calls:
    """A callback that records its calls and the thread of each."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []
        self.threads: set[int] = set()

    def __call__(self, done: int, total: int) -> None:
        self.calls.append((done, total))
        self.threads.add(threading.get_ident())

    def check(self) -> int:
        """Called from this thread only, ``done`` never decreasing and never above the total, last at the total;
        returns the total."""
        assert self.calls and self.threads == {threading.get_ident()}
        dones = [d for d, _ in self.calls]
        assert dones == sorted(dones) and all(d <= t for d, t in self.calls)
        done, total = self.calls[-1]
        assert done == total
        return total


@pytest.fixture(autouse=True)
def every_update(monkeypatch: pytest.MonkeyPatch) -> None:
    """No throttle, so that small test files give several calls."""
    monkeypatch.setattr(progress, "INTERVAL", 0.0)


@pytest.fixture
def big(tmp_path: Path) -> Path:
    path = tmp_path / "big.pt"
    torch.save({f"w{i}": torch.randn(256, 256) for i in range(8)}, path)  # 8 x 256 KiB
    return path


def test_meter_throttles_and_finishes_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = Calls()
    meter = progress.Meter(calls, 10, interval=3600)
    meter.advance(4)  # the first call is made at once (nothing told yet), the next ones an interval later
    meter.advance(4)
    meter.advance(40)  # never past the total
    meter.finish()
    meter.finish()
    assert calls.calls == [(4, 10), (10, 10)]
    empty = Calls()
    with progress.metered(empty):
        pass
    assert empty.calls == [(0, 0)]


@pytest.mark.parametrize("threads", [1, 4])
def test_load_and_load_into(big: Path, threads: int) -> None:
    calls = Calls()
    with io_settings(piece_bytes=64 * 1024, threads=threads):
        sd = tw.load(big, progress=calls)
    assert calls.check() == sum(t.nbytes for t in sd.values()) and len(calls.calls) > 3
    model = torch.nn.ParameterDict({k: torch.nn.Parameter(torch.empty(256, 256)) for k in sd})
    calls = Calls()
    with io_settings(piece_bytes=64 * 1024, threads=threads):
        report = tw.load_into(model, big, progress=calls)
    assert calls.check() == report.bytes_read and len(calls.calls) > 3
    assert torch.equal(model["w3"], sd["w3"])
    dry = Calls()
    tw.load_into(model, big, dry_run=True, progress=dry)
    assert dry.calls == []  # nothing read


def test_convert_counts_hashing_writing_and_verifying(big: Path, tmp_path: Path) -> None:
    calls = Calls()
    report = tw.convert(big, tmp_path / "out.safetensors", progress=calls)
    assert calls.check() == os.path.getsize(big) + 2 * report.nbytes
    calls = Calls()
    report = tw.convert(big, tmp_path / "out.pt", to="torch", verify=False, progress=calls)
    assert calls.check() == os.path.getsize(big) + report.nbytes


def test_diff_and_verify(big: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.safetensors"
    save_file({k: v + 1 for k, v in tw.load(big).items()}, other)
    calls = Calls()
    report = tw.diff(big, other, progress=calls)
    assert calls.check() == 2 * 8 * 256 * 256 * 4 and report.counts()["different"] == 8
    calls = Calls()
    manifest = tmp_path / "SHA256SUMS"
    manifest.write_text(f"{tw.tools.verify.sha256_file(str(big))}  big.pt\n")
    report = tw.verify(big, manifest=manifest, progress=calls)
    assert report.ok
    members = calls.check() - os.path.getsize(big)  # every member's bytes, then the file hashed
    assert 8 * 256 * 256 * 4 <= members < os.path.getsize(big)


def test_scan_tree_counts_files(big: Path, tmp_path: Path) -> None:
    calls = Calls()
    tw.scan_tree(tmp_path, progress=calls)
    assert calls.check() == 1
    assert calls.calls == [(0, 1), (1, 1), (1, 1)]  # the total first, after the file, then the end


def test_no_bar_no_tqdm(tmp_path: Path) -> None:
    """tqdm is imported by a bar only (torch imports it on its own, so this is checked where torch is not: the
    progress module and a folder scan, piped)."""
    torch.save({"w": torch.ones(2)}, tmp_path / "a.pt")
    code = (
        "import sys, torchweights.progress; from torchweights.cli import main; rc = main(['scan', sys.argv[1]]); "
        "assert 'tqdm' not in sys.modules and 'torch' not in sys.modules; sys.exit(rc)"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "1 file: 1 clean"


def _on_terminal(args: list[str], env: dict[str, str] | None = None) -> tuple[str, str]:
    """Run the command line with stderr on a pseudo-terminal (stdout piped); its stdout and what the terminal got."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0 columns wide
    environment = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"} | (env or {})
    command = [sys.executable, "-m", "torchweights", *args]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=follower, env=environment) as child:
        os.close(follower)
        seen = b""
        while True:
            ready, _, _ = select.select([leader], [], [], 60)
            if not ready:
                break
            try:
                piece = os.read(leader, 65536)
            except OSError:  # the child closed its end
                break
            if not piece:
                break
            seen += piece
        out = child.stdout.read() if child.stdout else b""
        child.wait(60)
    os.close(leader)
    return out.decode(), seen.decode(errors="replace")


def test_cli_bar_on_a_terminal_only(big: Path, tmp_path: Path) -> None:
    out, terminal = _on_terminal(["convert", str(big), str(tmp_path / "a.safetensors")])
    assert "convert" in terminal and "%" in terminal and "B/s" in terminal  # tqdm's bar, in bytes
    assert "%|" not in out  # the report on stdout has no bar
    for quiet in (["--json"], []):
        env = {} if quiet else {"TQDM_DISABLE": "1"}
        out, terminal = _on_terminal(["convert", "--force", str(big), str(tmp_path / "a.safetensors"), *quiet], env)
        assert "%" not in terminal and out
    piped = subprocess.run(
        [sys.executable, "-m", "torchweights", "convert", "--force", str(big), str(tmp_path / "a.safetensors")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert piped.stderr == "" and piped.stdout


def test_cli_scan_of_a_folder_shows_files(big: Path, tmp_path: Path) -> None:
    _, terminal = _on_terminal(["scan", str(tmp_path)])
    assert "scan" in terminal and "file" in terminal and "%" in terminal
    out, terminal = _on_terminal(["scan", str(big)])  # one file: no bar
    assert terminal == "" and ": CLEAN" in out

"""Fuzzing the command line: ``torchweights inspect / scan / check / verify / diff / convert`` on garbage files.

Inputs: bytes that start like a format (zip, pickle, ``.npy``, JSON, safetensors) and continue at random, the
valid samples of ``_samples.base_samples`` damaged (``_samples.damaged``), and the undamaged samples. Each command
runs through :func:`torchweights.cli.main` in this process (any exception escaping it fails the test), with
``--json`` or not; a few run as real processes (``python -m torchweights``).

Checked: the exit code is one the command documents (``inspect`` and ``convert`` 0 or 2; ``scan``, ``check``,
``verify``, ``diff`` 0, 1 or 2), stderr holds no Python traceback, an exit code of 2 comes with one
``ClassName [code]: message`` line on stderr (``scan``: with the verdict ``unreadable`` in its report), and
``--json`` output that exits 0 or 1 is valid JSON.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from _samples import Sample, base_samples, damaged
from torchweights.cli import main

from ._common import fuzz_settings

_FUZZ = fuzz_settings(25, deadline_factor=5)

SRC = str(Path(__file__).resolve().parents[2] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}

#: Exit codes each command documents (``torchweights.cli`` and each command's help).
EXIT_CODES = {
    "inspect": {0, 2},
    "scan": {0, 1, 2},
    "check": {0, 1, 2},
    "verify": {0, 1, 2},
    "diff": {0, 1, 2},
    "convert": {0, 2},
}
_ERROR_LINE = re.compile(r"^[A-Z]\w*Error \[[a-z0-9-]+\]: ", re.MULTILINE)
_HEADS = [
    b"PK\x03\x04",
    b"PK\x05\x06",
    b"\x80\x02",
    b"\x80\x04\x95",
    b"\x93NUMPY\x01\x00",
    b"{",
    b"\x10\x00" + b"\0" * 6,
    b"",
]

MODELS = textwrap.dedent(
    """
    import torch

    def build():
        return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.BatchNorm1d(3))
    """
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Sample], Path]:
    folder = tmp_path_factory.mktemp("cli")
    (folder / "fuzz_cli_models.py").write_text(MODELS)
    return base_samples(tmp_path_factory), folder


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _argv(command: str, path: Path, folder: Path, as_json: bool) -> list[str]:
    argv = [command, str(path)]
    if command == "check":
        argv += ["--model", f"{folder / 'fuzz_cli_models.py'}:build", "--strict", "false"]
    elif command == "diff":
        argv += [str(path)]
    elif command == "convert":
        out = folder / "converted"
        shutil.rmtree(out, ignore_errors=True)
        argv += [str(out)]
    return [*argv, "--json"] if as_json else argv


def _check_outcome(command: str, code: int, out: str, err: str, as_json: bool) -> None:
    assert code in EXIT_CODES[command], f"{command} exited {code}: {err[-2000:]}"
    assert "Traceback" not in err, err
    if code == 2 and command == "scan":  # a verdict (printed on stdout), not an error
        assert "unreadable" in out.lower(), out
    elif code == 2:
        assert _ERROR_LINE.search(err), f"{command} exited 2 without an error line: {err!r}"
    elif as_json:
        json.loads(out)


@st.composite
def inputs(draw: st.DrawFn, samples: dict[str, Sample]) -> tuple[str, dict[str, bytes], str]:
    """``(label, files, entry)``: garbage, a damaged sample, or an undamaged one."""
    kind = draw(st.sampled_from(["garbage", "damaged", "damaged", "valid"]))
    if kind == "garbage":
        data = draw(st.sampled_from(_HEADS)) + draw(st.binary(max_size=512))
        return "garbage", {"blob.bin": data}, "blob.bin"
    sample = samples[draw(st.sampled_from(sorted(samples)))]
    files = dict(sample.files)
    if kind == "damaged":
        name = draw(st.sampled_from(sorted(files)))
        files[name] = draw(damaged(files[name]))
    return f"{kind} {sample.name}", files, sample.entry


@_FUZZ
@given(data=st.data())
def test_commands_on_garbage(setup: tuple[dict[str, Sample], Path], data: st.DataObject) -> None:
    samples, folder = setup
    label, files, entry = data.draw(inputs(samples), label="input")
    case = folder / "case"
    shutil.rmtree(case, ignore_errors=True)
    case.mkdir()
    for name, content in files.items():
        (case / name).write_bytes(content)
    command = data.draw(st.sampled_from(sorted(EXIT_CODES)), label="command")
    as_json = data.draw(st.booleans(), label="json")
    code, out, err = _run(_argv(command, case / entry, folder, as_json))
    _check_outcome(command, code, out, err, as_json)
    event(f"{command} {label.split()[0]}: exit {code}")


def test_commands_as_processes(setup: tuple[dict[str, Sample], Path]) -> None:
    """The same checks on real processes (``python -m torchweights``, a start-up of a few seconds each, so only
    two): ``scan`` of seeded garbage files and a truncated zip, ``inspect`` of the truncated zip."""
    samples, folder = setup
    rng = random.Random(12)
    paths = []
    for i in range(8):
        data = bytearray(rng.choice(_HEADS) + rng.randbytes(rng.randint(0, 300)))
        path = folder / f"garbage{i}.bin"
        path.write_bytes(bytes(data))
        paths.append(path)
    sample = samples["zip"]
    broken = bytearray(sample.main)
    del broken[len(broken) // 2 :]
    (folder / "broken.pt").write_bytes(bytes(broken))
    paths.append(folder / "broken.pt")
    for argv in (["scan", "--json", *map(str, paths)], ["inspect", str(paths[-1])]):
        result = subprocess.run(
            [sys.executable, "-m", "torchweights", *argv],
            capture_output=True,
            text=True,
            env=ENV,
            check=False,
            timeout=120,
        )
        _check_outcome(argv[0], result.returncode, result.stdout, result.stderr, "--json" in argv)
        assert result.returncode == 2, (argv[0], result.returncode, result.stderr)  # every input is unreadable

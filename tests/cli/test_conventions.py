"""The command line's conventions, across every verb: ``-q``/``-v``, ``--json`` error objects, the exit codes each
``--help`` documents (parsed, then produced), bare ``torchweights``, did-you-mean, ``-V``, ``python -m``."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
import torch

import torchweights
import torchweights.api
from torchweights.cli import COMMANDS, main
from torchweights.errors import CorruptCheckpointError, NotACheckpointError

MODELS = textwrap.dedent(
    """
    import torch

    def build():
        return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    """
)


class _Reduce:
    """A pickled object whose loading would call ``fn(*args)``: what ``scan`` calls dangerous."""

    def __init__(self, fn: Any, *args: Any) -> None:
        self.fn = fn
        self.args = args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.fn, self.args


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Checkpoints for every verdict: a fitting one, one that does not fit, a changed one, a dangerous one, a text
    file named like a checkpoint, a missing path, a model file and sha256 manifests."""
    folder = tmp_path_factory.mktemp("conventions")
    (folder / "conventions_models.py").write_text(MODELS)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    torch.save(model.state_dict(), folder / "fits.pt")
    changed = {k: v + 1 for k, v in model.state_dict().items()}
    torch.save(changed, folder / "changed.pt")
    wide = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
    torch.save(wide.state_dict(), folder / "wide.pt")
    torch.save({"w": torch.zeros(2), "payload": _Reduce(os.system, "true")}, folder / "evil.pt")
    (folder / "bad.pt").write_text("these are not the weights you are looking for\n")
    digest = hashlib.sha256((folder / "fits.pt").read_bytes()).hexdigest()
    (folder / "GOOD_SUMS").write_text(f"{digest}  fits.pt\n")
    (folder / "BAD_SUMS").write_text(f"{'0' * 64}  fits.pt\n")
    yield {
        "dir": str(folder),
        "models": str(folder / "conventions_models.py"),
        "fits": str(folder / "fits.pt"),
        "changed": str(folder / "changed.pt"),
        "wide": str(folder / "wide.pt"),
        "evil": str(folder / "evil.pt"),
        "bad": str(folder / "bad.pt"),
        "missing": str(folder / "missing.pt"),
        "good_sums": str(folder / "GOOD_SUMS"),
        "bad_sums": str(folder / "BAD_SUMS"),
    }


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _out_dir(files: dict[str, str], name: str) -> str:
    return os.path.join(files["dir"], "out", name)


#: One command line per verb and exit code, with ``{fits}``-style fields from the ``files`` fixture. Every code a
#: verb's ``--help`` lists (but 130, interrupted, and 2's usage errors, tested on their own) is here, and nothing
#: else.
CASES: dict[str, dict[int, list[str]]] = {
    "inspect": {0: ["inspect", "{fits}"], 2: ["inspect", "{missing}"]},
    "scan": {0: ["scan", "{fits}"], 1: ["scan", "{evil}"], 2: ["scan", "{bad}"]},
    "check": {
        0: ["check", "{fits}", "--model", "{models}:build"],
        1: ["check", "{wide}", "--model", "{models}:build"],
        2: ["check", "{missing}", "--model", "{models}:build"],
    },
    "diff": {0: ["diff", "{fits}", "{fits}"], 1: ["diff", "{fits}", "{changed}"], 2: ["diff", "{fits}", "{missing}"]},
    "convert": {0: ["convert", "{fits}", "{out}"], 2: ["convert", "{missing}", "{out}"]},
    "verify": {
        0: ["verify", "{fits}", "--manifest", "{good_sums}"],
        1: ["verify", "{fits}", "--manifest", "{bad_sums}"],
        2: ["verify", "{bad}"],
    },
    "completion": {0: ["completion", "bash"]},
    "report": {
        0: ["report", "{fits}", "--html", "{out}"],
        1: ["report", "{wide}", "--model", "{models}:build", "--html", "{out}"],  # 1.weight left as initialised
        2: ["report", "{missing}", "--html", "{out}"],
    },
}


def _argv(template: list[str], files: dict[str, str], out: str) -> list[str]:
    return [word.format(out=out, **files) for word in template]


def _help(verb: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main([verb, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def _documented_codes(text: str) -> dict[int, str]:
    """The "exit codes:" block of a ``--help``: ``{code: meaning}`` (continuation lines joined)."""
    block = text[text.index("\nexit codes:\n") :].split("\n\n")[0].splitlines()[2:]
    codes: dict[int, str] = {}
    last = -1
    for line in block:
        found = re.match(r"^  (\d+)\s+(.*)$", line)
        if found:
            last = int(found.group(1))
            codes[last] = found.group(2)
        else:
            codes[last] += " " + line.strip()
    return codes


# ------------------------------------------------------------------------------------------------ exit codes


def test_every_verb_has_cases() -> None:
    assert set(CASES) == set(COMMANDS)


@pytest.mark.parametrize("verb", COMMANDS)
def test_help_documents_the_exit_codes_the_verb_returns(
    verb: str, files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    text = _help(verb, capsys)
    codes = _documented_codes(text)
    assert set(codes) == set(CASES[verb]) | {2, 130}, codes
    assert "the command line is invalid" in codes[2]
    examples = text[text.index("\nexamples:\n") :].splitlines()[2:]
    commands = [line.strip() for line in examples if line.strip() and not line.strip().startswith("#")]
    assert len(commands) >= 2 and all(c.startswith(("torchweights", "eval")) and verb in c for c in commands)
    for expected, template in CASES[verb].items():
        code, _, err = run(_argv(template, files, _out_dir(files, f"{verb}-{expected}")), capsys)
        assert code == expected, (template, err)


@pytest.mark.parametrize("verb", COMMANDS)
def test_usage_errors_exit_2(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([verb, "--no-such-option"])
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and f"usage: torchweights {verb}" in err and f"torchweights {verb}: error: " in err


# ------------------------------------------------------------------------------------------------ --json


JSON_VERBS = [verb for verb in COMMANDS if verb != "completion"]
#: Each verb on a missing path and on a file that is not a checkpoint.
BROKEN: dict[str, tuple[list[str], list[str]]] = {
    "inspect": (["inspect", "{missing}"], ["inspect", "{bad}"]),
    "scan": (["scan", "{missing}"], ["scan", "{bad}"]),
    "check": (["check", "{missing}", "--model", "{models}:build"], ["check", "{bad}", "--model", "{models}:build"]),
    "diff": (["diff", "{missing}", "{fits}"], ["diff", "{fits}", "{bad}"]),
    "convert": (["convert", "{missing}", "{out}"], ["convert", "{bad}", "{out}"]),
    "verify": (["verify", "{missing}"], ["verify", "{bad}"]),
    "report": (["report", "{missing}", "--html", "{out}"], ["report", "{bad}", "--html", "{out}"]),
}


@pytest.mark.parametrize("verb", JSON_VERBS)
@pytest.mark.parametrize("which", ["missing", "bad"])
def test_json_on_failure_is_one_error_object(
    verb: str, which: str, files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    template = BROKEN[verb][0 if which == "missing" else 1]
    code, out, err = run([*_argv(template, files, _out_dir(files, f"json-{verb}")), "--json"], capsys)
    assert code == 2
    data = json.loads(out)  # one object, nothing else on stdout
    want = "not-found" if which == "missing" else "text-file"
    if verb == "scan":  # scan reports every file, unreadable ones included: the error is in the file's report
        (report,) = data["reports"]
        assert report["verdict"] == "unreadable" and report["load_error"]["code"] == want
        return
    error = data["error"]
    assert set(error) == {"code", "type", "message", "fix", "docs_url"}
    assert error["docs_url"].endswith("#" + error["code"])
    assert error["code"] == want
    assert error["type"] == ("CheckpointNotFoundError" if which == "missing" else "NotACheckpointError")
    assert "Fix:" not in error["message"] and error["fix"]  # the fix split from the message
    assert error["message"] in err and error["fix"] in err  # the human line on stderr is unchanged


def test_json_error_fix_for_not_found(files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(["inspect", files["missing"], "--json"], capsys)
    error = json.loads(out)["error"]
    assert error["fix"] == "check the path and spelling."
    assert error["message"].startswith(f"No file or folder at '{files['missing']}'")


def test_json_error_for_a_model_factory(files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["check", files["fits"], "--model", f"{files['models']}:nope", "--json"], capsys)
    assert code == 2
    error = json.loads(out)["error"]
    assert error["code"] == "bad-factory" and error["type"] == "ModelFactoryError"
    assert "has no attribute 'nope'" in error["message"] and "Callables there: build" in error["message"]
    assert err.startswith("cannot build the model: --model ")


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["inspec", "x.pt", "--json"], "unknown command 'inspec' (did you mean 'inspect'?)"),
        (["--json", "inspekt", "x.pt"], "unknown command 'inspekt' (did you mean 'inspect'?)"),
        (["inspect", "--json"], "the following arguments are required: PATH"),
        (["diff", "a.pt", "b.pt", "--rtol", "-1", "--json"], "tolerance must be 0 or more"),
    ],
)
def test_json_usage_errors(argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    out, err = capsys.readouterr()
    error = json.loads(out)["error"]
    assert error["code"] == "usage" and error["type"] == "UsageError"
    assert says in error["message"] and error["fix"].startswith("see `torchweights")
    assert "usage: torchweights" in err and says in err


def test_json_success_is_unchanged(files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["verify", files["fits"], "--json"], capsys)
    assert code == 0 and "error" not in json.loads(out)


def test_check_dry_run_fills_in_the_bytes(files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["check", files["fits"], "--model", f"{files['models']}:build", "--json"], capsys)
    assert code == 0
    records = torchweights.api.open(files["fits"]).records
    assert json.loads(out)["totals"]["bytes"] == sum(r.nbytes for r in records.values()) == (4 * 8 + 8 + 8 * 2 + 2) * 4
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    dry = torchweights.load_into(model, files["fits"], dry_run=True)
    assert dry.bytes_read == torchweights.load_into(model, files["fits"]).bytes_read == 232
    _, text, _ = run(["check", files["fits"], "--model", f"{files['models']}:build"], capsys)
    assert "232 B to read" in text


# ------------------------------------------------------------------------------------------------ -q and -v


@pytest.mark.parametrize("verb", COMMANDS)
def test_quiet_prints_nothing_and_keeps_the_exit_code(
    verb: str, files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    for expected, template in CASES[verb].items():
        argv = _argv(template, files, _out_dir(files, f"quiet-{verb}-{expected}"))
        for where in ("after", "before"):
            line = [argv[0], "-q", *argv[1:]] if where == "after" else ["--quiet", *argv]
            if verb == "convert" and expected == 0:
                line[line.index(argv[2])] = argv[2] + f"-{where}"  # a fresh output each time
            code, out, err = run(line, capsys)
            assert (code, out) == (expected, ""), (line, err)
            if expected == 2 and verb != "scan":  # scan's verdict on an unreadable file is its (dropped) report
                assert "Error [" in err, err


def test_quiet_keeps_errors_on_stderr_and_drops_json(files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["inspect", "-q", "--json", files["missing"]], capsys)
    assert (code, out) == (2, "")
    assert err.startswith("CheckpointNotFoundError [not-found]: No file or folder")


def test_quiet_and_verbose_exclude_each_other(files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["inspect", "-q", "-v", files["fits"]], ["-q", "inspect", "-v", files["fits"]]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        assert "-q/--quiet" in capsys.readouterr().err


@pytest.fixture
def logging_open(monkeypatch: pytest.MonkeyPatch) -> None:
    """``api.open`` logs at every level on the ``torchweights`` logger, then finds no checkpoint."""

    def fake_open(path: str, *, allow_globals: Any = ()) -> Any:
        log = logging.getLogger("torchweights.api")
        log.debug("debug line")
        log.info("info line")
        log.warning("warning line")
        raise NotACheckpointError("not one", code="text-file")

    monkeypatch.setattr(torchweights.api, "open", fake_open)


@pytest.mark.usefixtures("logging_open")
@pytest.mark.parametrize(
    ("flags", "shown"),
    [
        (["-v"], {"info line", "warning line"}),
        (["-vv"], {"debug line", "info line", "warning line"}),
        (["-q"], set()),
    ],
)
def test_verbosity_sets_the_logger(flags: list[str], shown: set[str], capsys: pytest.CaptureFixture[str]) -> None:
    logger = logging.getLogger("torchweights")
    handlers, level = list(logger.handlers), logger.level
    for argv in ([*flags, "inspect", "x.pt"], ["inspect", *flags, "x.pt"]):
        code, _, err = run(argv, capsys)
        assert code == 2 and "NotACheckpointError [text-file]: not one" in err
        assert {line for line in ("debug line", "info line", "warning line") if line in err} == shown, err
        assert (logger.handlers, logger.level) == (handlers, level)  # restored after the command


def test_verbose_lists_every_finding(
    files: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchweights.tools.scan.text as scan_text

    monkeypatch.setattr(scan_text, "TEXT_FINDING_LIMIT", 0)
    cut, full, every = (
        re.sub(r"\d+\.\d+ s\b", "T s", run(["scan", *flags, files["evil"]], capsys)[1])
        for flags in ([], ["-v"], ["--all"])
    )
    assert full == every != cut
    assert "posix.system" in full or "os.system" in full or "nt.system" in full


# ------------------------------------------------------------------------------------------------ entry


def test_bare_command_prints_help_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["-q"], ["-v"]):
        code, out, err = run(argv, capsys)
        assert code == 0 and err == ""
        assert out.startswith("usage: torchweights") and all(verb in out for verb in COMMANDS)


@pytest.mark.parametrize(("typo", "meant"), [("inspec", "inspect"), ("scna", "scan"), ("verfy", "verify")])
def test_did_you_mean(typo: str, meant: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([typo, "model.pt"])
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert f"torchweights: error: unknown command '{typo}' (did you mean '{meant}'?)" in err


def test_no_guess_for_a_word_like_no_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["frobnicate"])
    err = capsys.readouterr().err
    assert "unknown command 'frobnicate'" in err and "did you mean" not in err


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([flag])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"torchweights {torchweights.__version__}\n"


@pytest.mark.parametrize("module", ["torchweights", "torchweights.cli"])
def test_python_dash_m(module: str, files: dict[str, str]) -> None:
    def python(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, timeout=120)

    version = python("-V")
    assert (version.returncode, version.stdout) == (0, f"torchweights {torchweights.__version__}\n")
    done = python("inspect", "--json", files["fits"])
    assert done.returncode == 0 and json.loads(done.stdout)["totals"]["tensors"] == 4
    failed = python("inspect", "--json", files["missing"])
    assert failed.returncode == 2 and json.loads(failed.stdout)["error"]["code"] == "not-found"
    bare = python()
    assert bare.returncode == 0 and bare.stdout.startswith("usage: torchweights")


def test_error_fix_and_to_dict() -> None:
    e = CorruptCheckpointError("the zip ends early (cut at 10 of 20 bytes).\nFix: download it again.", code="truncated")
    assert e.fix == "download it again."
    assert e.to_dict() == {
        "code": "truncated",
        "type": "CorruptCheckpointError",
        "message": "the zip ends early (cut at 10 of 20 bytes).",
        "fix": "download it again.",
        "docs_url": "https://torchweights.readthedocs.io/en/latest/errors/#truncated",
    }
    assert CorruptCheckpointError("no fix named; see Fix:this").fix is None
    assert (
        CorruptCheckpointError("Fix: at the start is no split").to_dict()["message"] == "Fix: at the start is no split"
    )

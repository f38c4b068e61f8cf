"""What the command line looks like where it is shown: colour for status words only on a terminal (``NO_COLOR``,
``FORCE_COLOR``), text wrapped between words with hanging indents at the terminal's width, name columns folded
before text wraps, and tied tensors counted once by ``inspect``. Run on a pseudo-terminal and on pipes."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from torchweights.style import PLAIN, Style, for_stream, marked, status, using, wants_colour
from torchweights.text import table, wrap

SRC = str(Path(__file__).resolve().parents[2] / "src")
ESC = "\x1b["
SGR = re.compile(r"\x1b\[[0-9;]*m")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "COLUMNS", "TERM")}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env["TERM"] = "xterm"
    env.update(extra)
    return env


def on_tty(args: list[str], **env: str) -> str:
    """stdout of ``python -m torchweights ARGS`` written to a pseudo-terminal (``\\r\\n`` made ``\\n``)."""
    parent, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "torchweights", *args], stdout=child, stderr=subprocess.DEVNULL, env=_env(**env)
    )
    os.close(child)
    out = b""
    while True:
        try:
            chunk = os.read(parent, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(parent)
    proc.wait(timeout=120)
    return out.decode().replace("\r\n", "\n")


def on_pipe(args: list[str], **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "torchweights", *args], capture_output=True, text=True, env=_env(**env), timeout=120
    )
    return result.stdout


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.lm_head = nn.Linear(4, 10, bias=False)
        self.lm_head.weight = self.embed.weight
        self.norm = nn.LayerNorm(4)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A whole model saved with torch.save: its class is an unknown global (a scan warning with a long message)."""
    path = tmp_path_factory.mktemp("term") / "model.pt"
    torch.save(Tied(), path)
    return path


# ------------------------------------------------------------------------------------------------------- colour


def test_status_words_are_coloured_on_a_terminal_only(model_file: Path) -> None:
    tty = on_tty(["inspect", str(model_file)], COLUMNS="100")
    assert f"{ESC}32msafe{ESC}0m" in tty
    assert f"{ESC}33munknown{ESC}0m" in tty
    coloured = [line for line in tty.splitlines() if ESC in line]
    assert coloured and all(SGR.sub("", line).split()[0] in ("safe", "known", "unknown") for line in coloured)
    piped = on_pipe(["inspect", str(model_file)])
    assert ESC not in piped
    assert SGR.sub("", tty) == piped  # the same text, at the same width


def test_no_color_turns_it_off_and_force_color_on(model_file: Path) -> None:
    assert ESC not in on_tty(["scan", str(model_file)], NO_COLOR="1")
    assert f"{ESC}32mCLEAN{ESC}0m" in on_tty(["scan", str(model_file)], NO_COLOR="")  # empty: not set
    assert f"{ESC}33mwarning{ESC}0m" in on_pipe(["scan", str(model_file)], FORCE_COLOR="1")
    assert ESC not in on_pipe(["scan", str(model_file)], FORCE_COLOR="1", NO_COLOR="1")
    assert ESC not in on_tty(["scan", str(model_file)], TERM="dumb")


def test_color_option_wins_over_the_environment_and_the_stream(model_file: Path) -> None:
    assert f"{ESC}32mCLEAN{ESC}0m" in on_pipe(["scan", "--color=always", str(model_file)], NO_COLOR="1")
    assert ESC not in on_tty(["scan", "--color", "never", str(model_file)], FORCE_COLOR="1")
    assert f"{ESC}32mCLEAN{ESC}0m" in on_tty(["scan", "--color=auto", str(model_file)])
    tree = on_pipe(["scan", "--colour=always", str(model_file.parent)])  # a folder: one line per file
    assert f"{ESC}32mclean{ESC}0m" in tree


def test_names_from_the_file_are_never_coloured_and_control_characters_are_escaped(tmp_path: Path) -> None:
    names = ["FAIL", "dangerous", "different", "evil\x1b[31mred"]
    torch.save({n: torch.zeros(2) for n in names}, tmp_path / "a.pt")
    torch.save({n: torch.ones(2) for n in names}, tmp_path / "b.pt")
    out = on_pipe(["diff", str(tmp_path / "a.pt"), str(tmp_path / "b.pt")], FORCE_COLOR="1")
    rows = [line for line in out.splitlines() if "different" in SGR.sub("", line) and "max abs" in line]
    assert len(rows) == 4
    for row in rows:  # only the status column is coloured, the name after it never
        assert row.startswith(f"  {ESC}33mdifferent{ESC}0m  ")
        assert ESC not in row[len(f"  {ESC}33mdifferent{ESC}0m") :]
    assert "evil\\x1b[31mred" in out and "\x1b[31mred" not in out


def test_the_colour_decision() -> None:
    class Tty:
        def isatty(self) -> bool:
            return True

    class Pipe:
        def isatty(self) -> bool:
            return False

    tty, pipe = Tty(), Pipe()
    assert wants_colour(tty, environ={})  # type: ignore[arg-type]
    assert not wants_colour(pipe, environ={})  # type: ignore[arg-type]
    assert not wants_colour(tty, environ={"NO_COLOR": "1", "FORCE_COLOR": "1"})  # type: ignore[arg-type]
    assert wants_colour(pipe, environ={"FORCE_COLOR": "1"})  # type: ignore[arg-type]
    assert not wants_colour(tty, environ={"TERM": "dumb"})  # type: ignore[arg-type]
    assert wants_colour(pipe, "always", environ={"NO_COLOR": "1"})  # type: ignore[arg-type]
    assert not wants_colour(tty, "never", environ={})  # type: ignore[arg-type]
    assert for_stream(pipe, environ={}) == PLAIN  # type: ignore[arg-type]
    assert for_stream(pipe, environ={"COLUMNS": "60"}).width == 60  # type: ignore[arg-type]
    assert for_stream(pipe, environ={"COLUMNS": "10"}).width == 40  # type: ignore[arg-type]


def test_only_marked_words_are_painted() -> None:
    look = Style(colour=True)
    assert look.paint("OK") == "OK"  # not marked: never coloured, whatever it says
    assert look.paint(status("OK")) == f"{ESC}32mOK{ESC}0m"
    assert look.paint(marked("FAILED: 2 missing", "FAILED")) == f"{ESC}31mFAILED{ESC}0m: 2 missing"
    assert look.paint(status("lm_head")) == "lm_head"  # not a status word
    assert PLAIN.paint(status("OK")) == "OK"


# ------------------------------------------------------------------------------------------------------- width


@pytest.mark.parametrize("columns", [60, 160])
def test_messages_wrap_between_words_with_a_hanging_indent(model_file: Path, columns: int) -> None:
    import torchweights as tw

    message = tw.scan(model_file).findings[0].message
    assert len(message) > 160  # so it wraps at both widths
    out = on_tty(["scan", str(model_file)], COLUMNS=str(columns), NO_COLOR="1").splitlines()
    first = next(i for i, line in enumerate(out) if line.startswith("      "))
    block = [out[first]]
    for line in out[first + 1 :]:
        if not line.startswith("      ") or line.startswith("       "):
            break
        block.append(line)
    assert len(block) >= 2
    assert all(len(line) <= columns for line in block)
    assert " ".join(line.strip() for line in block) == message  # no word cut, none lost
    assert all(line.startswith("      ") and line[6] != " " for line in block)  # hanging under the first


@pytest.mark.parametrize("columns", [60, 160])
def test_every_line_fits_and_name_columns_fold_first(tmp_path: Path, columns: int) -> None:
    long = "encoder." + ".".join(f"very_long_module_name_{i}" for i in range(6))
    torch.save({f"{long}.weight": torch.zeros(3), "short.weight": torch.zeros(2)}, tmp_path / "a.pt")
    torch.save({f"{long}.weight": torch.ones(3), "short.weight": torch.zeros(2, 2)}, tmp_path / "b.pt")
    out = on_tty(["diff", str(tmp_path / "a.pt"), str(tmp_path / "b.pt")], COLUMNS=str(columns), NO_COLOR="1")
    row = next(line for line in out.splitlines() if line.startswith("  different"))
    assert len(row) <= columns
    name = row.split()[1]
    assert "..." in name and name.startswith("encoder.very_") and name.endswith(".weight")
    assert len(name) == (24 if columns == 60 else 160 - len(row) + len(name))  # as narrow as it must be
    assert "max abs 1" in row or columns == 60


def test_table_folds_names_then_wraps_text_under_itself() -> None:
    rows = [["blocks.0.attention.query_key_value.weight", "the text column says a good deal more than fits here"]]
    lines = table(rows, shrink=[0], wrap_last=True, width=60)
    assert lines[0].startswith("  blocks.0.atten....weight  the text")  # folded to 24 characters
    start = lines[0].index("the text")
    assert all(len(line) <= 60 for line in lines)
    assert all(line.startswith(" " * start) and line[start] != " " for line in lines[1:])
    assert " ".join(line.strip() for line in [lines[0][start:], *lines[1:]]) == rows[0][1]
    assert table(rows, width=None) == ["  " + "  ".join(rows[0])]


def test_wrap_follows_the_style_in_effect() -> None:
    text = " ".join(["word"] * 40)
    assert max(map(len, wrap(text))) <= PLAIN.width  # type: ignore[operator]
    with using(Style(width=60)):
        assert max(map(len, wrap(text, indent="  - ", hang="    "))) <= 60
        assert all(line.startswith("    word") for line in wrap(text, indent="  - ", hang="    ")[1:])
    with using(Style(width=None)):
        assert wrap(text) == ["  " + text]


# ------------------------------------------------------------------------------------------------------- tied


def test_inspect_counts_tied_tensors_once_and_names_them(tmp_path: Path) -> None:
    model = Tied()
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    data = json.loads(on_pipe(["inspect", str(tmp_path / "sd.pt"), "--json"]))
    assert data["tied"] == {"lm_head.weight": "embed.weight"}
    unique = 10 * 4 + 4 + 4
    assert data["totals"] == {"tensors": 4, "numel": unique, "nbytes": unique * 4, "tied": 1}
    assert data["dtypes"]["float32"] == {"tensors": 4, "numel": unique, "nbytes": unique * 4}
    text = on_pipe(["inspect", str(tmp_path / "sd.pt")])
    assert "tensors  4 (1 tied, counted once)" in text
    assert f"params   {unique} ({unique})" in text
    assert "lm_head.weight  =  embed.weight" in text
    # a whole model pickled with its tied parameters, and the same after tw.convert to safetensors (aliases)
    assert json.loads(on_pipe(["inspect", str(tmp_path / "sd.pt"), "--json"]))["totals"]["numel"] == unique
    import torchweights as tw

    torch.save(model, tmp_path / "whole.pt")
    assert tw.open(tmp_path / "whole.pt").tied == {"lm_head.weight": "embed.weight"}
    tw.convert(tmp_path / "sd.pt", tmp_path / "sd.safetensors")
    assert tw.open(tmp_path / "sd.safetensors").tied == {"lm_head.weight": "embed.weight"}
    untied = {"a": torch.zeros(4), "b": torch.zeros(4)}
    torch.save(untied, tmp_path / "untied.pt")
    assert tw.open(tmp_path / "untied.pt").tied == {}

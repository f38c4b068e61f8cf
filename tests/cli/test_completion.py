"""``torchweights completion bash|zsh|fish``: scripts generated from the parser; the bash one is loaded and run."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from torchweights.cli import COMMANDS, build_parser, main
from torchweights.cli.completion import options, render


def script(shell: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["completion", shell]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return out


def complete(path: Path, line: str) -> list[str]:
    """What the bash script offers for ``line`` (the cursor at its end), by calling its function as bash would."""
    words = line.split(" ")
    program = (
        f"source {shlex.quote(str(path))}\n"
        f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        "_torchweights\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    result = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [w for w in result.stdout.splitlines() if w]


@pytest.fixture
def bash_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    path = tmp_path / "torchweights.bash"
    path.write_text(script("bash", capsys))
    return path


def test_bash_script_parses(bash_script: Path) -> None:
    result = subprocess.run(["bash", "-n", str(bash_script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_bash_completes_commands_options_and_values(bash_script: Path) -> None:
    top = ["-h", "--help", "-V", "--version", "-q", "--quiet", "-v", "--verbose"]
    assert complete(bash_script, "torchweights ") == [*COMMANDS, *top]
    assert complete(bash_script, "torchweights c") == ["check", "convert", "completion"]
    assert complete(bash_script, "torchweights -q ch") == ["check"]
    assert complete(bash_script, "torchweights check --str") == ["--strict"]
    assert complete(bash_script, "torchweights check x.pt --strict ") == ["false", "model", "true"]
    assert complete(bash_script, "torchweights convert a.pt out --to s") == ["safetensors"]
    assert complete(bash_script, "torchweights completion ") == ["bash", "zsh", "fish"]
    assert complete(bash_script, "torchweights scan --j") == ["--json"]
    # file names (and values without choices) are left to the shell's default completion
    assert complete(bash_script, "torchweights inspect mod") == []
    assert complete(bash_script, "torchweights check x.pt --model ") == []


def test_every_option_of_every_verb_is_offered(bash_script: Path) -> None:
    parser = build_parser()
    for verb, sub in parser._subparsers._group_actions[0].choices.items():  # type: ignore[union-attr]
        offered = set(complete(bash_script, f"torchweights {verb} -"))
        assert offered == {s for strings, _, _, _ in options(sub) for s in strings}, verb


def test_zsh_runs_the_bash_function(capsys: pytest.CaptureFixture[str]) -> None:
    text = script("zsh", capsys)
    assert text.startswith("#compdef torchweights\nautoload -U +X bashcompinit && bashcompinit\n")
    assert text.split("\n", 2)[2] == render(build_parser(), "bash").replace("bash", "zsh", 2)


def test_fish_lines(capsys: pytest.CaptureFixture[str]) -> None:
    lines = script("fish", capsys).splitlines()
    assert all(line.startswith(("# ", "complete -c torchweights ")) for line in lines)
    for verb in COMMANDS:
        assert any(f"-n __fish_use_subcommand -f -a {verb} " in line for line in lines), verb
    assert (
        "complete -c torchweights -n '__fish_seen_subcommand_from check' -l strict -x -a 'false model true'"
        in "\n".join(lines)
    )
    assert all(line.count("'") % 2 == 0 or "\\'" in line for line in lines)


def test_unknown_shell_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["completion", "tcsh"])
    assert info.value.code == 2
    assert "invalid choice: 'tcsh'" in capsys.readouterr().err

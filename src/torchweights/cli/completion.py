"""``torchweights completion bash|zsh|fish``: a shell completion script, generated from the parser itself.

The script completes the commands, each command's options and the values of options with a fixed set of choices
(``--strict``, ``--to``...), and leaves file names to the shell. It is static text: pressing TAB runs no Python,
and nothing beyond the standard library is needed. (argcomplete, the alternative, asks the program itself on every
TAB, which costs a Python start-up per key press, and is one more dependency; a static script is what git, pip and
cargo's ``completion`` commands print.)

Install::

    torchweights completion bash > ~/.local/share/bash-completion/completions/torchweights
    torchweights completion zsh > "${fpath[1]}/_torchweights"
    torchweights completion fish > ~/.config/fish/completions/torchweights.fish
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

from . import EXIT_OK
from ._options import add_verb

__all__ = ["EXAMPLES", "EXIT_CODES", "SHELLS", "Option", "options", "register", "render", "run"]

#: The shells a script is written for.
SHELLS = ("bash", "zsh", "fish")

#: What each exit code of ``completion`` means (its ``--help`` lists them).
EXIT_CODES = {0: "the script was printed"}
#: ``(command line, what it does)`` for ``completion --help``.
EXAMPLES = (
    ('eval "$(torchweights completion bash)"', "completion in this bash session"),
    ("torchweights completion bash > ~/.local/share/bash-completion/completions/torchweights", "in every bash"),
    ('torchweights completion zsh > "${fpath[1]}/_torchweights"', "in zsh"),
    ("torchweights completion fish > ~/.config/fish/completions/torchweights.fish", "in fish"),
)

#: One option: ``(its option strings, its choices or None, whether it takes a value, its help)``.
Option = tuple[tuple[str, ...], tuple[str, ...] | None, bool, str]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``completion`` subcommand to the top-level parser."""
    parser = add_verb(
        subparsers,
        "completion",
        help="print a shell completion script (bash, zsh, fish)",
        description="Print a completion script for SHELL, generated from this command line's own parser: commands, "
        "options and option values complete on TAB, file names as the shell completes them.",
        exit_codes=EXIT_CODES,
        examples=EXAMPLES,
        json=None,
    )
    parser.add_argument("shell", metavar="SHELL", choices=SHELLS, help="one of: " + ", ".join(SHELLS))
    parser.set_defaults(handler=run, json=False)


def run(args: argparse.Namespace) -> int:
    """Print the script for ``args.shell``; return the exit code."""
    from . import build_parser

    sys.stdout.write(render(build_parser(), args.shell))
    sys.stdout.flush()
    return EXIT_OK


# --------------------------------------------------------------------------------------------------- the parser


def options(parser: argparse.ArgumentParser) -> list[Option]:
    """The options of ``parser`` (not its positional arguments)."""
    out: list[Option] = []
    for action in parser._actions:
        if not action.option_strings:
            continue
        # a type that checks a list (``--fail-on a,b``) names its words in a ``choices`` attribute
        listed = action.choices if action.choices is not None else getattr(action.type, "choices", None)
        choices = tuple(str(c) for c in listed) if listed is not None else None
        help_text = (action.help or "").split(";")[0].split(" (")[0]
        out.append((tuple(action.option_strings), choices, action.nargs != 0, help_text))
    return out


def _commands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """``(name, help, parser)`` of every subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name, ""), sub


def _positional_choices(parser: argparse.ArgumentParser) -> tuple[str, ...]:
    """The choices of the first positional argument that has some (``completion``'s SHELL)."""
    for action in parser._actions:
        if not action.option_strings and action.choices is not None:
            return tuple(str(c) for c in action.choices)
    return ()


# --------------------------------------------------------------------------------------------------- the scripts


def render(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script of ``parser`` for ``shell`` (one of :data:`SHELLS`)."""
    if shell == "fish":
        return _fish(parser)
    script = _bash(parser, shell)
    if shell == "zsh":  # zsh runs bash completion functions through bashcompinit
        return f"#compdef {parser.prog}\nautoload -U +X bashcompinit && bashcompinit\n{script}"
    return script


def _words(items: list[str] | tuple[str, ...]) -> str:
    return " ".join(items)


def _bash(parser: argparse.ArgumentParser, shell: str = "bash") -> str:
    prog = parser.prog
    function = "_" + prog.replace("-", "_")
    top = [s for strings, _, _, _ in options(parser) for s in strings]
    commands = [name for name, _, _ in _commands(parser)]
    cases: list[str] = []
    for name, _, sub in _commands(parser):
        opts = options(sub)
        values = [
            f'            {"|".join(s)}) COMPREPLY=($(compgen -W "{_words(c)}" -- "$cur")); return ;;'
            for s, c, _, _ in opts
            if c
        ]
        free = [s for strings, c, takes, _ in opts if takes and not c for s in strings]
        if free:
            values.append(f"            {'|'.join(free)}) return ;;")
        words = [s for strings, _, _, _ in opts for s in strings]
        positional = _positional_choices(sub)
        lines = [f"        {name})"]
        if values:
            lines += ['            case "$prev" in', *["    " + v for v in values], "            esac"]
        lines.append(
            f'            if [[ "$cur" == -* ]]; then COMPREPLY=($(compgen -W "{_words(words)}" -- "$cur")); return; fi'
        )
        if positional:
            lines.append(f'            COMPREPLY=($(compgen -W "{_words(positional)}" -- "$cur")); return')
        lines.append("            ;;")
        cases += lines
    return "\n".join(
        [
            f"# {shell} completion for {prog}: generated by `{prog} completion {shell}`",
            f"{function}() {{",
            "    local cur prev verb i",
            '    cur="${COMP_WORDS[COMP_CWORD]}"',
            '    prev="${COMP_WORDS[COMP_CWORD-1]}"',
            '    verb=""',
            "    for ((i = 1; i < COMP_CWORD; i++)); do",
            '        case "${COMP_WORDS[i]}" in',
            "            -*) ;;",
            '            *) verb="${COMP_WORDS[i]}"; break ;;',
            "        esac",
            "    done",
            '    case "$verb" in',
            '        "")',
            f'            COMPREPLY=($(compgen -W "{_words(commands + top)}" -- "$cur")); return ;;',
            *cases,
            "    esac",
            "    COMPREPLY=()  # file names: the shell's default completion (complete -o default)",
            "}",
            f"complete -o default -o bashdefault -F {function} {prog}",
            "",
        ]
    )


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish_option(prefix: str, strings: tuple[str, ...], choices: tuple[str, ...] | None, takes: bool, text: str) -> str:
    parts = [prefix]
    for s in strings:
        parts.append(f"-l {s[2:]}" if s.startswith("--") else f"-s {s[1:]}")
    if choices:
        parts.append(f"-x -a {_fish_quote(_words(choices))}")
    elif takes:
        parts.append("-r")
    if text:
        parts.append(f"-d {_fish_quote(text)}")
    return " ".join(parts)


def _fish(parser: argparse.ArgumentParser) -> str:
    prog = parser.prog
    lines = [f"# fish completion for {prog}: generated by `{prog} completion fish`"]
    for strings, choices, takes, text in options(parser):
        lines.append(_fish_option(f"complete -c {prog} -n __fish_use_subcommand", strings, choices, takes, text))
    for name, text, sub in _commands(parser):
        lines.append(f"complete -c {prog} -n __fish_use_subcommand -f -a {name} -d {_fish_quote(text.split(':')[0])}")
        when = f"complete -c {prog} -n {_fish_quote('__fish_seen_subcommand_from ' + name)}"
        for strings, choices, takes, option_text in options(sub):
            lines.append(_fish_option(when, strings, choices, takes, option_text))
        positional = _positional_choices(sub)
        if positional:
            lines.append(f"{when} -f -a {_fish_quote(_words(positional))}")
    return "\n".join(lines) + "\n"

"""The words of scan's findings that more than one part of the walk writes: names quoted and cut for a message,
where a member sits, and what a dangerous reference, a dangerous call or an unknown global means for loading.
"""

from __future__ import annotations

from ...text import printable
from ...unpickle.values import Reference

__all__ = ["call_text", "dangerous_text", "short_quote", "unknown_text", "within"]


def short_quote(text: str) -> str:
    """``text`` escaped and single-quoted, cut to 160 characters."""
    shown = printable(text)
    return f"'{shown[:160]}...'" if len(shown) > 160 else f"'{shown}'"


def within(where: str | None) -> str:
    """`` (in <where>)``, or nothing at the top level."""
    return f" (in {where})" if where else ""


def dangerous_text(name: str, how: str, where: str, latent: int, refused: bool) -> str:
    """The message of a dangerous global ``name`` (referenced ``how``): in a latent pickle, in one loading refuses
    the file for, or in one loading reads without running it."""
    via = {"getattr": " (built with builtins.getattr)", "BUILD": "", "EXT": " (through an extension code)"}.get(how, "")
    if name.startswith("copyreg extension code"):
        what = (
            f"{where} uses {name}: pickle.load resolves it through the loading process's copyreg registry, so any "
            "process where a library registered the code calls whatever that names (torch never writes these)"
        )
    elif how == "BUILD":
        what = f"{where} sets attributes that change behaviour under pickle.load: {name}"
    else:
        what = f"{where} references {name}{via}, which can run code or touch the system"
    if latent:
        return (
            f"{what}. It sits in an embedded pickle that loading does not run; code that unpickles it would. "
            "Do not unpickle that value."
        )
    if refused:
        return (
            f"{what}. tw.load refuses the file for it (nothing is executed); torch.load(weights_only=False) or "
            "pickle.load would run it. Do not load this file unless you wrote it yourself."
        )
    return (
        f"{what}. tw.load does not run it (no pickle it reads names it, and it never calls what a file names); "
        "pickle.load of this pickle would. Do not unpickle it unless you wrote the file yourself."
    )


def call_text(ref: Reference, where: str, latent: int) -> str:
    """The message of a call that ``pickle.load`` would make of a callable nobody vetted."""
    name = ref.name
    what = (
        f"{where} calls {name} with {ref.arguments} ({ref.how}): pickle.load and torch.load(weights_only=False) "
        f"would run it, and {name} is neither a reconstructor torchweights knows nor one of torch's own classes, "
        "so nothing vouches for what it does (many functions of the standard library and of other packages run "
        "commands or read files)"
    )
    if latent:
        return (
            f"{what}. It sits in an embedded pickle that loading does not run; code that unpickles it would. "
            "Do not unpickle that value."
        )
    return (
        f"{what}. tw.load does not run it (it becomes an inert stub). If {name} is a class you trust (an Enum "
        "member, for one, pickles as a call of its class with its value), allow it by name: "
        f"tw.scan(path, allow_globals=[{name!r}]) (CLI: --allow-global {name}); otherwise do not load this file "
        "with torch.load or pickle."
    )


def unknown_text(name: str, how: str, where: str, latent: int) -> str:
    """The message of a global torchweights does not know (kept as an inert stub when loading)."""
    text = (
        f"{where} references {name}, a class or function torchweights does not know; loading keeps it as an "
        "inert stub and never imports it"
    )
    if latent:
        text += " (in an embedded pickle)"
    return text + ". Allow it only if you trust the package that defines it (allow_globals=[...])."

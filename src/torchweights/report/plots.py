"""The plots of the HTML report, drawn with matplotlib (the optional extra ``torchweights[report]``) as inline SVG.

Each function returns one ``<svg>`` element as text, ready to sit in a page: text is drawn as paths (no font is
fetched), nothing refers to anything outside the element, and every label that comes from a file is made plain
text first (control characters escaped, ``$`` kept from starting mathtext); matplotlib escapes the rest of the
markup. matplotlib is imported only here, inside the functions, through :func:`pyplot`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from ..errors import RuleError
from ..fold import human_bytes
from ..text import printable
from .html import STATE_COLOURS

__all__ = [
    "BREAKDOWN_BARS",
    "INSTALL_HINT",
    "LABEL_LIMIT",
    "breakdown_plot",
    "change_plot",
    "layer_stats_plot",
    "pyplot",
]

#: The exact command that installs what the plots need.
INSTALL_HINT = "pip install 'torchweights[report]'"

#: Characters of a tensor name shown in a plot label (the page's tables have the whole name).
LABEL_LIMIT = 48

#: Bars of the per-module size chart (the smallest modules past it share one bar).
BREAKDOWN_BARS = 16

#: Flagged layers named next to their marks; the rest are marked only (the page text names them all).
NAMED_FLAGS = 12


def pyplot() -> Any:
    """matplotlib's ``pyplot`` on the non-interactive SVG backend.

    Raises:
        RuleError: code ``needs-matplotlib`` when matplotlib is not installed, with the command that installs it.
    """
    try:
        import matplotlib

        matplotlib.use("svg", force=True)
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuleError(
            f"the HTML report draws its plots with matplotlib, which is not installed here ({e}). "
            f"Fix: {INSTALL_HINT}",
            code="needs-matplotlib",
        ) from e
    return plt


def ticker() -> Any:
    """``matplotlib.ticker`` (after :func:`pyplot` has checked matplotlib is there)."""
    import matplotlib.ticker

    return matplotlib.ticker


def _label(name: str) -> str:
    text = printable(name)
    if len(text) > LABEL_LIMIT:
        text = "…" + text[-(LABEL_LIMIT - 1) :]
    return text.replace("$", r"\$")


def _svg(plt: Any, fig: Any, name: str) -> str:
    """The figure as one ``<svg>`` element (the XML prolog and doctype removed), and the figure closed. Every id
    in it (glyphs, clip paths) and every reference to one starts with ``name``, so that several plots on one page
    never share an id."""
    buffer = io.StringIO()
    with plt.rc_context({"svg.fonttype": "path", "svg.hashsalt": "torchweights"}):
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    start, end = text.find("<metadata>"), text.find("</metadata>")
    if 0 <= start < end:  # RDF boilerplate naming vocabularies by address: nothing a page needs
        text = text[:start] + text[end + len("</metadata>") :].lstrip("\n")
    for old, new in (('id="', f'id="{name}-'), ('href="#', f'href="#{name}-'), ("url(#", f"url(#{name}-")):
        text = text.replace(old, new)
    return text


def layer_stats_plot(
    names: Sequence[str], std: Sequence[float], abs_max: Sequence[float], flagged: Sequence[int]
) -> str:
    """Standard deviation and largest magnitude of each tensor (the caller picks them: the weight matrices and
    kernels) in file order, on a log scale: layers left at zero
    sit at the floor, exploded ones stand out on top. ``flagged`` (indices) are marked in red and the first
    :data:`NAMED_FLAGS` of them named. Zero and non-finite values are drawn at the floor and the ceiling."""
    plt = pyplot()
    finite = [v for v in (*std, *abs_max) if math.isfinite(v) and v > 0]
    floor = min(finite) / 10 if finite else 1e-8
    ceiling = max(finite) * 10 if finite else 1.0

    def clamp(values: Sequence[float]) -> list[float]:
        return [ceiling if not math.isfinite(v) else v if v > 0 else floor for v in values]

    xs = list(range(len(names)))
    fig, ax = plt.subplots(figsize=(11, 3.8))

    def line(values: Sequence[float]) -> list[float]:  # a gap where the value is NaN/Inf: its mark is at the top
        return [math.nan if not math.isfinite(v) else v if v > 0 else floor for v in values]

    ax.plot(xs, line(abs_max), ".-", color="#8250df", linewidth=0.8, markersize=3, label="abs max")
    ax.plot(xs, line(std), ".-", color="#0969da", linewidth=0.8, markersize=3, label="std")
    # values that have no place on a log axis are drawn at its edges, with their own marks and legend entries, so a
    # point at the top is never read as a real magnitude
    series = (*abs_max, *std)
    top = sorted({i % len(xs) for i, v in enumerate(series) if not math.isfinite(v)})
    bottom = sorted({i % len(xs) for i, v in enumerate(series) if math.isfinite(v) and v <= 0})
    if top:
        ax.scatter(top, [ceiling] * len(top), s=36, marker="^", color="#cf222e", zorder=3, label="NaN/Inf (at the top)")
    if bottom:
        ax.scatter(
            bottom, [floor] * len(bottom), s=36, marker="v", color="#6e7781", zorder=3, label="zero (at the floor)"
        )
    ax.set_ylim(floor / 2, ceiling * 2)
    if flagged:
        marked = clamp([abs_max[i] for i in flagged])
        ax.scatter(list(flagged), marked, s=60, marker="x", color=STATE_COLOURS["bad"], zorder=3, label="flagged")
        for i in list(flagged)[:NAMED_FLAGS]:
            ax.annotate(
                _label(names[i]),
                (i, clamp([abs_max[i]])[0]),
                fontsize=7,
                color=STATE_COLOURS["bad"],
                xytext=(8, 0),
                textcoords="offset points",
                va="center",
            )
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(ticker().MaxNLocator(integer=True))
    ax.set_xlabel("tensor, in file order")
    ax.set_ylabel("value (log scale)")
    ax.set_title("Per-layer weight statistics")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _svg(plt, fig, "layers")


def breakdown_plot(by_dtype: dict[str, int], by_group: dict[str, int]) -> str:
    """Two bar charts side by side, each as tall as its bars need: bytes per dtype, and bytes per top-level module
    (the :data:`BREAKDOWN_BARS` largest, the rest summed in one bar)."""
    plt = pyplot()
    groups = sorted(by_group.items(), key=lambda kv: -kv[1])
    if len(groups) > BREAKDOWN_BARS:
        rest = groups[BREAKDOWN_BARS - 1 :]
        groups = [*groups[: BREAKDOWN_BARS - 1], (f"({len(rest)} others)", sum(v for _, v in rest))]
    charts = (
        (sorted(by_dtype.items(), key=lambda kv: -kv[1]), "bytes by dtype"),
        (groups, "bytes by top-level module"),
    )
    svgs = []
    for items, title in charts:
        fig, ax = plt.subplots(figsize=(5.4, 0.8 + 0.28 * len(items)))
        labels = [_label(k or "(root)") for k, _ in items][::-1]
        values = [v for _, v in items][::-1]
        bars = ax.barh(range(len(values)), values, color="#0969da", height=0.7)
        ax.set_yticks(range(len(values)), labels, fontsize=8)
        ax.bar_label(bars, [human_bytes(v) for v in values], fontsize=7, padding=2)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.margins(x=0.2)
        for side in ("top", "right", "bottom"):
            ax.spines[side].set_visible(False)
        svgs.append(_svg(plt, fig, "dtypes" if title.endswith("dtype") else "modules"))
    return "".join(f'<div class="half">{svg}</div>' for svg in svgs)


def change_plot(names: Sequence[str], change: Sequence[float], against: str) -> str:
    """The relative change ``||a - b|| / ||b||`` of each tensor against the reference, in file order, log scale:
    what fine-tuning moved. Unchanged tensors sit at the floor; NaN or infinite changes stand at the ceiling, red."""
    plt = pyplot()
    positive = [v for v in change if math.isfinite(v) and v > 0]
    floor = min(positive) / 10 if positive else 1e-8
    ceiling = max(positive) * 10 if positive else 1.0
    values = [ceiling if not math.isfinite(v) else v if v > 0 else floor for v in change]
    fig, ax = plt.subplots(figsize=(11, 3.4))
    colours = ["#bf3989" if math.isfinite(v) else STATE_COLOURS["bad"] for v in change]
    ax.bar(range(len(values)), values, color=colours, width=0.8)
    for i, v in enumerate(change):
        if not math.isfinite(v):
            ax.annotate(
                "nan" if math.isnan(v) else "inf",
                (i, ceiling),
                fontsize=7,
                color=STATE_COLOURS["bad"],
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
            )
    ax.xaxis.set_major_locator(ticker().MaxNLocator(integer=True))
    ax.set_yscale("log")
    # the axis starts at the floor, so an unchanged tensor draws no bar (not one that reads as a small change)
    ax.set_ylim(floor, ceiling)
    unchanged = sum(1 for v in change if v == 0)
    ax.set_xlabel("tensor, in file order" + (f" ({unchanged} unchanged: no bar)" if unchanged else ""))
    ax.set_ylabel("||a - b|| / ||b||")
    ax.set_title(f"Relative change against {_label(against)}")
    ax.grid(True, axis="y", alpha=0.3)
    return _svg(plt, fig, "change")

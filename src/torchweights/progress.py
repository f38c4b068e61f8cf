"""Progress of long operations: one callback type for the Python API, one throttle, one terminal bar.

The API (``tw.load_into``, ``tw.convert``, ``tw.diff``, ``tw.verify``, ``tw.scan_tree``) takes ``progress=``, a
:data:`ProgressCallback`: ``progress(done, total)``, two ints, called

- from the thread that called the function (never from the read engine's worker threads),
- at most about every :data:`INTERVAL` seconds (:class:`Meter` throttles it), with ``done`` never decreasing,
- and once at the end with ``done == total`` (also for an empty job: ``progress(0, 0)``).

The unit is bytes of tensor data, except for ``tw.scan_tree`` (files). ``total`` is known before the first call,
except where a job reads in several passes (a load whose modules load through torch's own code, after the reads):
then it may grow, never shrink. An exception raised by the callback stops the operation (it is not swallowed).

The command line shows a tqdm bar on stderr (:func:`terminal_bar`) only when stderr is a terminal, ``--quiet`` and
``--json`` are off and ``TQDM_DISABLE`` is not set; tqdm is imported by the first update of a bar, never by
``import torchweights`` or by a load that shows none.

:func:`metered` makes a :class:`Meter` the current one for the code below it (a context variable), so the read
engine advances it without every layer in between passing it on.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

__all__ = ["INTERVAL", "Meter", "ProgressCallback", "TerminalBar", "cli_enabled", "current", "metered", "terminal_bar"]

#: ``progress(done, total)``: see the module docstring.
ProgressCallback = Callable[[int, int], None]

#: Seconds between two calls of a callback at least (the last call, ``done == total``, is always made).
INTERVAL = 0.1

_CURRENT: ContextVar[Meter | None] = ContextVar("torchweights_progress", default=None)


class Meter:
    """Counts work done and calls a :data:`ProgressCallback`, throttled; call it from one thread only."""

    def __init__(self, callback: ProgressCallback | None, total: int = 0, *, interval: float | None = None) -> None:
        self.callback = callback
        self.total = total
        self.done = 0
        self.interval = INTERVAL if interval is None else interval
        self.last = 0.0  # when the callback was last called (time.monotonic)
        self.finished = False

    def grow(self, n: int) -> None:
        """Add ``n`` to the total (work discovered after the start)."""
        self.total += n

    def advance(self, n: int) -> None:
        """``n`` more units done; the callback is called when :data:`INTERVAL` has passed since the last call."""
        self.done = min(self.done + n, self.total)
        if self.callback is not None:
            now = time.monotonic()
            if now - self.last >= self.interval:
                self.last = now
                self.callback(self.done, self.total)

    def finish(self) -> None:
        """Everything is done: one last call with ``done == total`` (once)."""
        if self.finished:
            return
        self.finished = True
        self.done = self.total
        if self.callback is not None:
            self.callback(self.total, self.total)


def current() -> Meter | None:
    """The :class:`Meter` of the innermost :func:`metered` block of this thread's context, or None."""
    return _CURRENT.get()


@contextmanager
def metered(callback: ProgressCallback | None, total: int = 0) -> Iterator[Meter]:
    """A :class:`Meter` for ``callback``, current for the block (see :func:`current`); finished when the block ends
    without an exception. With ``callback=None`` the meter counts and calls nothing."""
    meter = Meter(callback, total)
    token = _CURRENT.set(meter)
    try:
        yield meter
    finally:
        _CURRENT.reset(token)
    meter.finish()


class TerminalBar:
    """A tqdm bar on stderr, created by its first update; a :data:`ProgressCallback` (``bar(done, total)``)."""

    def __init__(self, description: str, unit: str) -> None:
        self.description = description
        self.unit = unit
        self.bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm  # only once a bar is shown: tqdm costs start-up time

            scaled = self.unit == "B"
            self.bar = tqdm(
                total=total,
                desc=self.description,
                unit=self.unit,
                unit_scale=scaled,
                unit_divisor=1000,  # decimal, as the reports' kB/MB/GB
                file=sys.stderr,
                leave=False,
                dynamic_ncols=True,
            )
        if total != self.bar.total:
            self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        """Remove the bar from the terminal (``leave=False``: the verb's own output follows)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _wanted(enabled: bool) -> bool:
    """A bar is shown when the caller allows it, stderr is a terminal and ``TQDM_DISABLE`` is unset or false."""
    if not enabled or os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no", "off"):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


@contextmanager
def terminal_bar(description: str, *, unit: str = "B", enabled: bool = True) -> Iterator[ProgressCallback | None]:
    """The callback that draws a bar on stderr for the block, or None when no bar is wanted (stderr not a
    terminal, ``enabled`` False for ``--quiet`` or ``--json``, ``TQDM_DISABLE`` set). The bar is removed at the end.

    Args:
        description: the words before the bar (``"convert"``, ``"scan"``).
        unit: ``"B"`` (shown scaled: MiB, GiB) or a word such as ``"file"``.
        enabled: False to show nothing whatever stderr is.
    """
    if not _wanted(enabled):
        yield None
        return
    bar = TerminalBar(description, unit)
    try:
        yield bar
    finally:
        bar.close()


def cli_enabled(args: Any) -> bool:
    """Whether a verb's parsed arguments allow a bar: neither ``--json`` nor ``--quiet`` (when the verb has them)."""
    return not getattr(args, "json", False) and not getattr(args, "quiet", False)

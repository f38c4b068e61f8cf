"""Shared by the fuzz tests of this folder: Hypothesis settings, a tensor comparison, and a tripwire that proves
nothing a pickle names was called."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from hypothesis import HealthCheck, settings

from _samples import DEADLINE_MS, EXAMPLES_OVERRIDE

#: Set when ``TW_FUZZ_EXAMPLES`` asks for a long run: examples are then drawn at random (a failure prints the
#: ``@reproduce_failure`` blob to replay it); the default short run is derandomized, the same on every run.
LONG_RUN = EXAMPLES_OVERRIDE is not None


def fuzz_settings(default_examples: int, *, deadline_factor: int = 1) -> settings:
    """Hypothesis settings for one fuzz test: ``default_examples`` examples (``TW_FUZZ_EXAMPLES`` overrides),
    derandomized unless a long run was asked for, no example database, the wall-clock deadline of
    ``_samples.DEADLINE_MS`` times ``deadline_factor`` (None when ``TW_FUZZ_DEADLINE_MS=0``)."""
    return settings(
        max_examples=int(EXAMPLES_OVERRIDE or default_examples),
        deadline=deadline_factor * DEADLINE_MS or None,
        derandomize=not LONG_RUN,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


def coverage_settings(examples: int) -> settings:
    """Settings for a test that checks what a generator reaches: always the same ``examples`` examples (not
    changed by ``TW_FUZZ_EXAMPLES``), so its assertions are about a fixed set."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


def bits(t: torch.Tensor) -> tuple[str, tuple[int, ...], bytes]:
    """A tensor's dtype, shape and bytes in row-major order, whatever its strides (a size-1 dimension may have any
    stride, which ``contiguous()`` keeps)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # complex32 is "experimental"
        dense = torch.empty(t.shape, dtype=t.dtype).copy_(t.detach()) if t.numel() else t.detach()
    data = dense.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return str(t.dtype), tuple(t.shape), data


#: Every call of :func:`trip` or construction of :class:`Trap`; the tests name ``fuzz._trap.trip`` (this module's
#: import name under pytest) in their pickles and check this list stays empty: the loader never imports or calls
#: anything a pickle names.
CALLS: list[tuple[str, Any]] = []


def trip(*args: Any, **kwargs: Any) -> None:
    """A function a hostile pickle calls: records the call."""
    CALLS.append(("trip", args))


class Trap:
    """A class a hostile pickle instantiates or builds: records it."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Trap:
        CALLS.append(("Trap.__new__", args))
        return super().__new__(cls)

    def __setstate__(self, state: Any) -> None:
        CALLS.append(("Trap.__setstate__", state))

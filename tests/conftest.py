"""Suite-wide checks.

Every :class:`~torchweights.errors.TorchWeightsError` built anywhere in the suite must carry a code registered in
:data:`torchweights.errors.CODES`, by the registered class or a subclass of it: a new code without its registry line
fails the test that first raises it (tests/test_errors_registry.py checks the same statically).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from torchweights.errors import CODES, TorchWeightsError


class UnregisteredCodeError(AssertionError):
    """A torchweights error was built with a code the registry does not list (or under the wrong class)."""


@pytest.fixture(autouse=True, scope="session")
def _every_error_code_is_registered() -> Iterator[None]:
    original = TorchWeightsError.__init__

    def checked(self: TorchWeightsError, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        entry = CODES.get(self.code)
        if entry is None or not isinstance(self, entry.cls):
            raise UnregisteredCodeError(
                f"{type(self).__name__} raised with code {self.code!r}, which torchweights.errors.CODES "
                + ("does not list" if entry is None else f"lists under {entry.cls.__name__}")
            )

    TorchWeightsError.__init__ = checked  # type: ignore[method-assign]
    try:
        yield
    finally:
        TorchWeightsError.__init__ = original  # type: ignore[method-assign]

"""User-facing errors: raised for bad input, printed by the CLIs without a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class UserInputError(ValueError):
    """Bad input from the user (a file, column, row or argument). The message names what is wrong and where."""


def cli_entry(main: Callable[..., T]) -> Callable[..., T]:
    """Wrap a CLI ``main``: a ``UserInputError`` prints ``error: <message>`` and exits with status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> T:
        try:
            return main(*args, **kwargs)
        except UserInputError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper

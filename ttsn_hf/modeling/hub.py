"""Hub access that fails fast and clearly while the Hub is unreachable (offline, as here)."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlparse

from huggingface_hub import constants

from ..errors import HubUnreachableError, UserInputError


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


def ensure_hub_reachable(saved_at: str | Path | None, timeout: float = 5.0) -> None:
    """Raise :class:`HubUnreachableError` at once (no retries) when the Hub cannot be reached."""
    where = f"the model is saved locally at {saved_at}" if saved_at else "the model was not pushed"
    if constants.HF_HUB_OFFLINE:
        raise HubUnreachableError(f"could not reach the Hugging Face Hub (HF_HUB_OFFLINE=1); {where}") from None
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
    except OSError as error:
        raise HubUnreachableError(
            f"could not reach the Hugging Face Hub at {constants.ENDPOINT} ({error}); {where}"
        ) from None

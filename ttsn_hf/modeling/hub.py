"""Hub access that fails fast and clearly while the Hub is unreachable (offline, as here)."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlparse

from huggingface_hub import constants

from ..errors import HubUnreachableError


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

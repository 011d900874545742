"""The catalogue that encoding, indexing and mining read, and where its embeddings are cached by default."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..errors import UserInputError

DEFAULT_CACHE_DIR = ".cache/ttsn_hf/embeddings"


@dataclass
class Catalogue:
    """Product ids and texts, row ``i`` of each for the same product (the row order of every embedding file)."""

    product_ids: list[str]
    texts: list[str]

    def __len__(self) -> int:
        return len(self.product_ids)


def load_catalogue(source: Any) -> Catalogue:
    """The catalogue of an ``EsciData`` (``.catalogue``), an ESCI folder or file, or a prepared ``data/`` folder.

    Columns are read straight from Arrow (memory-mapped for prepared data): no DataFrame over millions of rows."""
    if isinstance(source, str | os.PathLike):
        from ..data.esci import load_esci

        source = load_esci(source)
    table = source.catalogue
    table = getattr(table, "data", table)  # a datasets.Dataset's Arrow table
    columns = getattr(table, "column_names", None) or list(getattr(table, "columns", []))
    missing = [column for column in ("product_id", "product_text") if column not in columns]
    if missing:
        raise UserInputError(f"catalogue: missing column(s) {missing}; found {list(columns)}")
    return Catalogue(_strings(table, "product_id"), _strings(table, "product_text"))


def _strings(table: Any, column: str) -> list[str]:
    values = table[column]
    values = values.to_pylist() if hasattr(values, "to_pylist") else list(values)
    return ["" if value is None else str(value) for value in values]

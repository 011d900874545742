"""Arrow tables in bounded memory: the product table (id -> text), the judgements as sorted arrays, and dataset
folders read and written chunk by chunk.

Nothing here turns a whole table into Python objects. A dataset saved on disk is read in passes from its files, not
through its memory map: the map's pages would stay resident in the process (a pass over the full release's 1.4 GB
catalogue would add 1.4 GB to its RSS), while a file read leaves them to the page cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets.arrow_writer import ArrowWriter
from datasets.fingerprint import generate_random_fingerprint
from datasets.table import InMemoryTable

from ..atomic import atomic_path
from ..labels import LABELS

ROWS_PER_BATCH = 50_000
SHARD_FILE = "data-00000-of-00001.arrow"
CATALOGUE_FEATURES = datasets.Features(
    {"product_id": datasets.Value("string"), "product_text": datasets.Value("string")}
)


def in_memory_dataset(table: pa.Table) -> datasets.Dataset:
    """An Arrow table as an in-memory Dataset, without ``datasets`` fingerprinting it by serialising every row (a
    transient copy of the whole table: gigabytes for the full release). Nothing caches an in-memory dataset's
    transforms on disk, so a random fingerprint loses nothing."""
    return datasets.Dataset(InMemoryTable(table), fingerprint=generate_random_fingerprint())


def arrow_table(data: datasets.Dataset | pa.Table) -> pa.Table:
    """The rows of ``data`` as an Arrow table in order (zero-copy unless a dataset holds an indices mapping)."""
    if isinstance(data, pa.Table):
        return data
    if data._indices is None:
        return data.data.table
    return data.with_format("arrow")[:]


# ---------------------------------------------------------------- reading and writing in chunks


def table_batches(
    data: datasets.Dataset | pa.Table, columns: Sequence[str] | None = None, rows: int = ROWS_PER_BATCH
) -> Iterator[pa.Table]:
    """The rows of ``data`` in order, exactly ``rows`` at a time (the last batch fewer); only ``columns``."""
    files = _backing_files(data)
    if files is None:
        table = arrow_table(data)
        table = table.select(list(columns)) if columns is not None else table
        for start in range(0, len(table), rows):
            yield table.slice(start, rows)
        return
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in _file_batches(files, columns):
        pending.append(batch)
        count += batch.num_rows
        while count >= rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, rows).combine_chunks()
            rest = table.slice(rows)
            pending, count = rest.to_batches(), len(rest)
    if count:
        yield pa.Table.from_batches(pending).combine_chunks()


def _file_batches(files: list[str], columns: Sequence[str] | None) -> Iterator[pa.RecordBatch]:
    for path in files:
        with pa.OSFile(path) as source:
            reader = pa.ipc.open_stream(source)
            for batch in reader:
                yield batch.select(list(columns)) if columns is not None else batch


def _backing_files(data: datasets.Dataset | pa.Table) -> list[str] | None:
    """The Arrow files that hold exactly ``data``'s rows and columns in order, or None (in memory, a selection, a
    renamed column: then the table itself is read)."""
    if not isinstance(data, datasets.Dataset) or data._indices is not None or not data.cache_files:
        return None
    files = [item["filename"] for item in data.cache_files]
    schema, rows = data.data.schema.remove_metadata(), 0
    try:
        for path in files:
            with pa.memory_map(path) as source:  # reads the batches' headers only
                reader = pa.ipc.open_stream(source)
                if reader.schema.remove_metadata() != schema:
                    return None
                rows += sum(batch.num_rows for batch in reader)
    except (OSError, pa.ArrowException):
        return None
    return files if rows == data.data.num_rows else None


def write_dataset(
    tables: Iterable[pa.Table], features: datasets.Features, folder: str | os.PathLike
) -> datasets.Dataset:
    """Write ``tables`` (in order) as a ``save_to_disk`` folder, one table at a time, then open it memory-mapped.

    Written under a temporary name and renamed: a reader sees the previous folder or the complete new one."""
    folder = Path(folder)
    with atomic_path(folder) as temporary:
        temporary.mkdir(parents=True)
        shard = temporary / SHARD_FILE
        writer = ArrowWriter(features=features, path=str(shard))
        try:
            for table in tables:
                if len(table):
                    writer.write_table(table.select(list(features)).cast(features.arrow_schema))
            if writer.pa_writer is None:  # no rows at all: still a readable, empty dataset
                writer.write_table(features.arrow_schema.empty_table())
            writer.finalize()
        finally:
            writer.close()
        dataset = datasets.Dataset.from_file(str(shard))
        _write_state(temporary, dataset)
        del dataset
    return datasets.load_from_disk(str(folder))


def write_dataset_dict(splits: dict[str, Iterable[pa.Table]], features: datasets.Features, folder: Path) -> None:
    """:func:`write_dataset` for each split, in the layout of ``DatasetDict.save_to_disk``."""
    with atomic_path(folder) as temporary:
        temporary.mkdir(parents=True)
        for name, tables in splits.items():
            write_dataset(tables, features, temporary / name)
        (temporary / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}))


def _write_state(folder: Path, dataset: datasets.Dataset) -> None:
    """The two JSON files ``save_to_disk`` writes beside the Arrow shard, so ``load_from_disk`` reads the folder."""
    state = {
        "_data_files": [{"filename": SHARD_FILE}],
        "_fingerprint": dataset._fingerprint,
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": None,
    }
    (folder / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
    info = asdict(dataset._info)
    (folder / "dataset_info.json").write_text(json.dumps({key: info[key] for key in sorted(info)}, indent=2))


# ---------------------------------------------------------------- the product table


def _length_prefixed(digest, values: Iterable[str]) -> None:
    for value in values:
        encoded = str(value).encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)


def catalogue_fingerprint(product_ids: Iterable[str], texts: Iterable[str]) -> str:
    """A sha256 of the catalogue's ids and texts, in order (length-prefixed, so no two catalogues collide)."""
    digest = hashlib.sha256()
    for product_id, text in zip(product_ids, texts, strict=True):
        _length_prefixed(digest, (product_id, text))
    return digest.hexdigest()


class Products:
    """The product table: ``product_id`` -> ``product_text``, row ``i`` of each column the same product (the row order
    of every embedding file). Backed by Arrow (memory-mapped for prepared data): lookups take single rows, and whole
    passes (:meth:`text_chunks`, :meth:`fingerprint`) stream the table chunk by chunk."""

    def __init__(self, data: datasets.Dataset | pa.Table):
        self.data = data
        table = arrow_table(data)
        missing = [column for column in ("product_id", "product_text") if column not in table.column_names]
        if missing:
            from ..errors import UserInputError

            raise UserInputError(f"catalogue: missing column(s) {missing}; found {table.column_names}")
        self.table = table
        self._fingerprint: str | None = None
        self._ids: pa.Array | None = None

    @classmethod
    def from_lists(cls, product_ids: Sequence[str], texts: Sequence[str]) -> Products:
        if len(product_ids) != len(texts):
            from ..errors import UserInputError

            raise UserInputError(f"catalogue: {len(product_ids)} product ids but {len(texts)} product texts")
        ids = pa.array(["" if value is None else str(value) for value in product_ids], pa.string())
        text_values = pa.array(["" if value is None else str(value) for value in texts], pa.string())
        return cls(pa.table({"product_id": ids, "product_text": text_values}))

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def ids(self) -> pa.Array:
        """Every product id (one Arrow array: ~14 bytes a product, no Python strings)."""
        if self._ids is None:
            column = self.table.column("product_id")
            self._ids = pc.cast(column, pa.string()).combine_chunks() if len(column) else pa.array([], pa.string())
        return self._ids

    def ids_at(self, rows: Sequence[int] | np.ndarray) -> list[str]:
        return self.ids.take(pa.array(np.asarray(rows, dtype=np.int64))).to_pylist()

    def texts_at(self, rows: Sequence[int] | np.ndarray) -> list[str]:
        texts = self.table.column("product_text").take(pa.array(np.asarray(rows, dtype=np.int64)))
        return [value or "" for value in texts.to_pylist()]

    def rows_of(self, product_ids: pa.Array | pa.ChunkedArray | Sequence[str]) -> np.ndarray:
        """The catalogue row of each id (int64; -1 where the catalogue does not hold it)."""
        values = product_ids if isinstance(product_ids, pa.Array | pa.ChunkedArray) else pa.array(product_ids)
        rows = pc.index_in(pc.cast(values, pa.string()), value_set=self.ids)
        return pc.fill_null(rows, -1).to_numpy(zero_copy_only=False).astype(np.int64)

    def text_chunks(self, chunk_size: int) -> Iterator[list[str]]:
        """Every product text in row order, ``chunk_size`` at a time (streamed: one chunk in memory)."""
        for table in table_batches(self.data, ["product_text"], chunk_size):
            yield [value or "" for value in table.column(0).to_pylist()]

    def fingerprint(self) -> str:
        """:func:`catalogue_fingerprint` of the table, computed in one streamed pass (then kept)."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for table in table_batches(self.data, ["product_id", "product_text"]):
                ids, texts = table.column(0).to_pylist(), table.column(1).to_pylist()
                for product_id, text in zip(ids, texts, strict=True):
                    _length_prefixed(digest, (product_id or "", text or ""))
            self._fingerprint = digest.hexdigest()
        return self._fingerprint


# ---------------------------------------------------------------- judgements as arrays

LABEL_CODES = {label: code for code, label in enumerate(LABELS)}


@dataclass
class Judgements:
    """Every judgement as sorted arrays (a few bytes each, never a Python dict over them).

    ``queries`` holds each judged query once (``query_id``, ``query``, ``split``), sorted by query id; query ``q``'s
    judged catalogue rows are ``rows[offsets[q]:offsets[q + 1]]`` (ascending), their labels ``labels`` beside them
    (codes: positions in :data:`~ttsn_hf.labels.LABELS`)."""

    queries: pa.Table
    offsets: np.ndarray
    rows: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        self._query_ids = np.asarray(self.queries.column("query_id").to_pylist(), dtype=str)

    @classmethod
    def build(cls, judgements: datasets.Dataset | pa.Table, products: Products) -> Judgements:
        """From a judgements table (``query_id``, ``query``, ``product_id``, ``esci_label``, ``split``); judgements
        of products the catalogue does not hold are left out."""
        table = arrow_table(judgements)
        query_ids = pc.cast(table.column("query_id"), pa.string())
        unique = pc.unique(query_ids)
        unique = unique.take(pc.sort_indices(unique))
        codes = pc.index_in(query_ids, value_set=unique).to_numpy(zero_copy_only=False).astype(np.int32)
        rows = products.rows_of(table.column("product_id"))
        labels = pc.index_in(table.column("esci_label"), value_set=pa.array(LABELS))
        labels = pc.fill_null(labels, -1).to_numpy(zero_copy_only=False).astype(np.int8)
        order = np.lexsort((rows, codes))
        first = np.zeros(len(unique), dtype=np.int64)  # a row of each query, for its text and split
        first[codes[order[::-1]]] = order[::-1]
        queries = pa.table(
            {
                "query_id": unique,
                "query": pc.cast(table.column("query"), pa.string()).take(pa.array(first)),
                "split": pc.cast(table.column("split"), pa.string()).take(pa.array(first)),
            }
        )
        kept = order[rows[order] >= 0]
        offsets = np.zeros(len(unique) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(np.bincount(codes[kept], minlength=len(unique)))
        return cls(queries, offsets, rows[kept].astype(np.int32), labels[kept])

    @classmethod
    def from_sets(cls, by_label: dict[str, dict[str, Iterable[str]]], products: Products) -> Judgements:
        """From ``{label: {query_id: product ids}}`` (small inputs, e.g. tests and the mining core)."""
        records = [
            (str(query_id), str(product_id), label)
            for label, by_query in by_label.items()
            for query_id, product_ids in by_query.items()
            for product_id in product_ids
        ]
        query_ids, product_ids, labels = (
            (list(values) for values in zip(*records, strict=True)) if records else ([],) * 3
        )
        table = pa.table(
            {
                "query_id": pa.array(query_ids, pa.string()),
                "query": pa.array(query_ids, pa.string()),
                "product_id": pa.array(product_ids, pa.string()),
                "esci_label": pa.array(labels, pa.string()),
                "split": pa.array(["train"] * len(records), pa.string()),
            }
        )
        return cls.build(table, products)

    def __len__(self) -> int:
        return len(self.rows)

    def position(self, query_id: str) -> int:
        """The query's position in ``queries`` (-1 if it has no judgement)."""
        position = int(np.searchsorted(self._query_ids, str(query_id)))
        found = position < len(self._query_ids) and self._query_ids[position] == str(query_id)
        return position if found else -1

    def positions(self, query_ids: Sequence[str]) -> np.ndarray:
        values = np.asarray([str(query_id) for query_id in query_ids], dtype=str)
        if not len(self._query_ids):
            return np.full(len(values), -1, dtype=np.int64)
        positions = np.searchsorted(self._query_ids, values).clip(max=len(self._query_ids) - 1)
        return np.where(self._query_ids[positions] == values, positions, -1)

    def rows_of(self, position: int, labels: Iterable[str] | None = None) -> np.ndarray:
        """The catalogue rows judged for the query at ``position`` (with one of ``labels``; all by default)."""
        if position < 0:
            return np.empty(0, dtype=np.int32)
        start, end = self.offsets[position], self.offsets[position + 1]
        rows = self.rows[start:end]
        if labels is None:
            return rows
        return rows[np.isin(self.labels[start:end], [LABEL_CODES[label] for label in labels])]

    def labels_of(self, position: int) -> list[str]:
        if position < 0:
            return []
        return [LABELS[code] for code in self.labels[self.offsets[position] : self.offsets[position + 1]]]

    def query_ids(self, split: str | None = None) -> list[str]:
        """Sorted query ids (of one ``split``: train or test)."""
        ids = self.queries.column("query_id")
        if split is not None:
            ids = ids.filter(pc.equal(self.queries.column("split"), split))
        return ids.to_pylist()

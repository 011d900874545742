"""FAISS index build / save / load / search, with a manifest that ties an index to its model and catalogue.

An index folder holds ``index.faiss``, ``products.parquet`` (``product_id``, ``product_text``, in index order) and
``manifest.json`` (model, model fingerprint, catalogue fingerprint, dim, count, index factory, creation time).
Embeddings are L2-normalised, so inner product is cosine similarity.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from ..atomic import atomic_path, check_output_path
from ..data.tables import Products, table_batches
from ..errors import UserInputError
from .encoding import encode_catalogue, model_fingerprint, release_pages

INDEX_FILE = "index.faiss"
PRODUCTS_FILE = "products.parquet"
MANIFEST_FILE = "manifest.json"
# Defaults for approximate indexes, set at build time and stored in the index file (faiss keeps them).
DEFAULT_SEARCH_PARAMETERS = {"efSearch": 128, "nprobe": 32}
# "auto" builds an exact index up to this many products and an approximate one above it.
EXACT_SEARCH_LIMIT = 500_000
AUTO_FACTORY = "auto"


def build_index(
    embeddings: np.ndarray,
    factory: str = "Flat",
    metric: int = faiss.METRIC_INNER_PRODUCT,
    chunk_size: int = 100_000,
    max_train_size: int = 262_144,
    seed: int = 0,
) -> faiss.Index:
    """A FAISS index from ``faiss.index_factory`` ("Flat", "HNSW32", "IVF1024,PQ32", ...), trained if it needs it
    (on a seeded sample of at most ``max_train_size`` rows), filled chunk by chunk."""
    count, dim = embeddings.shape
    try:
        index = faiss.index_factory(dim, factory, metric)
    except RuntimeError as error:
        raise UserInputError(
            f"--index_factory {factory!r} is not a valid faiss index_factory string: {error}"
        ) from None
    if not index.is_trained:
        _train(index, embeddings, factory, max_train_size, seed)
    for start in tqdm(range(0, count, chunk_size), desc="add to index", disable=count <= chunk_size):
        index.add(np.ascontiguousarray(embeddings[start : start + chunk_size], dtype=np.float32))
        release_pages(embeddings)  # a memory-mapped matrix: one chunk resident at a time
    _set_default_search_parameters(index)
    return index


def _train(index: faiss.Index, embeddings: np.ndarray, factory: str, max_train_size: int, seed: int) -> None:
    count = embeddings.shape[0]
    rows = np.sort(np.random.default_rng(seed).choice(count, size=min(count, max_train_size), replace=False))
    sample = np.ascontiguousarray(embeddings[rows], dtype=np.float32)
    release_pages(embeddings)
    try:
        index.train(sample)
    except RuntimeError as error:
        raise UserInputError(
            f"--index_factory {factory!r} cannot be trained on {count} products ({error}); "
            "use fewer IVF lists or PQ centroids, or the exact 'Flat' index"
        ) from None


def _set_default_search_parameters(index: faiss.Index) -> None:
    parameters = faiss.ParameterSpace()
    for name, value in DEFAULT_SEARCH_PARAMETERS.items():
        try:
            parameters.set_index_parameter(index, name, value)
        except RuntimeError:
            pass  # the parameter does not apply to this index type


def search(
    target: faiss.Index | np.ndarray, query_embeddings: np.ndarray, k: int, chunk_size: int = 50_000
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, row indices) of each query by inner product, best first: the one nearest-neighbour search
    of the package.

    ``target`` is a faiss index (searched ``chunk_size`` queries at a time; -1 pads rows an approximate index cannot
    fill) or an embedding matrix, e.g. a memory-mapped ``embeddings.npy``, searched exactly ``chunk_size`` rows at a
    time (memory: one chunk plus the results).
    """
    queries = np.ascontiguousarray(query_embeddings, dtype=np.float32)
    if isinstance(target, faiss.Index):
        return _search_index(target, queries, k, chunk_size)
    return _search_exact(queries, target, k, chunk_size)


def _search_index(index: faiss.Index, queries: np.ndarray, k: int, chunk_size: int):
    k = min(k, index.ntotal)
    scores = np.empty((len(queries), k), dtype=np.float32)
    rows = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), chunk_size):
        chunk = queries[start : start + chunk_size]
        scores[start : start + len(chunk)], rows[start : start + len(chunk)] = index.search(chunk, k)
    return scores, rows


def _search_exact(queries: np.ndarray, corpus: np.ndarray, k: int, chunk_size: int):
    k = min(k, len(corpus))
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    for start in range(0, len(corpus), chunk_size):
        chunk = np.ascontiguousarray(corpus[start : start + chunk_size], dtype=np.float32)
        release_pages(corpus)  # a memory-mapped matrix: one chunk resident at a time
        scores, rows = faiss.knn(queries, chunk, min(k, len(chunk)), metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(scores, rows + start)
    heap.finalize()
    return heap.D, heap.I


def auto_factory(count: int, exact_limit: int = EXACT_SEARCH_LIMIT) -> str:
    """``index_factory`` for ``--index_factory auto``: exact ("Flat") up to ``exact_limit`` products; above it an
    inverted file with about 4 * sqrt(count) lists (a power of two; faiss's guideline), vectors stored in full."""
    if count <= exact_limit:
        return "Flat"
    return f"IVF{2 ** round(math.log2(4 * math.sqrt(count)))},Flat"


def recall_against_exact(
    index: faiss.Index, embeddings: np.ndarray, k: int = 10, queries: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Recall@``k`` of ``index`` against exact search, with a seeded sample of the catalogue's own embeddings as
    queries (no real queries exist at build time; each sampled product is its own top hit in both)."""
    rows = np.sort(
        np.random.default_rng(seed).choice(len(embeddings), size=min(queries, len(embeddings)), replace=False)
    )
    sample = np.ascontiguousarray(embeddings[rows], dtype=np.float32)
    release_pages(embeddings)
    _, exact = search(embeddings, sample, k)
    _, approximate = search(index, sample, k)
    found = [len(set(a[a >= 0].tolist()) & set(e.tolist())) / e.size for a, e in zip(approximate, exact, strict=True)]
    return {f"recall@{k}": round(float(np.mean(found)), 4), "queries": len(rows), "queries_from": "catalogue sample"}


def make_manifest(model: Any, catalogue: Products, index: faiss.Index, factory: str):
    return {
        "model_name_or_path": str(getattr(model, "name_or_path", "")),
        "model_fingerprint": model_fingerprint(model),
        "catalogue_fingerprint": catalogue.fingerprint(),
        "dim": index.d,
        "count": index.ntotal,
        "index_factory": factory,
        "metric": "inner_product",
        "faiss_version": faiss.__version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def save_index(
    folder: str | Path,
    index: faiss.Index,
    product_ids: Sequence[str] | Products,
    manifest: dict[str, Any],
    texts: Sequence[str] | None = None,
) -> Path:
    """Write the index folder atomically: a reader sees the old folder or the complete new one. ``product_ids`` is
    the product table (written to ``products.parquet`` chunk by chunk) or a list of ids with ``texts``."""
    if not isinstance(product_ids, Products):
        texts = list(texts) if texts is not None else [""] * len(product_ids)
        product_ids = Products.from_lists(list(map(str, product_ids)), texts)
    if index.ntotal != len(product_ids):
        raise ValueError(f"the index holds {index.ntotal} vectors for {len(product_ids)} product ids")
    with atomic_path(folder) as temporary:
        temporary.mkdir(parents=True)
        faiss.write_index(index, str(temporary / INDEX_FILE))
        _write_products(product_ids, temporary / PRODUCTS_FILE)
        (temporary / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return Path(folder)


def _write_products(catalogue: Products, path: Path) -> None:
    schema = pa.schema([("product_id", pa.string()), ("product_text", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        for table in table_batches(catalogue.data, ["product_id", "product_text"]):
            writer.write_table(table.cast(schema))


@dataclass
class LoadedIndex:
    index: faiss.Index
    product_ids: list[str]
    texts: Sequence[str]  # read from the Arrow column on access: evaluation never needs 1.8M Python strings
    manifest: dict[str, Any]


class ArrowStrings(Sequence[str]):
    """A read-only sequence of the strings of one parquet column, read on first access and converted one item at a
    time (evaluation, which never shows product texts, never reads them)."""

    def __init__(self, path: Path, column: str):
        self.path, self.name = path, column
        self._column: pa.ChunkedArray | None = None

    @property
    def column(self) -> pa.ChunkedArray:
        if self._column is None:
            self._column = pq.read_table(self.path, columns=[self.name]).column(0)
        return self._column

    def __len__(self) -> int:
        return pq.ParquetFile(self.path).metadata.num_rows if self._column is None else len(self._column)

    def __getitem__(self, item):
        if isinstance(item, slice):
            return [value.as_py() for value in self.column[item]]
        return self.column[item].as_py()


def load_index(folder: str | Path, model: Any = None) -> LoadedIndex:
    """Read an index folder; with a ``model``, check it is the one the index was built with."""
    folder = Path(folder)
    for name in (INDEX_FILE, PRODUCTS_FILE, MANIFEST_FILE):
        if not (folder / name).is_file():
            raise UserInputError(f"{folder}: not an index folder ({name} is missing); build one with index.py")
    manifest = read_manifest(folder)
    index = faiss.read_index(str(folder / INDEX_FILE))
    products = pq.read_table(folder / PRODUCTS_FILE, columns=["product_id"])
    if not index.ntotal == len(products) == manifest.get("count"):
        raise UserInputError(
            f"{folder}: {index.ntotal} vectors in {INDEX_FILE}, {len(products)} rows in {PRODUCTS_FILE}, "
            f"count {manifest.get('count')} in {MANIFEST_FILE}; rebuild the index"
        )
    if model is not None:
        check_model_matches(manifest, model, folder)
    product_ids = products.column("product_id").to_pylist()
    return LoadedIndex(index, product_ids, ArrowStrings(folder / PRODUCTS_FILE, "product_text"), manifest)


def read_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise UserInputError(f"{folder}: not an index folder ({MANIFEST_FILE} is missing); build one with index.py")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise UserInputError(f"{path}: not valid JSON ({error}); rebuild the index") from None


def check_model_matches(manifest: dict[str, Any], model: Any, folder: str | Path) -> None:
    built_with = f"{manifest.get('model_name_or_path')!r} (fingerprint {str(manifest.get('model_fingerprint'))[:12]})"
    fingerprint = model_fingerprint(model)
    given = f"{getattr(model, 'name_or_path', '')!r} (fingerprint {fingerprint[:12]})"
    if manifest.get("dim") != model.embedding_dim:
        raise UserInputError(
            f"{folder}: the index holds {manifest.get('dim')}-dim embeddings of model {built_with}, "
            f"but model {given} gives {model.embedding_dim}-dim embeddings"
        )
    if manifest.get("model_fingerprint") != fingerprint:
        raise UserInputError(
            f"{folder}: the index was built with model {built_with}, not with model {given}; "
            "rebuild the index with this model or search with the model it was built with"
        )


class SearchHit(NamedTuple):
    product_id: str
    text: str
    score: float


class ProductSearcher:
    """Query strings in, top-k products out: ``ProductSearcher.from_folder("index/").search(["usb c cable"])``."""

    def __init__(self, loaded: LoadedIndex, model: Any, batch_size: int = 256, bf16: bool = False):
        self.loaded = loaded
        self.model = model
        self.batch_size = batch_size
        self.bf16 = bf16

    @classmethod
    def from_folder(cls, index_dir: str | Path, model: Any = None, **kwargs: Any) -> ProductSearcher:
        """Load the index and the model (by default the one named in the manifest), checking they match."""
        if model is None:
            from ..modeling.model import load_model

            model = load_model(read_manifest(index_dir)["model_name_or_path"])
        return cls(load_index(index_dir, model), model, **kwargs)

    def search(self, queries: Sequence[str], k: int = 10) -> list[list[SearchHit]]:
        embeddings = self.model.encode_queries(list(queries), batch_size=self.batch_size, bf16=self.bf16)
        scores, rows = search(self.loaded.index, embeddings, k)
        ids, texts = self.loaded.product_ids, self.loaded.texts
        return [
            [
                SearchHit(ids[row], texts[row], float(score))
                for score, row in zip(row_scores, row_ids, strict=True)
                if row >= 0
            ]
            for row_scores, row_ids in zip(scores, rows, strict=True)
        ]


def build_catalogue_index(
    model: Any,
    product_ids: Sequence[str] | Products,
    texts: Sequence[str] | None,
    output_dir: str | Path,
    factory: str = "Flat",
    batch_size: int = 256,
    bf16: bool = False,
    chunk_size: int = 50_000,
    cache_dir: str | Path | None = None,
    accelerator: Any = None,
) -> Path | None:
    """Encode the catalogue (``product_ids``: the product table, or ids with ``texts``; sharded across processes,
    resumable through ``cache_dir``) and write the index folder from the main process. ``factory="auto"`` picks
    exact or IVF search by size (``auto_factory``); an approximate index's recall@10 against exact search is
    measured and kept in the manifest. Returns the folder (``None`` on the other processes)."""
    check_output_path(output_dir, "--output_dir")
    catalogue = product_ids if isinstance(product_ids, Products) else Products.from_lists(product_ids, texts)
    embeddings = encode_catalogue(
        model, catalogue, cache_dir=cache_dir, chunk_size=chunk_size, batch_size=batch_size, bf16=bf16,
        accelerator=accelerator,
    )  # fmt: skip
    if accelerator is not None and not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return None
    factory = auto_factory(len(catalogue)) if factory == AUTO_FACTORY else factory
    index = build_index(embeddings, factory, chunk_size=chunk_size)
    manifest = make_manifest(model, catalogue, index, factory)
    manifest["recall_vs_exact"] = None if factory == "Flat" else recall_against_exact(index, embeddings)
    folder = save_index(output_dir, index, catalogue, manifest)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return folder

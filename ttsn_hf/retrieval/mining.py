"""Hard-negative mining: products the model ranks high for a training query but that were never judged relevant.

For each training query the catalogue is searched with the model's embeddings, and a candidate is kept when

- it was never judged for that query (``excluded_labels``, default E/S/C/I): E/S/C would be false negatives, and
  products judged I are already negatives of every stage (``prepare`` drops them from the mined file), so mining
  them would only waste slots;
- it scores below the query's positive score by a margin, the guard against unjudged false negatives of
  sentence-transformers' ``mine_hard_negatives`` and NV-Retriever (arXiv:2407.15831): with an absolute ``margin``,
  ``score <= positive_score - margin``; with a ``relative_margin``, ``score <= positive_score -
  |positive_score| * relative_margin`` (default 0.05, NV-Retriever's best "TopK-PercPos 95%");
- it is past the first ``range_min`` valid candidates, among the first ``range_max`` (search depth).

``positive_score`` is the *mean* score of the query's E/S products (``positive_labels``) by default. An ESCI query has
about 16 judged positives of uneven quality, and the lowest of them (sentence-transformers' choice with several
positives, ``positive_reference="min"``) is often below the 200th product of the catalogue, which leaves most
queries without negatives; the mean is what an unjudged relevant product is expected to score. Queries without a
positive in the catalogue are skipped when a margin is set (there is nothing to measure it from).

Ranges follow sentence-transformers exactly: the search keeps ``range_max + m`` products per query, ``m`` the largest
number of excluded products of any mined query; candidates are ordered by score (ties by product id); the negatives
are valid candidates ``range_min .. range_min + num_negatives`` ("top") or a seeded sample of valid candidates
``range_min .. range_max`` ("random"). ``range_max`` defaults to ``range_min + 10 * num_negatives + m`` when a margin
is set and ``range_min + num_negatives + m`` without one (sentence-transformers' defaults).

Output (``write_hard_negatives``): parquet with ``query_id``, ``product_id``, ``rank`` (1-based position of the
product in the query's nearest-neighbour list over the whole catalogue), ``score`` (cosine similarity) and
``positive_score``; a JSON summary beside it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..atomic import atomic_path, write_text_atomic
from ..data.tables import Judgements, Products
from ..errors import UserInputError
from ..labels import LABELS, POSITIVE_LABELS_BY_STAGE
from .encoding import encode_catalogue, model_fingerprint
from .indexing import search

COLUMNS = ["query_id", "product_id", "rank", "score", "positive_score"]
QUERIES_PER_SEARCH = 8192  # queries searched at a time: their candidate lists, not all queries', are in memory


@dataclass
class MiningSettings:
    """Every setting of a mining run: the selection rules (module docstring) and how the catalogue is encoded.
    ``cache_dir`` None: no embedding cache."""

    num_negatives: int = 10
    margin: float | None = None
    relative_margin: float | None = 0.05
    range_min: int = 0
    range_max: int | None = None
    sampling_strategy: Literal["top", "random"] = "top"
    seed: int = 42
    positive_labels: tuple[str, ...] = POSITIVE_LABELS_BY_STAGE[1]
    excluded_labels: tuple[str, ...] = LABELS
    positive_reference: Literal["mean", "min"] = "mean"
    batch_size: int = 256
    bf16: bool = False
    cache_dir: str | Path | None = None
    chunk_size: int = 50_000

    def selection(self) -> dict[str, Any]:
        """The settings that decide which negatives are chosen (recorded in the summary, compared before reuse)."""
        chosen = {name: getattr(self, name) for name in SELECTION_SETTINGS}
        return {name: list(value) if isinstance(value, tuple) else value for name, value in chosen.items()}


SELECTION_SETTINGS = (
    "num_negatives", "margin", "relative_margin", "range_min", "range_max", "sampling_strategy", "seed",
    "positive_reference", "positive_labels", "excluded_labels",
)  # fmt: skip


def _settings(settings: MiningSettings | None, overrides: Mapping[str, Any]) -> MiningSettings:
    settings = settings or MiningSettings()
    return dataclasses.replace(settings, **overrides) if overrides else settings


def read_mined_summary(parquet: str | os.PathLike) -> dict[str, Any]:
    """The JSON summary mining writes beside a mined parquet ({} when there is none)."""
    path = Path(parquet).with_suffix(".json")
    return json.loads(path.read_text()) if path.is_file() else {}


def mined_file_difference(
    summary: Mapping[str, Any], fingerprint: str, settings: MiningSettings, products: Products
) -> str | None:
    """Why a mined file (its JSON ``summary``) is not what mining with ``settings`` by the model of ``fingerprint``
    over ``products`` would write; None when it is. Every selection setting is compared (the seed only where it
    matters: random sampling) and the catalogue's fingerprint."""
    if summary.get("model_fingerprint") != fingerprint:
        owner = str(summary.get("model_fingerprint") or "an unknown model")[:12]
        return f"mined by {owner}, not by {fingerprint[:12]}"
    recorded, wanted = summary.get("selection"), settings.selection()
    if not isinstance(recorded, dict):
        return "its summary records no selection settings (mined by an older version)"
    if settings.sampling_strategy != "random":
        recorded, wanted = {**recorded, "seed": None}, {**wanted, "seed": None}
    for name, value in wanted.items():
        if recorded.get(name) != value:
            return f"mined with {name} {recorded.get(name)!r}, this run's is {value!r}"
    if summary.get("catalogue_fingerprint") != products.fingerprint():
        return "mined over another catalogue"
    return None


@dataclass
class MiningInput:
    """What mining reads: the product table, the judgements (arrays) and which queries are training queries."""

    products: Products
    judged: Judgements
    train_query_ids: list[str]
    query_id_dtype: str = "string"  # the source's query_id type, kept in the mined file


def load_mining_input(source: Any) -> MiningInput:
    """From an ``EsciData``, an ESCI folder or a prepared ``data/`` folder.

    Training queries are those of split ``train``; in a prepared folder, only those in its stages' ``train``
    splits (validation queries are held out)."""
    stage_queries = None
    if isinstance(source, str | os.PathLike):
        from ..data.esci import load_esci

        folder = Path(source)
        stage_queries = _prepared_train_query_ids(folder)
        source = load_esci(folder)
    judged = source.judged()
    train = judged.query_ids("train")
    if stage_queries is not None:
        train = [query_id for query_id in train if query_id in stage_queries]
    return MiningInput(source.products(), judged, train, getattr(source, "query_id_dtype", "string"))


def _prepared_train_query_ids(folder: Path) -> set[str] | None:
    stage_dirs = sorted(folder.glob("stage*/train"))
    if not stage_dirs:
        return None
    import datasets

    return {
        str(query_id)
        for stage in stage_dirs
        for query_id in datasets.load_from_disk(stage).data.column("query_id").unique().to_pylist()
    }


def mine_hard_negatives(
    model: Any,
    source: Any,
    settings: MiningSettings | None = None,
    accelerator: Any = None,
    **overrides: Any,
) -> pd.DataFrame:
    """Mine hard negatives for the training queries of ``source`` (see ``load_mining_input``) with ``model``.

    ``settings`` (default ``MiningSettings()``), with any field overridden by keyword. The catalogue is streamed
    from its table and encoded in chunks, sharded over the ``accelerator``'s processes, its embeddings cached
    under ``settings.cache_dir`` (keyed by model and catalogue) and memory-mapped; queries are searched
    ``QUERIES_PER_SEARCH`` at a time. Every process returns the same frame; its ``query_id`` has the source's type.
    The frame's ``attrs["summary"]`` holds the settings and counts that ``write_hard_negatives`` stores beside it.
    """
    settings = _settings(settings, overrides)
    data = source if isinstance(source, MiningInput) else load_mining_input(source)
    encoding = dict(batch_size=settings.batch_size, bf16=settings.bf16)
    product_embeddings = encode_catalogue(
        model, data.products, cache_dir=settings.cache_dir, chunk_size=settings.chunk_size, accelerator=accelerator,
        **encoding,
    )  # fmt: skip
    positions = data.judged.positions(data.train_query_ids)
    queries = data.judged.queries.column("query").take(pa.array(positions)).to_pylist()
    query_embeddings = model.encode_queries(queries, **encoding)
    judged = data.judged
    negatives = _select(
        query_embeddings,
        product_embeddings,
        data.train_query_ids,
        data.products.ids,
        positives=lambda i: judged.rows_of(positions[i], settings.positive_labels),
        excluded=lambda i: judged.rows_of(positions[i], settings.excluded_labels),
        settings=settings,
        query_id_dtype=data.query_id_dtype,
    )
    negatives.attrs["summary"] = {
        **negatives.attrs["summary"],
        "model_name_or_path": str(getattr(model, "name_or_path", "")),
        "model_fingerprint": model_fingerprint(model),
        "catalogue_fingerprint": data.products.fingerprint(),
        "catalogue_size": len(data.products),
        "training_queries": len(data.train_query_ids),
        "positive_labels": list(settings.positive_labels),
        "excluded_labels": list(settings.excluded_labels),
        "bf16": settings.bf16,
    }
    return negatives


def select_hard_negatives(
    query_embeddings: np.ndarray,
    product_embeddings: np.ndarray,
    query_ids: Sequence[str],
    product_ids: Sequence[str],
    positives_by_query: Mapping[str, Iterable[str]],
    judged_by_query: Mapping[str, Iterable[str]],
    settings: MiningSettings | None = None,
    **overrides: Any,
) -> pd.DataFrame:
    """The mining core on embeddings (L2-normalised: inner product = cosine); see the module docstring.

    ``positives_by_query`` sets the margin's reference score; ``judged_by_query`` lists products never to return
    (it should include the positives). ``settings`` as in ``mine_hard_negatives``. Returns the ``COLUMNS`` frame
    sorted by query id and rank. (Mining a catalogue goes through the same core with the judgements as arrays.)
    """
    row_of = {str(product_id): row for row, product_id in enumerate(product_ids)}

    def rows(by_query: Mapping[str, Iterable[str]]) -> Callable[[int], np.ndarray]:
        def lookup(i: int) -> np.ndarray:
            found = [row_of[str(pid)] for pid in by_query.get(query_ids[i], ()) if str(pid) in row_of]
            return np.asarray(sorted(set(found)), dtype=np.int64)

        return lookup

    positives = rows(positives_by_query)
    excluded = rows(judged_by_query)
    return _select(
        query_embeddings,
        product_embeddings,
        list(map(str, query_ids)),
        pa.array([str(product_id) for product_id in product_ids], pa.string()),
        positives=positives,
        excluded=lambda i: np.union1d(excluded(i), positives(i)),
        settings=_settings(settings, overrides),
    )


def _select(
    query_embeddings: np.ndarray,
    product_embeddings: np.ndarray,
    query_ids: Sequence[str],
    product_ids: pa.Array,
    positives: Callable[[int], np.ndarray],
    excluded: Callable[[int], np.ndarray],
    settings: MiningSettings,
    query_id_dtype: str = "string",
) -> pd.DataFrame:
    """The selection over catalogue rows: ``positives(i)`` / ``excluded(i)`` are query ``i``'s rows."""
    s = settings
    _check_settings(s.num_negatives, s.range_min, s.sampling_strategy, s.positive_reference)
    uses_margin = s.margin is not None or s.relative_margin is not None
    most_excluded = max((len(excluded(i)) for i in range(len(query_ids))), default=0)
    range_max = s.range_max
    if range_max is None:
        range_max = s.range_min + (10 if uses_margin else 1) * s.num_negatives + most_excluded
    _check_range(s.num_negatives, s.range_min, range_max)
    tie_order = _tie_order(product_ids)
    found: list[tuple[int, int, int, float, float]] = []  # query index, row, rank, score, positive score
    skipped = 0
    for start in range(0, len(query_ids), QUERIES_PER_SEARCH):
        chunk = np.ascontiguousarray(query_embeddings[start : start + QUERIES_PER_SEARCH], dtype=np.float32)
        scores, rows = search(product_embeddings, chunk, range_max + most_excluded, s.chunk_size)
        for offset in range(len(chunk)):
            i = start + offset
            positive_score = _positive_score(chunk[offset], product_embeddings, positives(i), s.positive_reference)
            if uses_margin and np.isnan(positive_score):
                skipped += 1
                continue
            threshold = _threshold(positive_score, s.margin, s.relative_margin)
            valid = _valid_candidates(scores[offset], rows[offset], tie_order, excluded(i), threshold)
            chosen = _choose(valid, s.num_negatives, s.range_min, range_max, s.sampling_strategy, s.seed, query_ids[i])
            found += [(i, row, rank, score, positive_score) for rank, row, score in chosen]
    negatives = _frame(found, query_ids, product_ids, query_id_dtype)
    summary = {**s.selection(), "range_max": range_max, "selection": s.selection()}
    negatives.attrs["summary"] = {**summary, **_counts(negatives, len(query_ids), skipped, s.num_negatives)}
    negatives.attrs["summary"]["query_id_dtype"] = query_id_dtype
    return negatives


def _frame(found: list, query_ids: Sequence[str], product_ids: pa.Array, query_id_dtype: str) -> pd.DataFrame:
    """The mined negatives, sorted by query id and rank; ``query_id`` in the source's type."""
    index = np.asarray([item[0] for item in found], dtype=np.int64)
    rows = np.asarray([item[1] for item in found], dtype=np.int64)
    query_values = pa.array(list(map(str, query_ids)), pa.string()).take(pa.array(index))
    frame = pd.DataFrame(
        {
            "query_id": query_values.to_pandas(),
            "product_id": product_ids.take(pa.array(rows)).to_pandas(),
            "rank": np.asarray([item[2] for item in found], dtype=np.int64),
            "score": np.asarray([item[3] for item in found], dtype=np.float32),
            "positive_score": np.asarray([item[4] for item in found], dtype=np.float32),
        }
    )
    frame = frame.sort_values(["query_id", "rank"], kind="stable").reset_index(drop=True)
    if query_id_dtype == "int64":
        frame["query_id"] = frame["query_id"].astype(np.int64)
    return frame


def _tie_order(product_ids: pa.Array) -> np.ndarray:
    """Each row's position in product-id order (ties in score are broken by product id)."""
    order = pc.sort_indices(product_ids).to_numpy()
    positions = np.empty(len(order), dtype=np.int64)
    positions[order] = np.arange(len(order))
    return positions


def _check_settings(num_negatives: int, range_min: int, sampling_strategy: str, positive_reference: str) -> None:
    if num_negatives < 1:
        raise UserInputError(f"--num_negatives must be at least 1, got {num_negatives}")
    if range_min < 0:
        raise UserInputError(f"--range_min must be 0 or more, got {range_min}")
    if sampling_strategy not in ("top", "random"):
        raise UserInputError(f"sampling_strategy must be 'top' or 'random', got {sampling_strategy!r}")
    if positive_reference not in ("mean", "min"):
        raise UserInputError(f"positive_reference must be 'mean' or 'min', got {positive_reference!r}")


def _check_range(num_negatives: int, range_min: int, range_max: int) -> None:
    if num_negatives > range_max - range_min:
        raise UserInputError(
            f"cannot mine {num_negatives} negatives per query between --range_min {range_min} and "
            f"--range_max {range_max}; lower --num_negatives or --range_min, or raise --range_max"
        )


def _positive_score(query: np.ndarray, product_embeddings: np.ndarray, rows: np.ndarray, reference: str) -> float:
    if not len(rows):
        return float("nan")
    scores = np.asarray(product_embeddings[np.sort(rows)], dtype=np.float32) @ query
    return float(np.mean(scores) if reference == "mean" else np.min(scores))


def _threshold(positive_score: float, margin: float | None, relative_margin: float | None) -> float:
    threshold = np.inf
    if margin is not None:
        threshold = min(threshold, positive_score - margin)
    if relative_margin is not None:
        threshold = min(threshold, positive_score - abs(positive_score) * relative_margin)
    return threshold


def _valid_candidates(scores, rows, tie_order, excluded: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """(1-based rank, row, score) of the retrieved products that may be negatives, best first."""
    found = rows >= 0
    scores, rows = scores[found], rows[found]
    order = np.lexsort((tie_order[rows], -scores))
    allowed = ~np.isin(rows[order], excluded) & (scores[order] <= threshold)
    return [
        (rank, int(rows[i]), float(scores[i]))
        for rank, (i, ok) in enumerate(zip(order, allowed, strict=True), start=1)
        if ok
    ]


def _choose(valid, num_negatives, range_min, range_max, sampling_strategy, seed, query_id):
    if sampling_strategy == "top":
        return valid[range_min : range_min + num_negatives]
    window = valid[range_min:range_max]
    rng = np.random.default_rng([seed, _stable_int(query_id)])
    picked = rng.choice(len(window), size=min(num_negatives, len(window)), replace=False)
    return [window[i] for i in sorted(picked)]


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(str(text).encode()).digest()[:8], "little")


def _counts(negatives: pd.DataFrame, queries: int, skipped: int, num_negatives: int) -> dict[str, Any]:
    per_query = negatives.groupby("query_id").size()
    gap = negatives["positive_score"] - negatives["score"]
    return {
        "queries": queries,
        "queries_skipped_without_positive": skipped,
        "queries_with_negatives": int(per_query.size),
        "queries_short_of_negatives": int(queries - skipped - (per_query >= num_negatives).sum()),
        "negatives": len(negatives),
        "mean_score": _mean(negatives["score"]),
        "mean_positive_score": _mean(negatives["positive_score"]),
        "mean_gap_to_positive": _mean(gap),
    }


def _mean(values: pd.Series) -> float | None:
    return None if values.dropna().empty else round(float(values.mean()), 6)


def write_hard_negatives(negatives: pd.DataFrame, path: str | Path, summary: Mapping[str, Any] | None = None) -> Path:
    """Write the negatives parquet and ``<path>.json`` (summary), each atomically (never half-written)."""
    path = Path(path)
    if path.suffix != ".parquet":
        raise UserInputError(f"--output {path}: the hard negatives file must end in .parquet")
    summary = dict(negatives.attrs.get("summary", {}) if summary is None else summary)
    summary["output"] = str(path)
    summary.setdefault("query_id_dtype", "int64" if pd.api.types.is_integer_dtype(negatives["query_id"]) else "string")
    with atomic_path(path) as temporary:
        negatives[COLUMNS].to_parquet(temporary, index=False)
    write_text_atomic(path.with_suffix(".json"), json.dumps(summary, indent=2, default=_json_default))
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def mine_to_file(
    model: Any,
    source: Any,
    output: str | Path,
    accelerator: Any = None,
    settings: MiningSettings | None = None,
    **overrides: Any,
) -> Path:
    """``mine_hard_negatives`` then ``write_hard_negatives`` (from the main process only); returns ``output``."""
    negatives = mine_hard_negatives(model, source, settings, accelerator=accelerator, **overrides)
    if accelerator is None or accelerator.is_main_process:
        write_hard_negatives(negatives, output)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return Path(output)

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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from ..atomic import atomic_path, write_text_atomic
from ..errors import UserInputError
from ..labels import LABELS, POSITIVE_LABELS_BY_STAGE
from .catalogue import DEFAULT_CACHE_DIR, load_catalogue
from .encoding import catalogue_fingerprint, encode_catalogue, model_fingerprint
from .indexing import search

COLUMNS = ["query_id", "product_id", "rank", "score", "positive_score"]


@dataclass
class MiningSettings:
    """Every setting of a mining run: the selection rules (module docstring) and how the catalogue is encoded."""

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
    cache_dir: str | Path | None = DEFAULT_CACHE_DIR
    chunk_size: int = 50_000

    def selection(self) -> dict[str, Any]:
        """The settings that decide which negatives are chosen (recorded in the summary)."""
        return {name: getattr(self, name) for name in SELECTION_SETTINGS}


SELECTION_SETTINGS = (
    "num_negatives", "margin", "relative_margin", "range_min", "range_max", "sampling_strategy", "seed",
    "positive_reference",
)  # fmt: skip


def _settings(settings: MiningSettings | None, overrides: Mapping[str, Any]) -> MiningSettings:
    settings = settings or MiningSettings()
    return dataclasses.replace(settings, **overrides) if overrides else settings


@dataclass
class MiningInput:
    """What mining reads: the catalogue, the judgements and which queries are training queries."""

    product_ids: list[str]
    product_texts: list[str]
    judgements: pd.DataFrame  # query_id, query, product_id, esci_label, split
    train_query_ids: list[str]


def load_mining_input(source: Any) -> MiningInput:
    """From an ``EsciData`` (``.catalogue``, ``.judgements``), an ESCI folder or a prepared ``data/`` folder.

    Training queries are those of split ``train``; in a prepared folder, only those in its stages' ``train``
    splits (validation queries are held out)."""
    if isinstance(source, str | os.PathLike):
        from ..data.esci import load_esci

        folder = Path(source)
        data = load_esci(folder)
        stage_queries = _prepared_train_query_ids(folder)
    else:
        data, stage_queries = source, None
    catalogue = load_catalogue(data)
    judgements = _frame(data.judgements, ["query_id", "query", "product_id", "esci_label", "split"], "judgements")
    train = judgements.loc[judgements["split"] == "train", "query_id"].drop_duplicates()
    if stage_queries is not None:
        train = train[train.isin(stage_queries)]
    return MiningInput(catalogue.product_ids, catalogue.texts, judgements, sorted(train))


def _frame(table: Any, columns: list[str], name: str) -> pd.DataFrame:
    frame = table.to_pandas() if hasattr(table, "to_pandas") else pd.DataFrame(table)
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise UserInputError(f"{name}: missing column(s) {missing}; found {list(frame.columns)}")
    frame = frame[columns].copy()
    for column in ("query_id", "product_id"):
        if column in frame:
            frame[column] = frame[column].astype(str)
    return frame


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
    positive_labels: Sequence[str] = POSITIVE_LABELS_BY_STAGE[1],
    excluded_labels: Sequence[str] = LABELS,
    positive_reference: Literal["mean", "min"] = "mean",
    **overrides: Any,
) -> pd.DataFrame:
    """Mine hard negatives for the training queries of ``source`` (see ``load_mining_input``) with ``model``.

    ``settings`` (default ``MiningSettings()``), with any field overridden by keyword. The catalogue embeddings are
    cached under ``settings.cache_dir`` (keyed by model and catalogue) and encoded in chunks, sharded over the
    ``accelerator``'s processes; every process returns the same frame. The frame's ``attrs["summary"]`` holds the
    settings and counts that ``write_hard_negatives`` stores beside it.
    """
    settings = _settings(settings, overrides)
    data = source if isinstance(source, MiningInput) else load_mining_input(source)
    encoding = dict(batch_size=settings.batch_size, bf16=settings.bf16)
    product_embeddings = encode_catalogue(
        model, data.product_ids, data.product_texts, settings.cache_dir, settings.chunk_size, **encoding,
        accelerator=accelerator,
    )  # fmt: skip
    queries = data.judgements.drop_duplicates("query_id").set_index("query_id")["query"]
    query_ids = data.train_query_ids
    query_embeddings = model.encode_queries(queries.loc[query_ids].tolist(), **encoding)
    negatives = select_hard_negatives(
        query_embeddings,
        product_embeddings,
        query_ids,
        data.product_ids,
        positives_by_query=_products_by_query(data.judgements, settings.positive_labels),
        judged_by_query=_products_by_query(data.judgements, settings.excluded_labels),
        settings=settings,
    )
    negatives.attrs["summary"] = {
        **negatives.attrs["summary"],
        "model_name_or_path": str(getattr(model, "name_or_path", "")),
        "model_fingerprint": model_fingerprint(model),
        "catalogue_fingerprint": catalogue_fingerprint(data.product_ids, data.product_texts),
        "catalogue_size": len(data.product_ids),
        "training_queries": len(query_ids),
        "positive_labels": list(settings.positive_labels),
        "excluded_labels": list(settings.excluded_labels),
        "bf16": settings.bf16,
    }
    return negatives


def _products_by_query(judgements: pd.DataFrame, labels: Iterable[str]) -> dict[str, set[str]]:
    rows = judgements[judgements["esci_label"].isin(list(labels))]
    return {str(query_id): set(group) for query_id, group in rows.groupby("query_id")["product_id"]}


def select_hard_negatives(
    query_embeddings: np.ndarray,
    product_embeddings: np.ndarray,
    query_ids: Sequence[str],
    product_ids: Sequence[str],
    positives_by_query: Mapping[str, set[str]],
    judged_by_query: Mapping[str, set[str]],
    settings: MiningSettings | None = None,
    **overrides: Any,
) -> pd.DataFrame:
    """The mining core on embeddings (L2-normalised: inner product = cosine); see the module docstring.

    ``positives_by_query`` sets the margin's reference score; ``judged_by_query`` lists products never to return
    (it should include the positives). ``settings`` as in ``mine_hard_negatives``. Returns the ``COLUMNS`` frame
    sorted by query id and rank.
    """
    s = _settings(settings, overrides)
    _check_settings(s.num_negatives, s.range_min, s.sampling_strategy, s.positive_reference)
    row_of = {product_id: row for row, product_id in enumerate(product_ids)}
    excluded = [
        _rows(judged_by_query.get(qid, ()), row_of) | _rows(positives_by_query.get(qid, ()), row_of)
        for qid in query_ids
    ]
    positive_scores = _positive_scores(
        query_embeddings, product_embeddings, query_ids, positives_by_query, row_of, s.positive_reference
    )
    uses_margin = s.margin is not None or s.relative_margin is not None
    most_excluded = max((len(rows) for rows in excluded), default=0)
    range_max = s.range_max
    if range_max is None:
        range_max = s.range_min + (10 if uses_margin else 1) * s.num_negatives + most_excluded
    _check_range(s.num_negatives, s.range_min, range_max)
    scores, rows = search(product_embeddings, query_embeddings, range_max + most_excluded, s.chunk_size)
    tie_order = _tie_order(product_ids)
    records, skipped = [], 0
    for position, query_id in enumerate(query_ids):
        if uses_margin and np.isnan(positive_scores[position]):
            skipped += 1
            continue
        threshold = _threshold(positive_scores[position], s.margin, s.relative_margin)
        valid = _valid_candidates(scores[position], rows[position], tie_order, excluded[position], threshold)
        chosen = _choose(valid, s.num_negatives, s.range_min, range_max, s.sampling_strategy, s.seed, query_id)
        records += [(query_id, product_ids[row], rank, score, positive_scores[position]) for rank, row, score in chosen]
    negatives = pd.DataFrame.from_records(records, columns=COLUMNS).astype(
        {"query_id": str, "product_id": str, "rank": np.int64, "score": np.float32, "positive_score": np.float32}
    )
    negatives = negatives.sort_values(["query_id", "rank"], kind="stable").reset_index(drop=True)
    summary = {**s.selection(), "range_max": range_max}
    negatives.attrs["summary"] = {**summary, **_counts(negatives, len(query_ids), skipped, s.num_negatives)}
    return negatives


def _tie_order(product_ids: Sequence[str]) -> np.ndarray:
    """Each row's position in product-id order (ties in score are broken by product id)."""
    order = np.argsort(np.asarray(product_ids, dtype=str), kind="stable")
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


def _rows(product_ids: Iterable[str], row_of: Mapping[str, int]) -> set[int]:
    return {row_of[product_id] for product_id in product_ids if product_id in row_of}


def _positive_scores(query_embeddings, product_embeddings, query_ids, positives_by_query, row_of, reference):
    scores = np.full(len(query_ids), np.nan, dtype=np.float32)
    reduce = np.mean if reference == "mean" else np.min
    for position, query_id in enumerate(query_ids):
        rows = sorted(_rows(positives_by_query.get(query_id, ()), row_of))
        if rows:
            scores[position] = reduce(np.asarray(product_embeddings[rows]) @ query_embeddings[position])
    return scores


def _threshold(positive_score: float, margin: float | None, relative_margin: float | None) -> float:
    threshold = np.inf
    if margin is not None:
        threshold = min(threshold, positive_score - margin)
    if relative_margin is not None:
        threshold = min(threshold, positive_score - abs(positive_score) * relative_margin)
    return threshold


def _valid_candidates(scores, rows, tie_order, excluded: set[int], threshold: float) -> list[tuple[int, int, float]]:
    """(1-based rank, row, score) of the retrieved products that may be negatives, best first."""
    found = rows >= 0
    scores, rows = scores[found], rows[found]
    order = np.lexsort((tie_order[rows], -scores))
    return [
        (rank, int(rows[i]), float(scores[i]))
        for rank, i in enumerate(order, start=1)
        if int(rows[i]) not in excluded and scores[i] <= threshold
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

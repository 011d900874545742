"""Per-stage training data as groups of ids, written with `datasets` chunk by chunk (``python prepare.py``).

A stage split holds one row per query (``STAGE_FEATURES``, docs/ARCHITECTURE.md): ``query_id``, ``query``, its
positives (``positive_ids``, ``positive_labels``) and its pool of negatives (``negative_ids``, ``negative_sources``:
"judged" for its I judgements, "mined" for mined hard negatives), each product also by its row in the catalogue
(``positive_rows``, ``negative_rows``) so that texts are looked up, never copied. One training example is a query
group: the query, one of its positives and negatives dealt from its pool (``ttsn_hf.data.groups``).

- stage 1: E+S positives; I judgements as negatives (products the search showed for the query and judged
  irrelevant). C judgements are left out: neither positive nor a safe negative.
- stage 2: stage 1 plus mined hard negatives.
- stage 3: E+S+C positives, I negatives and mined hard negatives.

Random catalogue negatives are not stored: training draws ``--num_random_negatives`` of them per query and epoch
(never a product judged for the query), so every stage gets them alike. Mined negatives: all the file gives unless
``hard_negatives_per_query`` caps them (best rank first). Only ``split == "train"`` queries are used; a
``validation_fraction`` of them (chosen by the seed) is held out whole, so no query is in both train and
validation. Test queries never appear.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..atomic import atomic_path, write_text_atomic
from ..errors import UserInputError
from ..labels import NEGATIVE_LABELS, POSITIVE_LABELS_BY_STAGE, UNJUDGED
from .esci import ROW, EsciData, describe_table_rows, load_esci, load_prepared_esci, read_table
from .tables import (
    Judgements,
    Products,
    arrow_table,
    in_memory_dataset,
    table_batches,
    write_dataset,
    write_dataset_dict,
)

logger = logging.getLogger(__name__)

STAGES = (1, 2, 3)
SOURCES = ("judged", "random", "mined", "pseudo")
ID_LIST = datasets.Sequence(datasets.Value("string"))
ROW_LIST = datasets.Sequence(datasets.Value("int32"))
STAGE_FEATURES = datasets.Features(
    {
        "query_id": datasets.Value("string"),
        "query": datasets.Value("string"),
        "positive_ids": ID_LIST,
        "positive_labels": ID_LIST,
        "negative_ids": ID_LIST,
        "negative_sources": ID_LIST,
        "positive_rows": ROW_LIST,
        "negative_rows": ROW_LIST,
    }
)
JUDGEMENT_FEATURES = datasets.Features(
    {name: datasets.Value("string") for name in ("query_id", "query", "product_id", "esci_label", "split")}
)
QUERY_FEATURES = datasets.Features({name: datasets.Value("string") for name in ("query_id", "query", "split")})
DEFAULT_NUM_RANDOM_NEGATIVES = 4
DEFAULT_HARD_NEGATIVES_PER_QUERY = None
QUERIES_PER_CHUNK = 20_000  # stage rows built and written at a time
SUMMARY_FILE = "summary.json"
PSEUDO_PREFIX = "pseudo:"


# ---------------------------------------------------------------- queries


def split_queries(train_query_ids: Sequence[str], validation_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, validation) query ids, both sorted, drawn from the ``split == "train"`` queries (``train_query_ids``)."""
    if not 0 <= validation_fraction < 1:
        raise UserInputError(f"validation_fraction must be in [0, 1); got {validation_fraction}")
    queries = np.array(sorted(set(map(str, train_query_ids))), dtype=object)
    if len(queries) == 0:
        raise UserInputError("the judgements hold no split == 'train' query: nothing to train on")
    count = int(round(validation_fraction * len(queries)))
    if validation_fraction > 0 and len(queries) > 1:
        count = min(max(count, 1), len(queries) - 1)
    chosen = np.zeros(len(queries), dtype=bool)
    chosen[np.random.default_rng(seed).permutation(len(queries))[:count]] = True
    return queries[~chosen].tolist(), queries[chosen].tolist()


# ---------------------------------------------------------------- hard negatives


@dataclass
class MinedNegatives:
    """Mined negatives as arrays over the judged queries (:class:`Judgements` positions): query ``q``'s catalogue rows,
    best rank first, are ``rows[offsets[q]:offsets[q + 1]]``."""

    offsets: np.ndarray
    rows: np.ndarray

    def of(self, position: int) -> np.ndarray:
        return self.rows[self.offsets[position] : self.offsets[position + 1]] if position >= 0 else self.rows[:0]

    def __len__(self) -> int:
        return len(self.rows)


def load_hard_negatives(
    source: str | os.PathLike | pd.DataFrame | datasets.Dataset,
    esci: EsciData,
    per_query: int | None = DEFAULT_HARD_NEGATIVES_PER_QUERY,
    dropped: dict[str, int] | None = None,
) -> MinedNegatives:
    """Mined (query_id, product_id[, rank]) negatives, checked against ``esci`` and capped at ``per_query`` (best rank
    first).

    Products not in the catalogue or queries not in the judgements mean the file was mined from other data: an
    error. Rows of test queries, products judged for the query (E/S/C would be false negatives, I is already a
    judged negative) and repeats are dropped and counted in ``dropped``.
    """
    dropped = {} if dropped is None else dropped
    if per_query is not None and per_query < 0:
        raise UserInputError(f"hard_negatives_per_query must be >= 0; got {per_query}")
    name = "the hard negatives" if isinstance(source, pd.DataFrame | datasets.Dataset) else str(source)
    mined = _mined_table(source)
    if "query_id" not in mined.column_names or "product_id" not in mined.column_names:
        missing = [column for column in ("query_id", "product_id") if column not in mined.column_names]
        raise UserInputError(f"{name}: missing column(s) {missing}; found {mined.column_names}")
    mined = mined.append_column(ROW, pa.array(np.arange(len(mined), dtype=np.int64)))
    products, judged = esci.products(), esci.judged()
    rows = products.rows_of(mined.column("product_id"))
    _check_known(mined, rows >= 0, "product_id", name, "catalogue")
    positions = judged.positions(pc.cast(mined.column("query_id"), pa.string()).to_pylist())
    _check_known(mined, positions >= 0, "query_id", name, "judgements")
    test = np.asarray(judged.queries.column("split").to_pylist(), dtype=object)[positions] == "test"
    judged_pairs = np.repeat(np.arange(len(judged.offsets) - 1), np.diff(judged.offsets)) * len(products) + judged.rows
    pairs = positions * len(products) + rows
    masks = {"mined_test_query": test, "mined_judged": np.isin(pairs, judged_pairs) & ~test}
    for reason, mask in masks.items():
        if mask.any():
            logger.warning("%s: dropping %d rows (%s)", name, mask.sum(), reason)
            dropped[reason] = dropped.get(reason, 0) + int(mask.sum())
    keep = ~(masks["mined_test_query"] | masks["mined_judged"])
    order = np.lexsort((_ranks(mined), positions))  # by query, then rank (file order among equal ranks)
    order = order[keep[order]]
    if len(order):  # a repeated pair keeps its best rank
        order = order[np.sort(np.unique(pairs[order], return_index=True)[1])]
    if per_query is not None:
        starts, lengths = _starts(positions[order])
        order = order[np.arange(len(order)) - np.repeat(starts, lengths) < per_query]
    counts = np.bincount(positions[order], minlength=len(judged.offsets) - 1)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return MinedNegatives(offsets, rows[order].astype(np.int32))


def _starts(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first index of each run of equal keys, run lengths): ``np.repeat`` of them gives each item's run start."""
    if not len(sorted_keys):
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    starts = np.flatnonzero(np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]]))
    return starts, np.diff(np.concatenate([starts, [len(sorted_keys)]]))


def _ranks(mined: pa.Table) -> np.ndarray:
    if "rank" not in mined.column_names:
        return np.zeros(len(mined), dtype=np.float64)
    return pc.fill_null(pc.cast(mined.column("rank"), pa.float64()), np.inf).to_numpy(zero_copy_only=False)


def _mined_table(source: str | os.PathLike | pd.DataFrame | datasets.Dataset) -> pa.Table:
    if isinstance(source, pd.DataFrame):
        return pa.Table.from_pandas(source.reset_index(drop=True), preserve_index=False)
    if isinstance(source, datasets.Dataset):
        return arrow_table(source)
    path = Path(source)
    if path.suffix.lower() == ".parquet" and path.is_file():
        try:
            names = pq.ParquetFile(path).schema_arrow.names
            return pq.read_table(path, columns=[name for name in ("query_id", "product_id", "rank") if name in names])
        except (pa.ArrowException, OSError) as error:
            raise UserInputError(f"{path}: not a readable parquet file ({error})") from None
    return pa.Table.from_pandas(read_table(path), preserve_index=False)


def _check_known(mined: pa.Table, known: np.ndarray, column: str, name: str, where: str) -> None:
    if not known.all():
        described = describe_table_rows(mined, ~known, column)
        raise UserInputError(
            f"{name}: {(~known).sum()} of {len(mined)} values of column {column!r} are not in the {where} "
            f"({described}); was this file mined from another catalogue or data set?"
        )


# ---------------------------------------------------------------- stage rows


def stage_tables(
    judged: Judgements,
    products: Products,
    stage: int,
    query_ids: Sequence[str],
    mined: MinedNegatives | None = None,
    counts: Counter | None = None,
) -> Iterator[pa.Table]:
    """The rows of ``stage`` for ``query_ids`` (judged queries, sorted), ``QUERIES_PER_CHUNK`` queries at a time;
    ``counts`` is filled with what they hold (for the summary)."""
    if stage == 2 and mined is None:
        raise UserInputError("stage 2 needs mined hard negatives (--hard_negatives FILE)")
    counts = Counter() if counts is None else counts
    positions = judged.positions(query_ids)
    for start in range(0, len(positions), QUERIES_PER_CHUNK):
        chunk = positions[start : start + QUERIES_PER_CHUNK]
        yield _stage_chunk(judged, products, chunk, POSITIVE_LABELS_BY_STAGE[stage], mined if stage > 1 else None,
                           counts)  # fmt: skip


def _stage_chunk(judged, products, positions, positive_labels, mined, counts) -> pa.Table:
    positives, labels, negatives, sources = [], [], [], []
    for position in positions:
        rows = judged.rows_of(position)
        query_labels = judged.labels_of(position)
        is_positive = [label in positive_labels for label in query_labels]
        positives.append(rows[np.asarray(is_positive, dtype=bool)] if len(rows) else rows)
        labels.append([label for label, keep in zip(query_labels, is_positive, strict=True) if keep])
        judged_negatives = rows[np.isin(query_labels, NEGATIVE_LABELS)] if len(rows) else rows
        mined_rows = mined.of(position) if mined is not None else rows[:0]
        negatives.append(np.concatenate([judged_negatives, mined_rows]))
        sources.append(["judged"] * len(judged_negatives) + ["mined"] * len(mined_rows))
    counts["queries"] += len(positions)
    counts["groups"] += sum(map(len, positives))
    counts.update(f"positive {label}" for query_labels in labels for label in query_labels)
    counts.update(f"negative {source}" for query_sources in sources for source in query_sources)
    queries = judged.queries.take(pa.array(np.asarray(positions, dtype=np.int64)))
    return pa.table(
        {
            "query_id": queries.column("query_id"),
            "query": queries.column("query"),
            "positive_ids": _id_lists(products, positives),
            "positive_labels": pa.array(labels, pa.list_(pa.string())),
            "negative_ids": _id_lists(products, negatives),
            "negative_sources": pa.array(sources, pa.list_(pa.string())),
            "positive_rows": _row_lists(positives),
            "negative_rows": _row_lists(negatives),
        }
    )


def _row_lists(rows: list[np.ndarray]) -> pa.ListArray:
    offsets = np.concatenate([[0], np.cumsum([len(item) for item in rows])]).astype(np.int32)
    values = np.concatenate(rows).astype(np.int32) if rows else np.empty(0, dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.int32()))


def _id_lists(products: Products, rows: list[np.ndarray]) -> pa.ListArray:
    lists = _row_lists(rows)
    return pa.ListArray.from_arrays(lists.offsets, products.ids.take(lists.values))


def _split_tables(esci: EsciData, stage: int, query_ids: Sequence[str], mined, counts: Counter) -> Iterator[pa.Table]:
    return stage_tables(esci.judged(), esci.products(), stage, query_ids, mined, counts)


def build_stage(
    esci: EsciData,
    stage: int,
    hard_negatives: str | os.PathLike | pd.DataFrame | datasets.Dataset | None = None,
    hard_negatives_per_query: int | None = DEFAULT_HARD_NEGATIVES_PER_QUERY,
    validation_fraction: float = 0.1,
    seed: int = 42,
    pseudo_queries: int = 0,
    folder: str | os.PathLike | None = None,
) -> datasets.DatasetDict:
    """Stage ``stage`` (1, 2 or 3) as a DatasetDict {train, validation} of ``STAGE_FEATURES`` rows, held out by query.

    Stage 3 uses ``hard_negatives`` when given; stage 2 needs them. ``pseudo_queries`` adds that many
    (pseudo-query, product) positives made from catalogue titles to the training split. With ``folder`` the splits
    are written there chunk by chunk (and read back memory-mapped); without, they are kept in memory.
    """
    _check_options((stage,), hard_negatives)
    mined = None
    if hard_negatives is not None and stage >= 2:
        mined = load_hard_negatives(hard_negatives, esci, hard_negatives_per_query)
    train, validation = split_queries(esci.judged().query_ids("train"), validation_fraction, seed)
    splits = {
        name: _split_tables(esci, stage, query_ids, mined, Counter())
        for name, query_ids in (("train", train), ("validation", validation))
    }
    if folder is not None:
        write_dataset_dict(splits, STAGE_FEATURES, Path(folder))
        built = datasets.load_from_disk(str(folder))
    else:
        built = datasets.DatasetDict({name: _in_memory(tables) for name, tables in splits.items()})
    if pseudo_queries:
        built["train"] = with_pseudo_queries(built["train"], esci.products(), pseudo_queries, seed)
    return built


def _in_memory(tables: Iterator[pa.Table]) -> datasets.Dataset:
    tables = [table.cast(STAGE_FEATURES.arrow_schema) for table in tables]
    return in_memory_dataset(pa.concat_tables(tables) if tables else STAGE_FEATURES.arrow_schema.empty_table())


def _check_options(stage_list: tuple[int, ...], mined: object) -> None:
    if any(stage not in STAGES for stage in stage_list):
        raise UserInputError(f"stages must be among {STAGES}; got {stage_list}")
    if 2 in stage_list and mined is None:
        raise UserInputError("stage 2 needs mined hard negatives: pass --hard_negatives FILE")


# ---------------------------------------------------------------- pseudo-queries

_WORD = re.compile(r"[a-z0-9][a-z0-9'.+-]*")


def pseudo_query(title: str, rng: np.random.Generator) -> str:
    """A query-like span of a product title: 2 to 5 words from its first 12, lower-cased."""
    words = _WORD.findall(title.lower())[:12]
    length = int(rng.integers(2, 6))
    start = int(rng.integers(0, max(1, len(words) - length + 1)))
    return " ".join(words[start : start + length])


def pseudo_query_rows(products: Products, count: int, seed: int) -> pa.Table:
    """(pseudo-query, product) positives for ``count`` catalogue products (``STAGE_FEATURES`` rows, no stored
    negatives: training draws random ones): domain adaptation on the catalogue (no labels used), so the in-batch
    loss also learns to tell the catalogue's own products apart."""
    rng = np.random.default_rng([seed, 7])
    rows = np.sort(rng.choice(len(products), size=min(count, len(products)), replace=False))
    ids, texts = products.ids_at(rows), products.texts_at(rows)
    queries = [pseudo_query(text, rng) for text in texts]
    kept = [i for i, query in enumerate(queries) if query]
    return pa.table(
        {
            "query_id": pa.array([PSEUDO_PREFIX + ids[i] for i in kept], pa.string()),
            "query": pa.array([queries[i] for i in kept], pa.string()),
            "positive_ids": pa.array([[ids[i]] for i in kept], pa.list_(pa.string())),
            "positive_labels": pa.array([[UNJUDGED] for _ in kept], pa.list_(pa.string())),
            "negative_ids": pa.array([[] for _ in kept], pa.list_(pa.string())),
            "negative_sources": pa.array([[] for _ in kept], pa.list_(pa.string())),
            "positive_rows": pa.array([[int(rows[i])] for i in kept], pa.list_(pa.int32())),
            "negative_rows": pa.array([[] for _ in kept], pa.list_(pa.int32())),
        }
    ).cast(STAGE_FEATURES.arrow_schema)


def with_pseudo_queries(train: datasets.Dataset, products: Products, count: int, seed: int) -> datasets.Dataset:
    """``train`` followed by ``count`` pseudo-query rows (:func:`pseudo_query_rows`)."""
    pseudo = in_memory_dataset(pseudo_query_rows(products, count, seed))
    return datasets.concatenate_datasets([train, pseudo])


# ---------------------------------------------------------------- summary and writing


def split_summary(counts: Counter) -> dict:
    """What a stage split holds: queries, groups (one per positive), positives by label, stored negatives by source."""
    positives = {key.split(" ", 1)[1]: value for key, value in counts.items() if key.startswith("positive ")}
    negatives = {key.split(" ", 1)[1]: value for key, value in counts.items() if key.startswith("negative ")}
    return {
        "queries": counts["queries"],
        "groups": counts["groups"],
        "positives_by_label": dict(sorted(positives.items())),
        "negatives_by_source": dict(sorted(negatives.items())),
    }


def prepare(
    esci_path: str | os.PathLike,
    output_dir: str | os.PathLike = "data",
    hard_negatives: str | os.PathLike | pd.DataFrame | None = None,
    stages: tuple[int, ...] | None = None,
    seed: int = 42,
    validation_fraction: float = 0.1,
    hard_negatives_per_query: int | None = DEFAULT_HARD_NEGATIVES_PER_QUERY,
    **load_options,
) -> dict:
    """Load ``esci_path`` (see :func:`ttsn_hf.data.load_esci`, which takes ``load_options``), then write the
    catalogue, the queries, the judgements, each stage and ``summary.json`` under ``output_dir``.

    Stages default to (1, 2, 3) with ``hard_negatives`` and (1, 3) without. Everything is written chunk by chunk
    (the catalogue as it is rendered, a stage ``QUERIES_PER_CHUNK`` queries at a time) into a staging folder beside
    ``output_dir``; only when all of it is done does each part replace its old version: bad input leaves
    ``output_dir`` as it was. Stage folders of an earlier run that this run does not build are removed.
    """
    stages = tuple(stages) if stages else ((1, 2, 3) if hard_negatives is not None else (1, 3))
    _check_options(stages, hard_negatives)
    output = Path(output_dir)
    if output.exists() and not output.is_dir():
        raise UserInputError(f"{output}: output_dir exists and is not a folder")
    staging = output.parent / f".{output.name}.prepare-{uuid.uuid4().hex[:8]}"
    try:
        summary = _prepare_into(staging, esci_path, hard_negatives, stages, seed, validation_fraction,
                                hard_negatives_per_query, load_options)  # fmt: skip
        _move_parts(staging, output, stages)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary


def _prepare_into(staging, esci_path, hard_negatives, stages, seed, validation_fraction, per_query, load_options):
    esci = load_esci(esci_path, catalogue_dir=staging / "catalogue", **load_options)
    dropped = dict(esci.dropped)
    mined = None
    if hard_negatives is not None:
        mined = load_hard_negatives(hard_negatives, esci, per_query, dropped)
    judged = esci.judged()
    train, validation = split_queries(judged.query_ids("train"), validation_fraction, seed)
    write_dataset(table_batches(esci.judgements), JUDGEMENT_FEATURES, staging / "judgements")
    write_dataset([judged.queries], QUERY_FEATURES, staging / "queries")
    counts = {}
    for stage in stages:
        counts[stage] = {"train": Counter(), "validation": Counter()}
        splits = {
            name: _split_tables(esci, stage, query_ids, mined, counts[stage][name])
            for name, query_ids in (("train", train), ("validation", validation))
        }
        write_dataset_dict(splits, STAGE_FEATURES, staging / f"stage{stage}")
    summary = {
        "source": esci.source,
        "query_id_dtype": esci.query_id_dtype,
        "hard_negatives": str(hard_negatives) if isinstance(hard_negatives, str | os.PathLike) else None,
        "hard_negatives_model_fingerprint": _mined_summary(hard_negatives).get("model_fingerprint"),
        "hard_negatives_summary": _mined_summary(hard_negatives) or None,
        "parameters": {
            "seed": seed,
            "validation_fraction": validation_fraction,
            "hard_negatives_per_query": per_query,
            **{key: value for key, value in load_options.items() if key != "num_proc"},
        },
        "catalogue_products": len(esci.catalogue),
        "judgements": _judgement_counts(esci),
        "queries": {"train": len(train), "validation": len(validation)},
        "random_negatives": "drawn at training: train.py --num_random_negatives per query and epoch",
        "dropped": dict(sorted(dropped.items())),
        "stages": {
            f"stage{stage}": {split: split_summary(counter) for split, counter in by_split.items()}
            for stage, by_split in counts.items()
        },
    }
    write_text_atomic(staging / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return summary


def _judgement_counts(esci: EsciData) -> dict:
    table = arrow_table(esci.judgements)
    labels = pc.value_counts(table.column("esci_label")).to_pylist()
    judged = esci.judged()
    splits = pc.value_counts(judged.queries.column("split")).to_pylist()
    return {
        "rows": len(table),
        "queries": len(judged.queries),
        "by_label": dict(sorted((item["values"], item["counts"]) for item in labels)),
        "queries_by_split": dict(sorted((item["values"], item["counts"]) for item in splits)),
    }


def _move_parts(staging: Path, output: Path, stages: tuple[int, ...]) -> None:
    """Each part of ``staging`` replaces its old version in ``output`` (one atomic rename each)."""
    output.mkdir(parents=True, exist_ok=True)
    for part in sorted(staging.iterdir(), key=lambda path: path.name == SUMMARY_FILE):  # summary.json last
        with atomic_path(output / part.name) as temporary:
            os.replace(part, temporary)
    for stage in set(STAGES) - set(stages):
        stale = output / f"stage{stage}"
        if (stale / "dataset_dict.json").exists():
            shutil.rmtree(stale)


def _mined_summary(hard_negatives: object) -> dict:
    """The JSON summary mining writes beside a mined file ({} when there is none)."""
    if not isinstance(hard_negatives, str | os.PathLike):
        return {}
    summary = Path(hard_negatives).with_suffix(".json")
    return json.loads(summary.read_text()) if summary.is_file() else {}


def load_prepared(data_dir: str | os.PathLike) -> tuple[EsciData, dict[int, datasets.DatasetDict]]:
    """The catalogue, judgements and stage datasets (memory-mapped) that :func:`prepare` wrote under ``data_dir``."""
    folder = Path(data_dir)
    for needed in ("catalogue", "judgements"):
        if not (folder / needed).is_dir():
            raise UserInputError(f"{folder / needed}: not found; run `python prepare.py` first")
    esci = load_prepared_esci(folder)
    stages = {
        stage: datasets.load_from_disk(str(folder / f"stage{stage}"))
        for stage in STAGES
        if (folder / f"stage{stage}" / "dataset_dict.json").exists()
    }
    if not stages:
        raise UserInputError(f"{folder}: holds no stage1/2/3 folder; run `python prepare.py` first")
    if any(set(STAGE_FEATURES) - set(splits["train"].column_names) for splits in stages.values()):
        raise UserInputError(f"{folder}: its stage folders were written by an older version; run `python prepare.py`")
    return esci, stages


# ---------------------------------------------------------------- a look at the data


def show(data_dir: str | os.PathLike, stage: int | None = None, split: str = "train", queries: int = 3) -> str:
    """The first ``queries`` rows of a prepared stage split with their texts joined from the catalogue: what
    ``python prepare.py --show DIR`` prints."""
    esci, stages = load_prepared(data_dir)
    stage = stage or min(stages)
    if stage not in stages:
        raise UserInputError(f"{data_dir}: no stage{stage}/ (stages there: {sorted(stages)})")
    products = esci.products()
    rows = stages[stage][split].select(range(min(queries, len(stages[stage][split]))))
    lines = [f"{data_dir}/stage{stage}/{split}: {len(stages[stage][split])} queries (random negatives: drawn at "
             "training, --num_random_negatives per query and epoch)"]  # fmt: skip
    for row in rows:
        lines.append(f"\nquery {row['query_id']}: {row['query']!r}")
        texts = products.texts_at(row["positive_rows"])
        for product_id, label, text in zip(row["positive_ids"], row["positive_labels"], texts, strict=True):
            lines.append(f"  + {label or '-'} {product_id}  {text[:90]}")
        texts = products.texts_at(row["negative_rows"])
        for product_id, source, text in zip(row["negative_ids"], row["negative_sources"], texts, strict=True):
            lines.append(f"  - {source:<6} {product_id}  {text[:90]}")
    return "\n".join(lines)

"""Query groups: one training example = one query, one of its positives and negatives dealt from the query's pool.

Stage rows (``stages.py``) hold one row per query: its positives and its stored pool (I judgements, mined negatives).
:class:`GroupSource` indexes one group per (query, positive) (``GROUP_FEATURES``: a few integers, no text) and, for a
batch of them, resolves what the collator needs: the query text and the catalogue rows of the positive and of the
negatives dealt to the group this epoch.

The pool of a query in an epoch is its stored negatives plus ``num_random_negatives`` catalogue products drawn for
that epoch (never a product judged for the query, nor one of its positives or mined negatives), shuffled once with a
generator seeded by (seed, epoch, query). Its groups are dealt from it in turn, ``negatives_per_query`` each: group
``j`` takes the shuffled pool's positions ``j*k .. j*k + k - 1`` (modulo its size), so every negative of the pool is
used before any is used twice, and a mined negative always meets its own query.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..labels import KNOWN_POSITIVE_LABELS, NEGATIVE_LABELS, UNJUDGED
from .tables import Judgements, Products, arrow_table, in_memory_dataset

GROUP_FEATURES = datasets.Features(
    {
        "query_row": datasets.Value("int64"),  # the query's row in the source's stage rows
        "positive": datasets.Value("int32"),  # which of the query's positives
        "fixed": datasets.Value("bool"),  # the same negatives every epoch (validation)
    }
)
FIXED_EPOCH = 0  # validation groups are always dealt as in this epoch: the validation loss compares across epochs


def query_key(query_id: str) -> int:
    """A stable 32-bit key of a query id (a generator seed; the collator's key per query)."""
    return zlib.crc32(str(query_id).encode("utf-8"))


def deal(pool_size: int, group: int, count: int) -> list[int]:
    """The positions of a shuffled pool of ``pool_size`` that group number ``group`` of its query takes: ``count``
    of them (at most the pool), round-robin after the groups before it."""
    count = min(count, pool_size)
    return [(group * count + offset) % pool_size for offset in range(count)]


def random_negatives(catalogue_size: int, count: int, excluded: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``count`` catalogue rows drawn without replacement, none of them ``excluded``."""
    if count <= 0 or catalogue_size <= 0:
        return np.empty(0, dtype=np.int64)
    draw = rng.choice(catalogue_size, size=min(catalogue_size, count + len(excluded)), replace=False)
    return draw[~np.isin(draw, excluded)][:count]


@dataclass
class Group:
    """One resolved query group: its positive's catalogue row first, then the negatives dealt to it."""

    query_id: str
    query: str
    rows: list[int]
    labels: list[str]  # each product's ESCI label ("" unjudged)
    sources: list[str]  # "judged" (E/S/C positive or I negative), "random", "mined", "pseudo"
    known_positives: np.ndarray  # the query's E/S/C catalogue rows (never its in-batch negatives)


class GroupSource:
    """The stage rows of one or more splits (``parts``, one after the other), the product table and the judgements:
    everything the collator looks up. ``num_random_negatives`` are drawn per query and epoch."""

    def __init__(
        self,
        parts: Sequence[datasets.Dataset],
        products: Products,
        judged: Judgements,
        num_random_negatives: int = 4,
        seed: int = 42,
    ):
        self.parts = list(parts)
        self.starts = np.concatenate([[0], np.cumsum([len(part) for part in self.parts])]).astype(np.int64)
        self.table = pa.concat_tables([arrow_table(part).select(list(_COLUMNS)) for part in self.parts])
        self.products, self.judged = products, judged
        self.num_random_negatives, self.seed = num_random_negatives, seed

    def groups(self, part: int = 0, fixed: bool = False, with_query_ids: bool = False) -> datasets.Dataset:
        """One row per (query, positive) of ``parts[part]`` (``GROUP_FEATURES``; with ``with_query_ids``, a
        ``query_id`` column too)."""
        table = arrow_table(self.parts[part])
        counts = pc.list_value_length(table.column("positive_rows")).to_numpy(zero_copy_only=False).astype(np.int64)
        queries = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
        starts = np.repeat(np.cumsum(counts) - counts, counts)
        columns = {
            "query_row": pa.array(queries + self.starts[part]),
            "positive": pa.array((np.arange(len(queries)) - starts).astype(np.int32)),
            "fixed": pa.array(np.full(len(queries), fixed)),
        }
        if with_query_ids:
            columns["query_id"] = pc.cast(table.column("query_id"), pa.string()).take(pa.array(queries))
        return in_memory_dataset(pa.table(columns))

    def resolve(self, features: Sequence[dict], epoch: int, negatives_per_query: int) -> list[Group]:
        """The groups of a batch: each its query, its positive and the negatives dealt to it in ``epoch`` (fixed
        groups: in ``FIXED_EPOCH``)."""
        rows = self.table.take(pa.array([int(feature["query_row"]) for feature in features])).to_pylist()
        resolved = []
        for feature, row in zip(features, rows, strict=True):
            group_epoch = FIXED_EPOCH if feature.get("fixed") else epoch
            resolved.append(self._group(row, int(feature["positive"]), group_epoch, negatives_per_query))
        return resolved

    def _group(self, row: dict, positive: int, epoch: int, count: int) -> Group:
        position = self.judged.position(row["query_id"])
        pool_rows, pool_labels, pool_sources = self.pool(row, position, epoch)
        dealt = deal(len(pool_rows), positive, count)
        label = row["positive_labels"][positive]
        return Group(
            query_id=row["query_id"],
            query=row["query"] or "",
            rows=[row["positive_rows"][positive], *(pool_rows[i] for i in dealt)],
            labels=[label, *(pool_labels[i] for i in dealt)],
            sources=["pseudo" if label == UNJUDGED else "judged", *(pool_sources[i] for i in dealt)],
            known_positives=self.judged.rows_of(position, KNOWN_POSITIVE_LABELS),
        )

    def pool(self, row: dict, position: int, epoch: int) -> tuple[list[int], list[str], list[str]]:
        """The query's pool in ``epoch``, shuffled: (catalogue rows, labels, sources)."""
        rng = np.random.default_rng([self.seed, epoch, query_key(row["query_id"])])
        stored = list(row["negative_rows"])
        excluded = np.concatenate([self.judged.rows_of(position), row["positive_rows"], stored]).astype(np.int64)
        drawn = random_negatives(len(self.products), self.num_random_negatives, excluded, rng).tolist()
        rows = stored + drawn
        labels = [NEGATIVE_LABELS[0] if source == "judged" else UNJUDGED for source in row["negative_sources"]]
        labels += [UNJUDGED] * len(drawn)
        sources = list(row["negative_sources"]) + ["random"] * len(drawn)
        order = rng.permutation(len(rows))
        return [rows[i] for i in order], [labels[i] for i in order], [sources[i] for i in order]

    def texts(self, groups: datasets.Dataset, epochs: Sequence[int], negatives_per_query: int) -> datasets.Dataset:
        """``groups`` with their texts (``query``, ``product_text``, ``pool_texts``: every negative dealt to the
        group in ``epochs``): what a teacher scores once before training."""
        queries, positives, pools = [], [], []
        features = groups.select_columns(list(GROUP_FEATURES)).to_list()
        for epoch in epochs:
            for group in self.resolve(features, epoch, negatives_per_query):
                queries.append(group.query)
                texts = self.products.texts_at(group.rows)
                positives.append(texts[0])
                pools.append(texts[1:])
        return in_memory_dataset(
            pa.table(
                {
                    "query": pa.array(queries, pa.string()),
                    "product_text": pa.array(positives, pa.string()),
                    "pool_texts": pa.array(pools, pa.list_(pa.string())),
                }
            )
        )

    def with_lengths(self, groups: datasets.Dataset, tokenizer, max_length: int, batch: int = 1000):
        """``groups`` with a ``length`` column: the token count of each group's positive product text, computed a
        batch at a time (for length-grouped batches; nothing else of the tokenisation is kept)."""
        lengths = np.empty(len(groups), dtype=np.int32)
        for start in range(0, len(groups), batch):
            part = groups.select_columns(["query_row", "positive"])[start : start + batch]
            rows = self.table.column("positive_rows").take(pa.array(part["query_row"])).to_pylist()
            texts = self.products.texts_at([row[j] for row, j in zip(rows, part["positive"], strict=True)])
            tokens = tokenizer(texts, truncation=True, max_length=max_length, return_attention_mask=False)
            lengths[start : start + len(texts)] = [len(ids) for ids in tokens["input_ids"]]
        return groups.add_column("length", lengths.tolist())


_COLUMNS = ("query_id", "query", "positive_labels", "positive_rows", "negative_sources", "negative_rows")

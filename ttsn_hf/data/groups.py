"""Query groups: one training example = one query, one positive and the query's pool of negatives.

Stage rows (``stages.py``) are independent (query, product, target) pairs; :func:`build_groups` turns them into
one row per (query, positive) that carries the query's whole negative pool (its I judgements, random catalogue
products and, in stages 2-3, mined negatives) as list columns. The collator draws ``negatives_per_query`` of the
pool per epoch, so a mined negative always meets its own query in the loss.
"""

from __future__ import annotations

import zlib

import datasets
import numpy as np
import pandas as pd

POOL_COLUMNS = ("pool_ids", "pool_texts", "pool_labels", "pool_sources")
GROUP_FEATURES = datasets.Features(
    {
        "query_id": datasets.Value("string"),
        "query": datasets.Value("string"),
        "product_id": datasets.Value("string"),
        "product_text": datasets.Value("string"),
        "esci_label": datasets.Value("string"),
        "source": datasets.Value("string"),
        "stage": datasets.Value("int64"),
        **{column: datasets.Sequence(datasets.Value("string")) for column in POOL_COLUMNS},
    }
)


def build_groups(pairs: datasets.Dataset, pool_limit: int | None = None, seed: int = 42) -> datasets.Dataset:
    """One row per positive pair of ``pairs``, with its query's negatives as the pool (list columns).

    ``pool_limit`` keeps a seeded sample of that many negatives per query (for validation: fixed negatives, so the
    validation loss compares across epochs). A query without negatives gets an empty pool; one without a positive
    gives no group.
    """
    frame = pairs.select_columns(
        ["query_id", "query", "product_id", "product_text", "esci_label", "target", "source", "stage"]
    ).to_pandas()
    negatives = frame[frame["target"] == 0]
    pools = negatives.groupby("query_id", sort=False).agg(
        pool_ids=("product_id", list),
        pool_texts=("product_text", list),
        pool_labels=("esci_label", list),
        pool_sources=("source", list),
    )
    if pool_limit is not None:
        pools = pools.apply(lambda pool: _sample_pool(pool, pool_limit, seed), axis=1)
    groups = frame[frame["target"] == 1].drop(columns="target").join(pools, on="query_id")
    for column in POOL_COLUMNS:
        groups[column] = groups[column].apply(lambda value: value if isinstance(value, list) else [])
    return datasets.Dataset.from_pandas(
        groups[list(GROUP_FEATURES)].reset_index(drop=True), features=GROUP_FEATURES, preserve_index=False
    )


def _sample_pool(pool: pd.Series, limit: int, seed: int) -> pd.Series:
    size = len(pool["pool_ids"])
    if size <= limit:
        return pool
    rng = np.random.default_rng([seed, zlib.crc32(pool.name.encode("utf-8"))])
    keep = np.sort(rng.choice(size, size=limit, replace=False))
    return pd.Series({column: [pool[column][i] for i in keep] for column in POOL_COLUMNS})

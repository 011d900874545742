"""Retrieval metrics with ESCI graded relevance: Recall@k, MRR, nDCG@k; paired-bootstrap CIs, a paired
randomisation test and win / tie / loss counts.

Relevance follows the ESCI labels: a product is relevant when it is Exact or Substitute ("E ∪ S"), and nDCG
uses the graded gains E 1.0, S 0.1, C 0.01, I 0 (unjudged products count as I). The "_exact" variants count
Exact products alone. ``esci_rank_ndcg`` is the ESCI task-1 (query-product ranking) metric: nDCG of each
query's whole judged list ordered by the system's score, same gains, no cut-off. A metric is undefined (``nan``)
for a query that has nothing relevant judged, and such queries are left out of that metric's mean: no ranking
could score on them.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

import numpy as np

from ..labels import ESCI_GAINS, EXACT_GAINS, EXACT_LABELS, RELEVANT_LABELS

TIE_DECIMALS = 4  # per-query values equal to 4 decimals are a tie (report.html stores them to 4 decimals)


def recall_at_k(ranked: Sequence[str], relevant: Collection[str], k: int = 10) -> float:
    """|relevant ∩ top k| / |relevant|; ``nan`` when nothing is relevant."""
    if not relevant:
        return math.nan
    return len(set(ranked[:k]) & set(relevant)) / len(relevant)


def reciprocal_rank(ranked: Sequence[str], relevant: Collection[str], depth: int = 100) -> float:
    """1 / rank of the first relevant product within the top ``depth`` (0 if none); ``nan`` when nothing is
    relevant."""
    if not relevant:
        return math.nan
    relevant = set(relevant)
    for rank, product_id in enumerate(ranked[:depth], start=1):
        if product_id in relevant:
            return 1.0 / rank
    return 0.0


def _dcg(gains: Sequence[float]) -> float:
    return sum(gain / math.log2(rank + 1) for rank, gain in enumerate(gains, start=1))


def ndcg_at_k(ranked: Sequence[str], gains: Mapping[str, float], k: int = 10) -> float:
    """nDCG@k with linear gains (gain / log2(rank + 1)), the ideal ranking built from ``gains`` (the query's
    judgements); unjudged products gain 0. ``nan`` when no judged product has a positive gain."""
    ideal = _dcg(sorted((gain for gain in gains.values() if gain > 0), reverse=True)[:k])
    if ideal == 0:
        return math.nan
    return _dcg([gains.get(product_id, 0.0) for product_id in ranked[:k]]) / ideal


METRIC_LABELS = {
    "recall@10": "Recall@10",
    "mrr": "MRR",
    "ndcg@10": "nDCG@10",
    "recall@10_exact": "Recall@10 (E)",
    "mrr_exact": "MRR (E)",
    "ndcg@10_exact": "nDCG@10 (E)",
    "esci_rank_ndcg": "ESCI rank nDCG",
}


def metric_label(name: str) -> str:
    return METRIC_LABELS.get(name, name)


def metric_names(k: int = 10) -> list[str]:
    """The names ``evaluate_run`` reports, graded (E ∪ S) first, then Exact-only, then the ESCI task-1 ranking."""
    graded = [f"recall@{k}", "mrr", f"ndcg@{k}"]
    return graded + [f"{name}_exact" for name in graded] + ["esci_rank_ndcg"]


def judged_ranking(ranked: Sequence[str], labels: Mapping[str, str]) -> list[str]:
    """A query's judged products in the order of ``ranked``; those it does not hold follow, sorted by id (a
    system without scores for every judged product, e.g. a top-k run, cannot order them)."""
    placed = [pid for pid in dict.fromkeys(ranked) if pid in labels]
    return placed + sorted(set(labels) - set(placed))


def esci_rank_ndcg(ranked_judged: Sequence[str], labels: Mapping[str, str]) -> float:
    """nDCG of the whole judged list in the system's order (gains E 1, S 0.1, C 0.01, I 0; no cut-off)."""
    ranking = judged_ranking(ranked_judged, labels)
    return ndcg_at_k(ranking, {pid: ESCI_GAINS[label] for pid, label in labels.items()}, k=max(1, len(ranking)))


def query_metrics(
    ranked: Sequence[str],
    labels: Mapping[str, str],
    k: int = 10,
    depth: int = 100,
    ranked_judged: Sequence[str] | None = None,
) -> dict[str, float]:
    """All metrics of one query, from its ranking and its judgements (product_id -> E/S/C/I); ``ranked_judged``
    (its judged products ordered by the system's score) gives ``esci_rank_ndcg``, else the ranking does."""
    relevant = [pid for pid, label in labels.items() if label in RELEVANT_LABELS]
    exact = [pid for pid, label in labels.items() if label in EXACT_LABELS]
    names = metric_names(k)
    values = [
        recall_at_k(ranked, relevant, k),
        reciprocal_rank(ranked, relevant, depth),
        ndcg_at_k(ranked, {pid: ESCI_GAINS[label] for pid, label in labels.items()}, k),
        recall_at_k(ranked, exact, k),
        reciprocal_rank(ranked, exact, depth),
        ndcg_at_k(ranked, {pid: EXACT_GAINS[label] for pid, label in labels.items()}, k),
        esci_rank_ndcg(ranked if ranked_judged is None else ranked_judged, labels),
    ]
    return dict(zip(names, values, strict=True))


def _nan_to_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def evaluate_run(
    run: Mapping[str, Sequence[str]],
    qrels: Mapping[str, Mapping[str, str]],
    k: int = 10,
    depth: int = 100,
    judged_run: Mapping[str, Sequence[str]] | None = None,
) -> tuple[dict[str, float | int], list[dict]]:
    """Score a ranked run (query_id -> product ids, best first) against ESCI qrels
    (query_id -> {product_id: label}).

    Every query of ``qrels`` is evaluated (a query missing from the run has an empty ranking). Returns the
    summary (each metric's mean over the queries where it is defined, ``num_queries``, and how many queries
    have E ∪ S and E judgements) and one row per query (undefined metrics are ``None``). ``judged_run``
    (query_id -> its judged products by the system's score) feeds ``esci_rank_ndcg``.
    """
    names = metric_names(k)
    per_query = []
    for query_id, labels in qrels.items():
        ranked_judged = None if judged_run is None else judged_run.get(query_id)
        values = query_metrics(list(run.get(query_id, [])), labels, k, depth, ranked_judged)
        row = {"query_id": query_id, **{name: _nan_to_none(values[name]) for name in names}}
        row["num_relevant"] = sum(label in RELEVANT_LABELS for label in labels.values())
        row["num_exact"] = sum(label in EXACT_LABELS for label in labels.values())
        per_query.append(row)
    summary: dict[str, float | int] = {}
    for name in names:
        defined = [row[name] for row in per_query if row[name] is not None]
        summary[name] = float(np.mean(defined)) if defined else math.nan
    summary["num_queries"] = len(per_query)
    summary["num_queries_with_relevant"] = sum(row["num_relevant"] > 0 for row in per_query)
    summary["num_queries_with_exact"] = sum(row["num_exact"] > 0 for row in per_query)
    return summary, per_query


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, n: int = 10000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float, float]:
    """Mean of ``a - b`` over paired observations (queries) and its percentile-bootstrap confidence interval.

    Queries are resampled with replacement ``n`` times; pairs with a ``nan`` on either side are dropped.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired_bootstrap needs arrays of one shape, got {a.shape} and {b.shape}")
    differences = (a - b)[~(np.isnan(a) | np.isnan(b))]
    if differences.size == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.empty(n)
    chunk = max(1, 2**22 // differences.size)  # bounds the index matrix to ~32 MiB
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        samples = rng.integers(0, differences.size, size=(stop - start, differences.size))
        means[start:stop] = differences[samples].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(differences.mean()), float(low), float(high)


def paired_randomisation_test(a: np.ndarray, b: np.ndarray, n: int = 10000, seed: int = 0) -> float | np.ndarray:
    """Two-sided p-value of the paired randomisation (sign-flip permutation) test of ``mean(a - b) = 0``.

    Under the null hypothesis each query's two values are exchangeable, so each difference keeps or flips its sign
    at random: the p-value is the share of sign assignments whose mean difference is at least as far from 0 as the
    observed one. All 2^m assignments are enumerated when there are no more than ``n``, else ``n`` are drawn and
    the observed one counted in (``(hits + 1) / (n + 1)``, never 0). Pairs with a ``nan`` are left out.

    ``a`` and ``b`` of shape (queries, j) test j columns at once (e.g. metrics, comparisons) on the same draws.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired_randomisation_test needs arrays of one shape, got {a.shape} and {b.shape}")
    # a pair with a nan becomes a difference of 0: it adds nothing to any sum, flipped or not, so the share of
    # assignments at least as extreme is that of the defined pairs alone
    differences = np.nan_to_num(a - b, nan=0.0).reshape(a.shape[0], -1)
    m = differences.shape[0]
    observed = np.abs(differences.sum(axis=0))
    threshold = observed - 1e-9 * np.maximum(1.0, observed)  # sums equal but for rounding count as equal
    exact = m < 63 and 2**m <= n
    total = 2**m if exact else n
    rng = np.random.default_rng(seed)
    hits, chunk = np.zeros(differences.shape[1], dtype=np.int64), max(1, 2**22 // max(m, 1))
    for start in range(0, total, chunk):
        stop = min(total, start + chunk)
        if exact:
            flipped = (np.arange(start, stop, dtype=np.int64)[:, None] >> np.arange(m, dtype=np.int64)) & 1
        else:  # one random bit per sign: drawing bytes and unpacking them is 5x faster than integers(0, 2)
            random_bytes = rng.integers(0, 256, size=(stop - start, (m + 7) // 8), dtype=np.uint8)
            flipped = np.unpackbits(random_bytes, axis=1, count=m)
        sums = differences.sum(axis=0) - 2.0 * (flipped.astype(np.float64) @ differences)
        hits += (np.abs(sums) >= threshold).sum(axis=0)
    p_values = hits / total if exact else (hits + 1) / (n + 1)
    p_values[~(~np.isnan(a) & ~np.isnan(b)).reshape(m, -1).any(axis=0)] = math.nan
    return float(p_values[0]) if a.ndim == 1 else p_values


def win_tie_loss(a: np.ndarray, b: np.ndarray, decimals: int = TIE_DECIMALS) -> tuple[int, int, int]:
    """How many queries ``a`` scores higher than, equal to, and lower than ``b``, values compared to ``decimals``
    places (a difference below that is a tie, not a win); pairs with a ``nan`` are left out."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    defined = ~(np.isnan(a) | np.isnan(b))
    difference = np.round(a[defined], decimals) - np.round(b[defined], decimals)
    return int((difference > 0).sum()), int((difference == 0).sum()), int((difference < 0).sum())

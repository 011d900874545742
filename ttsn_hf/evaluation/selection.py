"""Model selection by retrieval: Recall@10, nDCG@10 and MRR of the validation queries over the catalogue, at every
epoch's evaluation (as sentence-transformers' ``InformationRetrievalEvaluator``)."""

from __future__ import annotations

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .evaluate import evaluate_model
from .metrics import metric_names

DEFAULT_SELECTION_CORPUS_SIZE = 100_000
SELECTION_METRICS = tuple(metric_names(10))  # each is logged as eval_<name> at every validation


class RetrievalEvaluator:
    """Scores a model on ``query_ids`` over a corpus: the whole catalogue when it has at most ``corpus_size``
    products, else those queries' judged products plus a fixed random sample (``seed``) of the rest up to
    ``corpus_size``: the same corpus at every epoch, so the metrics compare across epochs.

    ``judgements`` and ``catalogue`` are DataFrames or (memory-mapped) ``datasets``: only the validation queries'
    rows and the corpus's products become Python objects, never the whole release."""

    def __init__(
        self,
        judgements: pd.DataFrame | datasets.Dataset,
        catalogue: pd.DataFrame | datasets.Dataset,
        query_ids: list[str],
        corpus_size: int = DEFAULT_SELECTION_CORPUS_SIZE,
        seed: int = 42,
        batch_size: int = 256,
        bf16: bool = False,
    ):
        judgements = _arrow(judgements)
        wanted = pa.array(sorted({str(query_id) for query_id in query_ids}), pa.string())
        rows = judgements.filter(pc.is_in(pc.cast(judgements["query_id"], pa.string()), value_set=wanted))
        rows = rows.to_pandas().astype({"query_id": str, "product_id": str})
        self.queries = dict(zip(rows["query_id"], rows["query"].fillna(""), strict=True))
        self.qrels: dict[str, dict[str, str]] = {}
        for query_id, product_id, label in zip(rows["query_id"], rows["product_id"], rows["esci_label"], strict=True):
            self.qrels.setdefault(query_id, {})[product_id] = label
        catalogue = _arrow(catalogue)
        product_ids = pc.cast(catalogue["product_id"], pa.string())
        if len(catalogue) > corpus_size:
            judged_ids = pa.array(rows["product_id"].unique(), pa.string())
            judged = pc.is_in(product_ids, value_set=judged_ids).to_numpy(zero_copy_only=False)
            others = np.flatnonzero(~judged)
            room = max(0, corpus_size - int(judged.sum()))
            sample = np.random.default_rng(seed).choice(others, size=min(room, len(others)), replace=False)
            keep = judged.copy()
            keep[sample] = True
            rows_kept = pa.array(np.flatnonzero(keep))
            product_ids, catalogue = product_ids.take(rows_kept), catalogue.take(rows_kept)
        self.product_ids = product_ids.to_pylist()
        self.product_texts = pc.fill_null(catalogue["product_text"], "").to_pylist()
        self.batch_size, self.bf16 = batch_size, bf16
        self.query_ids: list[str] = []
        self.last_per_query: dict[str, list[float | None]] = {}

    def __call__(self, model) -> dict[str, float]:
        """Every metric of :data:`SELECTION_METRICS`, averaged over the queries; the per-query values are kept
        in ``last_per_query`` ({metric: [value per query of ``query_ids``]}, None where undefined)."""
        was_training = model.training
        model.eval()
        try:
            summary, per_query = evaluate_model(
                model, self.queries, self.qrels, self.product_ids, self.product_texts, 100, self.batch_size, self.bf16
            )
        finally:
            model.train(was_training)
        self.query_ids = [row["query_id"] for row in per_query]
        self.last_per_query = {name: [row[name] for row in per_query] for name in SELECTION_METRICS}
        return {name: float(summary[name]) for name in SELECTION_METRICS}


def _arrow(table: pd.DataFrame | datasets.Dataset) -> pa.Table:
    if isinstance(table, pd.DataFrame):
        return pa.Table.from_pandas(table, preserve_index=False)
    return table.with_format("arrow")[:]  # a zero-copy view of a memory-mapped dataset (its rows in order)

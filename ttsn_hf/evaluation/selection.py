"""Model selection by retrieval: Recall@10, nDCG@10 and MRR of the validation queries over the catalogue, at every
epoch's evaluation (as sentence-transformers' ``InformationRetrievalEvaluator``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .evaluate import evaluate_model

DEFAULT_SELECTION_CORPUS_SIZE = 100_000


class RetrievalEvaluator:
    """Scores a model on ``query_ids`` over a corpus: the whole catalogue when it has at most ``corpus_size``
    products, else those queries' judged products plus a fixed random sample (``seed``) of the rest up to
    ``corpus_size``: the same corpus at every epoch, so the metrics compare across epochs."""

    def __init__(
        self,
        judgements: pd.DataFrame,
        catalogue: pd.DataFrame,
        query_ids: list[str],
        corpus_size: int = DEFAULT_SELECTION_CORPUS_SIZE,
        seed: int = 42,
        batch_size: int = 256,
        bf16: bool = False,
    ):
        rows = judgements[judgements["query_id"].astype(str).isin(set(query_ids))].astype({"product_id": str})
        self.queries = dict(zip(rows["query_id"].astype(str), rows["query"].fillna(""), strict=True))
        self.qrels: dict[str, dict[str, str]] = {}
        labelled = zip(rows["query_id"].astype(str), rows["product_id"], rows["esci_label"], strict=True)
        for query_id, product_id, label in labelled:
            self.qrels.setdefault(query_id, {})[product_id] = label
        catalogue = catalogue.astype({"product_id": str})
        if len(catalogue) > corpus_size:
            judged = catalogue["product_id"].isin(set(rows["product_id"]))
            others = np.flatnonzero(~judged.to_numpy())
            room = max(0, corpus_size - int(judged.sum()))
            sample = np.random.default_rng(seed).choice(others, size=min(room, len(others)), replace=False)
            keep = judged.to_numpy().copy()
            keep[sample] = True
            catalogue = catalogue[keep]
        self.product_ids = catalogue["product_id"].tolist()
        self.product_texts = catalogue["product_text"].fillna("").tolist()
        self.batch_size, self.bf16 = batch_size, bf16

    def __call__(self, model) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            summary, _ = evaluate_model(
                model, self.queries, self.qrels, self.product_ids, self.product_texts, 100, self.batch_size, self.bf16
            )
        finally:
            model.train(was_training)
        return {name: float(summary[name]) for name in ("recall@10", "ndcg@10", "mrr")}

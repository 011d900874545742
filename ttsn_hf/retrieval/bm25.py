"""BM25 baseline over the product catalogue, with bm25s and its own tokenizer (lowercase, English stopwords)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..extras import require


class BM25Retriever:
    """A bm25s index of ``texts`` whose search returns the matching ``ids``.

    Queries are tokenised with the corpus vocabulary: words the corpus never uses cannot match anyway.
    """

    def __init__(
        self,
        texts: Sequence[str],
        ids: Sequence[str],
        stopwords: str | list[str] | None = "en",
        show_progress: bool = True,
    ):
        if len(texts) != len(ids):
            raise ValueError(f"BM25Retriever got {len(texts)} texts but {len(ids)} ids")
        self.ids = np.asarray(ids, dtype=object)
        self.show_progress = show_progress
        bm25s = require("bm25s", "BM25 (eval.py --bm25 / --hybrid)")
        self.tokenizer = bm25s.tokenization.Tokenizer(stopwords=stopwords)
        corpus_tokens = self.tokenizer.tokenize(
            [text or "" for text in texts], update_vocab=True, return_as="tuple", show_progress=show_progress
        )
        self.retriever = bm25s.BM25()
        self.retriever.index(corpus_tokens, show_progress=show_progress)

    def search(self, queries: Sequence[str], k: int = 100) -> tuple[list[list[str]], list[np.ndarray]]:
        """The top ``k`` ids of each query (best first) and their BM25 scores.

        Only products sharing a word with the query are returned, so a list can be shorter than ``k`` (empty
        for a query of stopwords or unknown words): products scoring 0 would come in arbitrary order.
        """
        k = min(k, len(self.ids))
        query_tokens = self.tokenizer.tokenize(
            list(queries), update_vocab=False, return_as="ids", show_progress=self.show_progress
        )
        rows, scores = self.retriever.retrieve(query_tokens, k=k, show_progress=self.show_progress)
        empty_token = self.tokenizer.word_to_id.get("")
        hits, hit_scores = [], []
        for tokens, row, row_scores in zip(query_tokens, rows, scores, strict=True):
            keep = row_scores > 0 if any(token != empty_token for token in tokens) else np.zeros(k, bool)
            hits.append(self.ids[row[keep]].tolist())
            hit_scores.append(row_scores[keep])
        return hits, hit_scores

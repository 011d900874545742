"""Teacher scores for query groups, computed once and cached (never per step).

The cache is keyed by what decides a score: the teacher's fingerprint (the sha256 of its files: a local folder, or
the Hub snapshot of the commit it resolves to), its kind (bi-encoder or cross-encoder) and the precision it ran in.

Scores are on the student's scale, the cosine's [-1, 1], so that MarginMSE compares margins of one size:
- a bi-encoder teacher gives the cosine of its normalised embeddings;
- a CrossEncoder gives ``2 * sigmoid(logit) - 1`` of its raw logit (``predict`` with an identity activation,
  whatever activation its config declares; a model with one output), a monotone map of its relevance probability
  onto (-1, 1).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import torch

from ..atomic import atomic_path
from ..errors import UserInputError
from ..modeling.pretrained import resolve_pretrained

logger = logging.getLogger(__name__)
SCALE = {"bi_encoder": "cosine", "cross_encoder": "2*sigmoid(logit)-1"}


def pair_key(query: str, product_text: str) -> int:
    """A stable 63-bit key of what the teacher sees: the query and the product text."""
    digest = hashlib.blake2b(f"{query}\x00{product_text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def teacher_fingerprint(folder: str | Path) -> str:
    """The sha256 of a model folder's files (names and contents)."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\x00")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


class TeacherScorer:
    """Scores (query, product text) pairs with a sentence-transformers bi-encoder or, with ``cross_encoder=True``,
    a ``CrossEncoder`` (see the module docstring for the scale); cached in ``cache_dir`` under :attr:`key`."""

    def __init__(
        self,
        name_or_path: str,
        cache_dir: str | Path,
        cross_encoder: bool = False,
        revision: str | None = None,
        batch_size: int = 64,
        bf16: bool = False,
    ):
        self.name_or_path, self.cross_encoder, self.revision = name_or_path, cross_encoder, revision
        self.batch_size, self.bf16 = batch_size, bf16
        self.folder = self._resolve(name_or_path, revision)
        self.fingerprint = teacher_fingerprint(self.folder)
        self.kind = "cross_encoder" if cross_encoder else "bi_encoder"
        self.precision = "bf16" if bf16 else "fp32"
        self.key = hashlib.sha256(json.dumps(self.cache_identity(), sort_keys=True).encode()).hexdigest()[:16]
        self.cache_path = Path(cache_dir) / f"teacher_scores_{self.key}.parquet"
        self.scores: dict[int, float] = {}
        if self.cache_path.exists():
            cached = pd.read_parquet(self.cache_path)
            self.scores = dict(zip(cached["key"].tolist(), cached["score"].tolist(), strict=True))
        self.scored_now = 0

    @staticmethod
    def _resolve(name_or_path: str, revision: str | None) -> Path:
        try:
            return resolve_pretrained(name_or_path, revision)
        except UserInputError as error:
            raise UserInputError(
                f"--teacher_model_name_or_path: {error}; offline, fetch a teacher folder first "
                "(python bench/fetch_teacher.py)"
            ) from None

    def cache_identity(self) -> dict[str, str]:
        """What a cached score depends on."""
        scale = SCALE[self.kind]
        return {"fingerprint": self.fingerprint, "kind": self.kind, "precision": self.precision, "scale": scale}

    def __call__(self, query: str, product_texts: list[str]) -> list[float]:
        return [self.scores.get(pair_key(query, text), float("nan")) for text in product_texts]

    def score_groups(self, groups: datasets.Dataset) -> TeacherScorer:
        """Scores every (query, positive) and (query, pool product) pair of ``groups`` not yet in the cache."""
        frame = groups.select_columns(["query", "product_text", "pool_texts"]).to_pandas()
        pairs = {(q, t) for q, t in zip(frame["query"], frame["product_text"], strict=True)}
        pairs |= {(q, t) for q, pool in zip(frame["query"], frame["pool_texts"], strict=True) for t in pool}
        missing = [pair for pair in sorted(pairs) if pair_key(*pair) not in self.scores]
        if missing:
            cached = len(pairs) - len(missing)
            logger.info("teacher %s: scoring %d pairs (%d cached)", self.name_or_path, len(missing), cached)
            device = "cuda" if torch.cuda.is_available() else "cpu"
            with torch.autocast(device, dtype=torch.bfloat16, enabled=self.bf16):
                scores = self._score(missing)
            self.scores.update({pair_key(*pair): float(score) for pair, score in zip(missing, scores, strict=True)})
            self.scored_now += len(missing)
            self._save()
        return self

    def _score(self, pairs: Iterable[tuple[str, str]]) -> np.ndarray:
        pairs = list(pairs)
        if self.cross_encoder:
            return self._cross_encoder_scores(pairs)
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(self.folder))
        embeddings = self._embeddings(model, sorted({text for pair in pairs for text in pair}))
        return np.array([float(embeddings[query] @ embeddings[text]) for query, text in pairs])

    def _cross_encoder_scores(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        from sentence_transformers import CrossEncoder

        model = CrossEncoder(str(self.folder))
        if model.num_labels != 1:
            raise UserInputError(
                f"--teacher_cross_encoder {self.name_or_path}: a CrossEncoder with {model.num_labels} outputs; "
                "distillation needs one relevance score per pair"
            )
        logits = model.predict(
            pairs,
            batch_size=self.batch_size,
            activation_fn=torch.nn.Identity(),
            show_progress_bar=True,
            convert_to_tensor=True,
        )
        return (2 * torch.sigmoid(logits.float()) - 1).cpu().numpy()

    def _embeddings(self, model, texts: list[str]) -> dict[str, np.ndarray]:
        """A bi-encoder teacher's embeddings, also cached by text: other groups of the same texts (another
        fold, another stage's pool) cost only a dot product."""
        path = self.cache_path.with_name(f"teacher_embeddings_{self.key}.parquet")
        cached = pd.read_parquet(path) if path.exists() else pd.DataFrame({"text": [], "embedding": []})
        known = dict(zip(cached["text"], cached["embedding"], strict=True))
        missing = [text for text in texts if text not in known]
        if missing:
            encode = dict(batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=True)
            vectors = model.encode(missing, convert_to_tensor=True, **encode).float().cpu().numpy()
            known.update(zip(missing, vectors, strict=True))
            frame = pd.DataFrame({"text": list(known), "embedding": [np.asarray(v).tolist() for v in known.values()]})
            with atomic_path(path) as temporary:
                frame.to_parquet(temporary, index=False)
        return {text: np.asarray(known[text], dtype=np.float32) for text in texts}

    def _save(self) -> None:
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame({"key": list(self.scores), "score": list(self.scores.values())})
        with atomic_path(self.cache_path) as temporary:
            frame.to_parquet(temporary, index=False)

    def get_config_dict(self) -> dict[str, str | bool]:
        return {"teacher": self.name_or_path, "cross_encoder": self.cross_encoder, **self.cache_identity()}

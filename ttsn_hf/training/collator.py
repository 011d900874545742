"""Tokenise stage datasets once (batched ``datasets.map``) and collate (query, product) pair batches."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import datasets
import torch
from transformers import PreTrainedTokenizerBase

from ..labels import DEFAULT_LABEL_WEIGHTS


def product_key(product_id: str) -> int:
    """A stable non-negative 63-bit key for a product id (tensors cannot hold strings)."""
    return int.from_bytes(hashlib.blake2b(product_id.encode(), digest_size=8).digest(), "big") >> 1


def tokenize_pairs(
    dataset: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    query_max_length: int,
    product_max_length: int,
    known_positives: Mapping[str, list[str]],
    label_weights: Mapping[str, float] = DEFAULT_LABEL_WEIGHTS,
) -> datasets.Dataset:
    """Add token ids, pair weights and product keys; ``mask_keys`` lists the query's known positives, which the
    in-batch loss never treats as negatives. Cached by ``datasets`` for datasets loaded from disk."""

    def encode(batch: dict[str, list]) -> dict[str, list]:
        queries = tokenizer(batch["query"], truncation=True, max_length=query_max_length)["input_ids"]
        products = tokenizer(batch["product_text"], truncation=True, max_length=product_max_length)["input_ids"]
        return {
            "query_input_ids": queries,
            "product_input_ids": products,
            "length": [len(ids) for ids in products],
            "weight": [label_weights.get(label, 1.0) for label in batch["esci_label"]],
            "product_key": [product_key(pid) for pid in batch["product_id"]],
            "mask_keys": [[product_key(pid) for pid in known_positives.get(qid, [])] for qid in batch["query_id"]],
        }

    return dataset.map(encode, batched=True, desc="tokenize")


@dataclass
class TwoTowerCollator:
    """Pads queries and products separately, each to its own longest sequence in the batch."""

    tokenizer: PreTrainedTokenizerBase

    def _pad(self, features: list[dict], column: str) -> dict[str, torch.Tensor]:
        return self.tokenizer.pad({"input_ids": [f[column] for f in features]}, return_tensors="pt")

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        queries = self._pad(features, "query_input_ids")
        products = self._pad(features, "product_input_ids")
        longest_mask = max(1, max(len(f["mask_keys"]) for f in features))
        mask_keys = torch.full((len(features), longest_mask), -1, dtype=torch.long)
        for row, feature in enumerate(features):
            mask_keys[row, : len(feature["mask_keys"])] = torch.tensor(feature["mask_keys"], dtype=torch.long)
        return {
            "query_input_ids": queries["input_ids"],
            "query_attention_mask": queries["attention_mask"],
            "product_input_ids": products["input_ids"],
            "product_attention_mask": products["attention_mask"],
            "targets": torch.tensor([f["target"] for f in features], dtype=torch.float),
            "weights": torch.tensor([f["weight"] for f in features], dtype=torch.float),
            "product_keys": torch.tensor([f["product_key"] for f in features], dtype=torch.long),
            "mask_keys": mask_keys,
        }

"""Tokenise query groups once (batched ``datasets.map``) and collate them, drawing each group's negatives per epoch."""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import datasets
import numpy as np
import torch
from transformers import PreTrainedTokenizerBase, TrainerCallback

DEFAULT_LABEL_WEIGHTS = {"E": 1.0, "S": 0.5, "C": 0.25, "I": 1.0, "": 1.0}
DEFAULT_NEGATIVES_PER_QUERY = 1

TeacherLookup = Callable[[str, list[str]], list[float]]


def product_key(product_id: str) -> int:
    """A stable non-negative 63-bit key for a product id (tensors cannot hold strings)."""
    return int.from_bytes(hashlib.blake2b(product_id.encode(), digest_size=8).digest(), "big") >> 1


def tokenize_groups(
    dataset: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    query_max_length: int,
    product_max_length: int,
    known_positives: Mapping[str, list[str]],
    label_weights: Mapping[str, float] = DEFAULT_LABEL_WEIGHTS,
    teacher_scores: TeacherLookup | None = None,
) -> datasets.Dataset:
    """Add token ids, label weights and product keys to query groups (:func:`ttsn_hf.data.groups.build_groups`):
    the positive's, and a list of them for the pool. ``mask_keys`` lists the query's known positives, which the
    in-batch loss never treats as negatives. ``teacher_scores(query, product_texts)`` adds the teacher's score of
    the positive and of each pool product (``teacher_scores`` column: positive first). Cached by ``datasets`` for
    datasets loaded from disk."""

    def encode(batch: dict[str, list]) -> dict[str, list]:
        queries = tokenizer(batch["query"], truncation=True, max_length=query_max_length)["input_ids"]
        texts = sorted({text for pool in batch["pool_texts"] for text in pool} | set(batch["product_text"]))
        ids = tokenizer(texts, truncation=True, max_length=product_max_length)["input_ids"]
        by_text = dict(zip(texts, ids, strict=True))
        columns = {
            "query_input_ids": queries,
            "product_input_ids": [by_text[text] for text in batch["product_text"]],
            "pool_input_ids": [[by_text[text] for text in pool] for pool in batch["pool_texts"]],
            "length": [len(by_text[text]) for text in batch["product_text"]],
            "weight": [label_weights.get(label, 1.0) for label in batch["esci_label"]],
            "pool_weights": [[label_weights.get(label, 1.0) for label in pool] for pool in batch["pool_labels"]],
            "product_key": [product_key(pid) for pid in batch["product_id"]],
            "pool_keys": [[product_key(pid) for pid in pool] for pool in batch["pool_ids"]],
            "query_key": [zlib.crc32(qid.encode("utf-8")) for qid in batch["query_id"]],
            "mask_keys": [[product_key(pid) for pid in known_positives.get(qid, [])] for qid in batch["query_id"]],
        }
        if teacher_scores is not None:
            columns["teacher_scores"] = [
                teacher_scores(query, [text, *pool])
                for query, text, pool in zip(batch["query"], batch["product_text"], batch["pool_texts"], strict=True)
            ]
        return columns

    return dataset.map(encode, batched=True, desc="tokenize")


@dataclass
class TwoTowerCollator:
    """Collates query groups: each query once, then its positive and ``negatives_per_query`` negatives drawn from
    its pool with a generator seeded by (seed, epoch, query, positive): other negatives each epoch, the same ones
    for the same epoch and seed. Queries and products are each padded to their own longest sequence.

    Product rows of the batch: group ``i``'s positive at ``positive_index[i]``, followed by its negatives;
    ``product_group[j]`` is the group (query row) of product row ``j``.
    """

    tokenizer: PreTrainedTokenizerBase
    negatives_per_query: int = DEFAULT_NEGATIVES_PER_QUERY
    seed: int = 42
    epoch: int = 0

    def _pad(self, sequences: list[list[int]]) -> dict[str, torch.Tensor]:
        return self.tokenizer.pad({"input_ids": sequences}, return_tensors="pt")

    def draw(self, feature: dict) -> list[int]:
        """Indices of the pool negatives this group uses this epoch."""
        size = len(feature.get("pool_keys", []))
        count = min(self.negatives_per_query, size)
        if count == 0:
            return []
        rng = np.random.default_rng([self.seed, self.epoch, feature["query_key"], feature["product_key"]])
        return sorted(rng.choice(size, size=count, replace=False).tolist())

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        products, groups, targets, weights, keys, positives, teacher = [], [], [], [], [], [], []
        for row, feature in enumerate(features):
            drawn = self.draw(feature)
            positives.append(len(products))
            products += [feature["product_input_ids"]] + [feature["pool_input_ids"][i] for i in drawn]
            groups += [row] * (1 + len(drawn))
            targets += [1.0] + [0.0] * len(drawn)
            weights += [feature["weight"]] + [feature["pool_weights"][i] for i in drawn]
            keys += [feature["product_key"]] + [feature["pool_keys"][i] for i in drawn]
            scores = feature.get("teacher_scores")
            teacher += [math.nan] * (1 + len(drawn)) if scores is None else [scores[0]] + [scores[1 + i] for i in drawn]
        queries = self._pad([feature["query_input_ids"] for feature in features])
        padded_products = self._pad(products)
        longest_mask = max(1, max(len(f["mask_keys"]) for f in features))
        mask_keys = torch.full((len(features), longest_mask), -1, dtype=torch.long)
        for row, feature in enumerate(features):
            mask_keys[row, : len(feature["mask_keys"])] = torch.tensor(feature["mask_keys"], dtype=torch.long)
        batch = {
            "query_input_ids": queries["input_ids"],
            "query_attention_mask": queries["attention_mask"],
            "product_input_ids": padded_products["input_ids"],
            "product_attention_mask": padded_products["attention_mask"],
            "positive_index": torch.tensor(positives, dtype=torch.long),
            "product_group": torch.tensor(groups, dtype=torch.long),
            "targets": torch.tensor(targets, dtype=torch.float),
            "weights": torch.tensor(weights, dtype=torch.float),
            "product_keys": torch.tensor(keys, dtype=torch.long),
            "mask_keys": mask_keys,
        }
        if any(feature.get("teacher_scores") is not None for feature in features):
            batch["teacher_scores"] = torch.tensor(teacher, dtype=torch.float)
        return batch


class NegativeDrawCallback(TrainerCallback):
    """Tells the collator which epoch begins, so each epoch draws other negatives from every pool."""

    def __init__(self, collator: TwoTowerCollator, first_epoch: int = 0):
        self.collator, self.first_epoch = collator, first_epoch

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = self.first_epoch + int(state.epoch or 0)

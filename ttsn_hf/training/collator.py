"""Collate query groups: look their texts up and tokenise the batch (as sentence-transformers does), dealing each
group its negatives for the epoch. Nothing is tokenised ahead of the batch that needs it."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase, TrainerCallback

from ..data.groups import GroupSource
from ..labels import DEFAULT_LABEL_WEIGHTS

DEFAULT_NEGATIVES_PER_QUERY = 1

TeacherLookup = Callable[[str, list[str]], list[float]]


def product_key(product_id: str) -> int:
    """A stable non-negative 63-bit key for a product id (tensors cannot hold strings)."""
    return int.from_bytes(hashlib.blake2b(product_id.encode(), digest_size=8).digest(), "big") >> 1


@dataclass
class TwoTowerCollator:
    """Collates query groups (rows of :meth:`GroupSource.groups`): each query once, then its positive and the
    ``negatives_per_query`` negatives dealt to it this ``epoch`` from its query's pool (``ttsn_hf.data.groups``):
    other negatives each epoch, the same ones for the same epoch and seed. Texts come from the source's product
    table and are tokenised here, queries and products each padded to their own longest sequence.

    Product rows of the batch: group ``i``'s positive at ``positive_index[i]``, followed by its negatives;
    ``product_group[j]`` is the group (query row) of product row ``j``; ``mask_keys`` lists each query's known
    E/S/C products, which the in-batch loss never treats as negatives. With a ``teacher``, ``teacher_scores`` holds
    its cached score of every product row.
    """

    tokenizer: PreTrainedTokenizerBase
    source: GroupSource | None = None
    negatives_per_query: int = DEFAULT_NEGATIVES_PER_QUERY
    seed: int = 42
    epoch: int = 0
    query_max_length: int = 32
    product_max_length: int = 128
    label_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_LABEL_WEIGHTS))
    teacher: TeacherLookup | None = None

    def _tokenize(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        return self.tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        groups = self.source.resolve(features, self.epoch, self.negatives_per_query)
        rows, product_group, targets, weights, positives, teacher = [], [], [], [], [], []
        for number, group in enumerate(groups):
            positives.append(len(rows))
            rows += group.rows
            product_group += [number] * len(group.rows)
            targets += [1.0] + [0.0] * (len(group.rows) - 1)
            weights += [self.label_weights.get(label, 1.0) for label in group.labels]
        texts = self.source.products.texts_at(rows)
        ids = self.source.products.ids_at(rows)
        if self.teacher is not None:
            start = 0
            for group in groups:
                teacher += self.teacher(group.query, texts[start : start + len(group.rows)])
                start += len(group.rows)
        queries = self._tokenize([group.query for group in groups], self.query_max_length)
        products = self._tokenize(texts, self.product_max_length)
        known = [self.source.products.ids_at(group.known_positives) for group in groups]
        mask_keys = torch.full((len(groups), max(1, max(map(len, known)))), -1, dtype=torch.long)
        for number, product_ids in enumerate(known):
            mask_keys[number, : len(product_ids)] = torch.tensor([product_key(pid) for pid in product_ids])
        batch = {
            "query_input_ids": queries["input_ids"],
            "query_attention_mask": queries["attention_mask"],
            "product_input_ids": products["input_ids"],
            "product_attention_mask": products["attention_mask"],
            "positive_index": torch.tensor(positives, dtype=torch.long),
            "product_group": torch.tensor(product_group, dtype=torch.long),
            "targets": torch.tensor(targets, dtype=torch.float),
            "weights": torch.tensor(weights, dtype=torch.float),
            "product_keys": torch.tensor([product_key(pid) for pid in ids], dtype=torch.long),
            "mask_keys": mask_keys,
        }
        if self.teacher is not None:
            batch["teacher_scores"] = torch.tensor([math.nan if s is None else s for s in teacher], dtype=torch.float)
        return batch


class NegativeDrawCallback(TrainerCallback):
    """Tells the collator which epoch begins, so each epoch deals other negatives from every pool."""

    def __init__(self, collator: TwoTowerCollator, first_epoch: int = 0):
        self.collator, self.first_epoch = collator, first_epoch

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = self.first_epoch + int(state.epoch or 0)

"""In-batch InfoNCE over query groups: each query against its positive, its own negatives and every product of the
(global) batch."""

from __future__ import annotations

import torch
from torch import nn

from .distributed import gather_with_grad, global_mean


class InBatchInfoNCELoss(nn.Module):
    """Cross-entropy of each query's positive against all products of the batch, across processes.

    A batch holds query groups: query ``i`` has its positive at product row ``positive_index[i]`` (``-1``: no
    positive, not an anchor) and its negatives among the other rows. Every product of the global batch (the
    other groups' positives and negatives too) is a candidate for each query, except the products in that query's
    ``mask_keys`` (its known positives, and duplicates of its own positive): a false negative is masked out, never
    pushed away. ``mask_false_negatives=False`` keeps them as negatives (plain in-batch InfoNCE, for comparison).
    ``label_weighted=True`` weights each anchor's term by its positive's label weight (E > S > C), so a
    substitute pulls less than an exact match; the loss is then the weighted mean.
    """

    def __init__(self, temperature: float = 0.05, mask_false_negatives: bool = True, label_weighted: bool = False):
        super().__init__()
        self.temperature = temperature
        self.mask_false_negatives = mask_false_negatives
        self.label_weighted = label_weighted

    def forward(
        self,
        query_embeddings: torch.Tensor,
        product_embeddings: torch.Tensor,
        positive_index: torch.Tensor,
        product_keys: torch.Tensor,
        mask_keys: torch.Tensor,
        anchor_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        candidates, real, offset = gather_with_grad(product_embeddings)
        candidate_keys, _, _ = gather_with_grad(product_keys)
        anchors = torch.nonzero(positive_index >= 0).squeeze(-1)
        positives = positive_index[anchors]
        scores = query_embeddings[anchors] @ candidates.T / self.temperature
        labels = positives + offset
        blocked = (~real)[None, :].repeat(len(anchors), 1)
        if self.mask_false_negatives:
            blocked |= key_matches(candidate_keys, mask_keys[anchors])
            blocked |= candidate_keys[None, :] == product_keys[positives][:, None]
        blocked[torch.arange(len(anchors), device=scores.device), labels] = False
        scores = scores.masked_fill(blocked, torch.finfo(scores.dtype).min)
        per_anchor = nn.functional.cross_entropy(scores, labels, reduction="none")
        if self.label_weighted and anchor_weights is not None:
            weights = anchor_weights[anchors].to(per_anchor.dtype)
        else:
            weights = torch.ones_like(per_anchor)
        return global_mean((weights * per_anchor).sum(), weights.sum())

    def get_config_dict(self) -> dict[str, float | bool]:
        return {
            "temperature": self.temperature,
            "mask_false_negatives": self.mask_false_negatives,
            "label_weighted": self.label_weighted,
        }


def key_matches(candidate_keys: torch.Tensor, row_keys: torch.Tensor) -> torch.Tensor:
    """``[rows, candidates]``: whether candidate ``c``'s key is among row ``r``'s keys (``-1`` pads ``row_keys``).

    Found by binary search in the sorted candidate keys, in memory linear in the keys: the broadcast comparison
    ``[rows, candidates, keys per row]`` would take gigabytes for a batch of thousands of query groups."""
    order = torch.argsort(candidate_keys)
    ordered = candidate_keys[order]
    row, slot = torch.nonzero(row_keys >= 0, as_tuple=True)
    keys = row_keys[row, slot]
    first = torch.searchsorted(ordered, keys, side="left")
    counts = torch.searchsorted(ordered, keys, side="right") - first  # a product can stand twice in a batch
    starts = torch.repeat_interleave(first - (torch.cumsum(counts, 0) - counts), counts)
    columns = order[starts + torch.arange(int(counts.sum()), device=keys.device)]
    matches = torch.zeros(len(row_keys), len(candidate_keys), dtype=torch.bool, device=candidate_keys.device)
    matches[torch.repeat_interleave(row, counts), columns] = True
    return matches

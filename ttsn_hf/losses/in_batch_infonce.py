"""In-batch InfoNCE: each positive pair against every other product of the (global) batch."""

from __future__ import annotations

import torch
from torch import nn

from .distributed import gather_with_grad, global_mean


class InBatchInfoNCELoss(nn.Module):
    """Cross-entropy of each positive pair's score against all products in the batch, across processes.

    Every product of the batch (other pairs' positives and explicit negatives) is a negative for each query,
    except the products in that row's ``mask_keys`` (the query's known positives, duplicates of its own product):
    a false negative is masked out, never pushed away. ``mask_false_negatives=False`` keeps them as negatives
    (plain in-batch InfoNCE, for comparison).
    """

    def __init__(self, temperature: float = 0.05, mask_false_negatives: bool = True):
        super().__init__()
        self.temperature = temperature
        self.mask_false_negatives = mask_false_negatives

    def forward(
        self,
        query_embeddings: torch.Tensor,
        product_embeddings: torch.Tensor,
        targets: torch.Tensor,
        product_keys: torch.Tensor,
        mask_keys: torch.Tensor,
    ) -> torch.Tensor:
        candidates, real, offset = gather_with_grad(product_embeddings)
        candidate_keys, _, _ = gather_with_grad(product_keys)
        anchors = torch.nonzero(targets > 0).squeeze(-1)
        scores = query_embeddings[anchors] @ candidates.T / self.temperature
        labels = anchors + offset
        blocked = (~real)[None, :].repeat(len(anchors), 1)
        if self.mask_false_negatives:
            blocked |= (candidate_keys[None, :, None] == mask_keys[anchors][:, None, :]).any(dim=-1)
            blocked |= candidate_keys[None, :] == product_keys[anchors][:, None]
        blocked[torch.arange(len(anchors), device=scores.device), labels] = False
        scores = scores.masked_fill(blocked, torch.finfo(scores.dtype).min)
        loss_sum = nn.functional.cross_entropy(scores, labels, reduction="sum")
        return global_mean(loss_sum, torch.tensor(float(len(anchors)), device=scores.device))

    def get_config_dict(self) -> dict[str, float | bool]:
        return {"temperature": self.temperature, "mask_false_negatives": self.mask_false_negatives}

"""Weighted contrastive loss over the labelled (query, product) pairs of query groups."""

from __future__ import annotations

import torch
from torch import nn

from .distributed import global_mean


class WeightedContrastiveLoss(nn.Module):
    """Pulls positive pairs together and pushes negatives beyond a margin of cosine distance.

    Product row ``j`` pairs with query ``product_group[j]``: a group gives its (query, positive) and each
    (query, negative_i) pair. ``loss_j = weight_j * 0.5 * (t_j * d_j^2 + (1 - t_j) * relu(margin - d_j)^2)``,
    ``d = 1 - cos``, averaged with the weights (Hadsell et al. 2006, as sentence-transformers' ``ContrastiveLoss``).
    The weight (say by ESCI label, E > S > C) is independent of the target.
    """

    def __init__(self, margin: float = 0.5):
        super().__init__()
        self.margin = margin

    def forward(
        self,
        query_embeddings: torch.Tensor,
        product_embeddings: torch.Tensor,
        product_group: torch.Tensor,
        targets: torch.Tensor,
        weights: torch.Tensor,
    ) -> torch.Tensor:
        distance = 1 - (query_embeddings[product_group] * product_embeddings).sum(dim=-1)
        targets = targets.to(distance.dtype)
        per_pair = targets * distance.pow(2) + (1 - targets) * torch.relu(self.margin - distance).pow(2)
        weights = weights.to(distance.dtype)
        return global_mean((0.5 * weights * per_pair).sum(), weights.sum())

    def get_config_dict(self) -> dict[str, float]:
        return {"margin": self.margin}

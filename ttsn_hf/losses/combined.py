"""The training objective: a weighted sum of the contrastive and in-batch InfoNCE losses."""

from __future__ import annotations

import torch
from torch import nn

from .in_batch_infonce import InBatchInfoNCELoss
from .weighted_contrastive import WeightedContrastiveLoss


class CombinedLoss(nn.Module):
    """``contrastive_weight * contrastive + infonce_weight * infonce``; returns every component for logging."""

    def __init__(
        self,
        contrastive: WeightedContrastiveLoss | None = None,
        infonce: InBatchInfoNCELoss | None = None,
        contrastive_weight: float = 1.0,
        infonce_weight: float = 1.0,
    ):
        super().__init__()
        self.contrastive = contrastive or WeightedContrastiveLoss()
        self.infonce = infonce or InBatchInfoNCELoss()
        self.contrastive_weight = contrastive_weight
        self.infonce_weight = infonce_weight

    def forward(
        self,
        query_embeddings: torch.Tensor,
        product_embeddings: torch.Tensor,
        targets: torch.Tensor,
        weights: torch.Tensor,
        product_keys: torch.Tensor,
        mask_keys: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        contrastive = self.contrastive(query_embeddings, product_embeddings, targets, weights)
        infonce = self.infonce(query_embeddings, product_embeddings, targets, product_keys, mask_keys)
        loss = self.contrastive_weight * contrastive + self.infonce_weight * infonce
        return {"loss": loss, "contrastive_loss": contrastive.detach(), "infonce_loss": infonce.detach()}

    def get_config_dict(self) -> dict:
        return {
            "contrastive_weight": self.contrastive_weight,
            "infonce_weight": self.infonce_weight,
            "contrastive": self.contrastive.get_config_dict(),
            "infonce": self.infonce.get_config_dict(),
        }

"""The training objective: a weighted sum of the contrastive, in-batch InfoNCE and distillation losses."""

from __future__ import annotations

import torch
from torch import nn

from .distillation import MarginMSELoss
from .in_batch_infonce import InBatchInfoNCELoss
from .weighted_contrastive import WeightedContrastiveLoss

COMPONENTS = ("contrastive_loss", "infonce_loss", "distillation_loss")  # logged beside "loss", eval_ too


class CombinedLoss(nn.Module):
    """``contrastive_weight * contrastive + infonce_weight * infonce + distillation_weight * distillation``;
    returns every component for logging. The batch is a set of query groups (see :class:`InBatchInfoNCELoss`);
    the distillation term needs ``teacher_scores`` (one per product row, NaN where unscored)."""

    def __init__(
        self,
        contrastive: WeightedContrastiveLoss | None = None,
        infonce: InBatchInfoNCELoss | None = None,
        contrastive_weight: float = 1.0,
        infonce_weight: float = 1.0,
        distillation: nn.Module | None = None,
        distillation_weight: float = 0.0,
    ):
        super().__init__()
        self.contrastive = contrastive or WeightedContrastiveLoss()
        self.infonce = infonce or InBatchInfoNCELoss()
        self.distillation = distillation or MarginMSELoss()
        self.contrastive_weight = contrastive_weight
        self.infonce_weight = infonce_weight
        self.distillation_weight = distillation_weight

    def forward(
        self,
        query_embeddings: torch.Tensor,
        product_embeddings: torch.Tensor,
        positive_index: torch.Tensor,
        product_group: torch.Tensor,
        targets: torch.Tensor,
        weights: torch.Tensor,
        product_keys: torch.Tensor,
        mask_keys: torch.Tensor,
        teacher_scores: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        contrastive = self.contrastive(query_embeddings, product_embeddings, product_group, targets, weights)
        anchor_weights = weights[positive_index.clamp(min=0)]
        infonce = self.infonce(
            query_embeddings, product_embeddings, positive_index, product_keys, mask_keys, anchor_weights
        )
        loss = self.contrastive_weight * contrastive + self.infonce_weight * infonce
        parts = {COMPONENTS[0]: contrastive.detach(), COMPONENTS[1]: infonce.detach()}
        if self.distillation_weight:
            if teacher_scores is None:
                raise ValueError("distillation_weight > 0 needs teacher_scores (--teacher_model_name_or_path)")
            distillation = self.distillation(
                query_embeddings, product_embeddings, product_group, positive_index, teacher_scores
            )
            loss = loss + self.distillation_weight * distillation
            parts[COMPONENTS[2]] = distillation.detach()
        return {"loss": loss, **parts}

    def get_config_dict(self) -> dict:
        config = {
            "contrastive_weight": self.contrastive_weight,
            "infonce_weight": self.infonce_weight,
            "contrastive": self.contrastive.get_config_dict(),
            "infonce": self.infonce.get_config_dict(),
        }
        if self.distillation_weight:
            config["distillation_weight"] = self.distillation_weight
            config["distillation"] = self.distillation.get_config_dict()
        return config

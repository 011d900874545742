"""Distillation from a teacher's cached scores of each query group (query vs its positive and its negatives)."""

from __future__ import annotations

import torch
from torch import nn

from .distributed import global_mean


def _student_scores(query_embeddings: torch.Tensor, product_embeddings: torch.Tensor, product_group: torch.Tensor):
    return (query_embeddings[product_group] * product_embeddings).sum(dim=-1)


class MarginMSELoss(nn.Module):
    """``mean_j ((s(q, p+) - s(q, p_j)) - (t(q, p+) - t(q, p_j)))^2`` over each group's negatives ``p_j``.

    As sentence-transformers' ``MarginMSELoss`` (Hofstätter et al. 2020) with the student's cosine scores: the
    student learns the teacher's margins, not its scale. Rows whose teacher score is NaN (not scored) are skipped.
    """

    def forward(
        self,
        query_embeddings: torch.Tensor,
        product_embeddings: torch.Tensor,
        product_group: torch.Tensor,
        positive_index: torch.Tensor,
        teacher_scores: torch.Tensor,
    ) -> torch.Tensor:
        student = _student_scores(query_embeddings, product_embeddings, product_group)
        teacher = teacher_scores.to(student.dtype)
        positive = positive_index[product_group]
        usable = (positive >= 0) & (positive != torch.arange(len(student), device=student.device))
        positive = positive.clamp(min=0)
        usable &= torch.isfinite(teacher) & torch.isfinite(teacher[positive])
        student_margin = student[positive] - student
        teacher_margin = torch.nan_to_num(teacher[positive] - teacher)
        squared = (student_margin - teacher_margin).pow(2) * usable
        return global_mean(squared.sum(), usable.sum().float())

    def get_config_dict(self) -> dict[str, str]:
        return {"name": "margin_mse"}


class DistillKLDivLoss(nn.Module):
    """KL(teacher || student) over the softmax of each group's scores (its positive and negatives), as
    sentence-transformers' ``DistillKLDivLoss``: scores divided by ``temperature``, the KL's mean over groups scaled
    by ``temperature**2`` (Hinton et al.), so the gradient's size does not move with the temperature."""

    def __init__(self, temperature: float = 0.05):
        super().__init__()
        self.temperature = temperature

    def forward(
        self,
        query_embeddings: torch.Tensor,
        product_embeddings: torch.Tensor,
        product_group: torch.Tensor,
        positive_index: torch.Tensor,
        teacher_scores: torch.Tensor,
    ) -> torch.Tensor:
        student = query_embeddings @ product_embeddings.T / self.temperature
        teacher = teacher_scores.to(student.dtype)[None, :].expand_as(student) / self.temperature
        members = product_group[None, :] == torch.arange(len(query_embeddings), device=student.device)[:, None]
        members &= torch.isfinite(teacher)
        groups = members.sum(dim=1) >= 2
        low = torch.finfo(student.dtype).min
        log_student = torch.log_softmax(student.masked_fill(~members, low), dim=1)
        log_teacher = torch.log_softmax(torch.nan_to_num(teacher).masked_fill(~members, low), dim=1)
        per_entry = torch.exp(log_teacher) * (log_teacher - log_student)
        per_group = (per_entry * members).sum(dim=1) * groups
        return global_mean(per_group.sum(), groups.sum().float()) * self.temperature**2

    def get_config_dict(self) -> dict[str, str | float]:
        return {"name": "kl", "temperature": self.temperature}

from .combined import CombinedLoss
from .distillation import DistillKLDivLoss, MarginMSELoss
from .in_batch_infonce import InBatchInfoNCELoss
from .weighted_contrastive import WeightedContrastiveLoss

__all__ = ["CombinedLoss", "DistillKLDivLoss", "InBatchInfoNCELoss", "MarginMSELoss", "WeightedContrastiveLoss"]

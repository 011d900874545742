from .combined import CombinedLoss
from .in_batch_infonce import InBatchInfoNCELoss
from .weighted_contrastive import WeightedContrastiveLoss

__all__ = ["CombinedLoss", "InBatchInfoNCELoss", "WeightedContrastiveLoss"]

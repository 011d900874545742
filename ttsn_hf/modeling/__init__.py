"""The model: configuration, the two-tower encoder, its sentence-transformers folder, model card and Hub access."""

from .configuration import TwoTowerConfig
from .model import TwoTowerModel, default_base_model, load_model

__all__ = ["TwoTowerConfig", "TwoTowerModel", "default_base_model", "load_model"]

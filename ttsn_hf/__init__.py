"""ttsn-hf: a two-tower semantic network for product search, built on transformers, datasets and accelerate."""

from transformers import AutoConfig, AutoModel

from .modeling.configuration import TwoTowerConfig
from .modeling.model import TwoTowerModel, default_base_model, load_model

AutoConfig.register(TwoTowerConfig.model_type, TwoTowerConfig)
AutoModel.register(TwoTowerConfig, TwoTowerModel)

__all__ = ["TwoTowerConfig", "TwoTowerModel", "default_base_model", "load_model"]
__version__ = "0.1.0"

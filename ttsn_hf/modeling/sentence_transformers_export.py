"""The sentence-transformers side of a saved two-tower folder, written by sentence-transformers' own save.

The root's ``config.json`` is the two-tower model's; the encoder (weights, config, tokenizer) lives in
``0_Transformer/``, which ``modules.json`` names as the first module, so plain
``SentenceTransformer(folder)`` loads the same weights as ``TwoTowerModel.from_pretrained(folder)``.
"""

from __future__ import annotations

from pathlib import Path

from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

from .configuration import TwoTowerConfig

ENCODER_DIR = "0_Transformer"
PRODUCT_ENCODER_DIR = "product_encoder"


def write_sentence_transformers_files(folder: Path, config: TwoTowerConfig) -> None:
    """Write ``modules.json``, the pooling/normalize modules and the module configs around ``folder/0_Transformer``
    (already holding the encoder and its tokenizer); the encoder is re-saved in place, so its weights stay single.
    """
    transformer = Transformer(str(folder / ENCODER_DIR), max_seq_length=config.product_max_length)
    transformer.save_in_root = False  # the root belongs to the two-tower model: keep the module in 0_Transformer/
    model = SentenceTransformer(
        modules=[transformer, Pooling(config.embedding_dim, pooling_mode="mean"), Normalize()], device="cpu"
    )
    model.similarity_fn_name = "cosine"
    model.save(str(folder), create_model_card=False)

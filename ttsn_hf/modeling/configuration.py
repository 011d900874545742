"""Configuration of the two-tower model."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig


class TwoTowerConfig(PretrainedConfig):
    """A shared (or untied) transformer encoder for queries and products, mean-pooled and L2-normalised.

    Args:
        encoder_config: the base encoder's own config as a dict (``BertConfig.to_dict()`` and the like).
        tie_towers: one encoder for both towers (default); ``False`` trains a separate product encoder.
        query_max_length / product_max_length: token limits of each tower.
        base_model_name_or_path: where the encoder weights came from (for model cards).
        packed_sequences: run only real tokens through the encoder, attention per sequence (no pad tokens; BERT-family
            encoders, others run padded; default, measured faster in bench/bench_training.py and
            bench/bench_encoding.py); ``False``: padded batches.
    """

    model_type = "two_tower"

    def __init__(
        self,
        encoder_config: dict[str, Any] | None = None,
        tie_towers: bool = True,
        query_max_length: int = 32,
        product_max_length: int = 128,
        base_model_name_or_path: str | None = None,
        packed_sequences: bool = True,
        **kwargs,
    ):
        self.encoder_config = encoder_config or {}
        self.tie_towers = tie_towers
        self.query_max_length = query_max_length
        self.product_max_length = product_max_length
        self.base_model_name_or_path = base_model_name_or_path
        self.packed_sequences = packed_sequences
        super().__init__(**kwargs)

    @property
    def embedding_dim(self) -> int:
        return int(self.encoder_config.get("hidden_size", 0))

